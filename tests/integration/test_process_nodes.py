"""End to end on process nodes: TrainingJobs whose pods are real processes on simulated GPU
servers, each its own network host. Training across nodes succeeds; a worker killed with
SIGKILL restarts the group, which resumes from its checkpoint; a node cut off mid-training is
noticed and the job recovers on the remaining nodes (the time to recovery is printed); a slow
link fails the preflight at once, named."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from distml.localcluster import faults
from distml.localcluster.cluster import LocalCluster
from distml.localnode import network

from . import jobs
from .conftest import OperatorProcess
from .helpers import wait_for

PROCESS = {"distml.io/simulated-node": "process"}
GPUS_PER_NODE = 2


@pytest.fixture(scope="module")
def process_nodes(cluster: LocalCluster) -> Iterator[list[str]]:
    why = network.available()
    if why:
        pytest.skip(why)
    cluster.sync_process_nodes(3, gpus=GPUS_PER_NODE)
    names = [f"proc-node-{i:03d}" for i in range(3)]
    yield names
    cluster.sync_process_nodes(0)


@pytest.fixture
def checkpoints(cluster: LocalCluster, namespace: str) -> Iterator[tuple[str, Path]]:
    """A hostPath every process node shares: (path in the pod spec, folder on this machine)."""
    path = f"/mnt/distml-e2e/{namespace}"
    folder = cluster.root / "shared" / "hostpath" / path.lstrip("/")
    yield path, folder
    shutil.rmtree(folder, ignore_errors=True)


def ddp_job(name: str, ckpt: str, steps: int, delay: float, **spec) -> dict:
    """2 pods x 2 GPUs: one pod per process node, one training process per pod."""
    pod_spec = {
        "nodeSelector": PROCESS,
        "terminationGracePeriodSeconds": 5,
        "containers": [
            {
                "name": "trainer",
                "image": "distml-runtime:0.1.0",
                "args": ["python", "-m", "distml_runtime.train.ddp", "--steps", str(steps),
                         "--step-delay", str(delay), "--log-every", "5",
                         "--checkpoint-dir", "/ckpt", "--checkpoint-every", "10"],
                "volumeMounts": [{"name": "ckpt", "mountPath": "/ckpt"}],
            }
        ],
        "volumes": [{"name": "ckpt", "hostPath": {"path": ckpt, "type": "DirectoryOrCreate"}}],
    }  # fmt: skip
    body = jobs.training_job(name, 2, GPUS_PER_NODE, nprocPerReplica=1, **spec)
    body["spec"]["template"] = {"spec": pod_spec}
    return body


def events_of(core: client.CoreV1Api, ns: str, pod: str) -> list[dict]:
    """The JSON events rank 0 printed, read through `kubectl logs`' path (API server -> node)."""
    try:
        text = core.read_namespaced_pod_log(pod, ns, container="trainer")
    except client.ApiException:
        return []
    return [json.loads(li) for li in text.splitlines() if li.startswith("{")]


def test_job_trains_across_process_nodes_and_succeeds(
    process_nodes, operator, core, custom, namespace, checkpoints
):
    body = ddp_job("ddp", checkpoints[0], steps=40, delay=0.0, preflight={"minBusBwGbps": 0.01})
    jobs.create(custom, namespace, body)
    st = jobs.wait_phase(custom, namespace, "ddp", "Succeeded", timeout=240)
    pods = jobs.pods(core, namespace, "ddp")
    assert len({p.spec.node_name for p in pods}) == 2  # across two servers
    assert all(p.spec.node_name in process_nodes for p in pods)
    for p in pods:
        (cs,) = p.status.container_statuses
        assert cs.state.terminated.exit_code == 0, p.metadata.name
    steps = [e for e in events_of(core, namespace, "ddp-worker-0-0") if e["event"] == "step"]
    assert steps[-1]["step"] == 40 and steps[-1]["loss"] < steps[0]["loss"]
    # The preflight measured the real path between the two namespaces.
    pf = st["preflight"]
    assert pf["passed"] and pf["busBwGbps"] > 0.01 and pf["worldSize"] == 2
    assert set(pf["slowestLink"].split(" <-> ")) == {p.spec.node_name for p in pods}
    jobs.reasons_once(core, namespace, "ddp", "PreflightPassed")
    assert f'distml_job_preflight_busbw_gbps{{namespace="{namespace}",trainingjob="ddp"}}' in (
        operator.metrics()
    )


def _training_pid(folder: Path) -> int:
    """The pid of the training process (not its launcher) that writes to `folder`."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if "distml_runtime.train.ddp" in argv[:3] and str(folder) in argv:
            return int(proc.name)
    raise LookupError(f"no training process writes to {folder}")


def _restarts_metric(op: OperatorProcess) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in op.metrics().splitlines()
        if line.startswith("distml_job_restarts_total")
    )


def test_worker_killed_mid_training_restarts_and_resumes_from_its_checkpoint(
    process_nodes, operator, core, custom, namespace, checkpoints
):
    path, folder = checkpoints
    before = _restarts_metric(operator)
    jobs.create(custom, namespace, ddp_job("ddp", path, steps=80, delay=0.1))
    wait_for("a checkpoint", lambda: list(folder.glob("step-*.pt")), timeout=180)
    os.kill(_training_pid(folder), signal.SIGKILL)

    st = jobs.wait_phase(custom, namespace, "ddp", "Succeeded", timeout=240)
    assert st["restarts"] == 1 and st["restartGeneration"] == 1
    reasons = jobs.reasons_once(core, namespace, "ddp", "Succeeded")
    assert "WorkerFailed" in reasons and reasons[-1] == "Succeeded"
    failed = core.list_namespaced_event(namespace, field_selector="reason=WorkerFailed").items
    assert "137" in failed[0].message  # SIGKILL, as the launcher reported it
    assert _restarts_metric(operator) == before + 1
    events = events_of(core, namespace, "ddp-worker-0-1")
    resumed = next(e for e in events if e["event"] == "resume")
    assert resumed["step"] >= 10  # not from scratch
    assert {k: v for k, v in events[-1].items() if k != "time"} == {
        "event": "done",
        "step": 80,
        "world_size": 2,
    }


def test_node_cut_off_mid_training_recovers_on_the_remaining_nodes(
    cluster, process_nodes, operator, core, custom, namespace, checkpoints, capsys
):
    path, folder = checkpoints
    jobs.create(custom, namespace, ddp_job("ddp", path, steps=150, delay=0.1))
    wait_for("a checkpoint", lambda: list(folder.glob("step-*.pt")), timeout=180)
    victim = next(p for p in jobs.pods(core, namespace, "ddp") if p.metadata.name.endswith("-1-0"))
    node = victim.spec.node_name
    t0 = time.monotonic()
    faults.node_cut(cluster, node)
    try:
        jobs.wait_phase(custom, namespace, "ddp", "Restarting", timeout=90)
        noticed = time.monotonic() - t0
        first_step = wait_for(
            "training again",
            lambda: any(e["event"] == "step" for e in events_of(core, namespace,
                                                                 "ddp-worker-0-1")),
            timeout=120,
            every=0.5,
        )  # fmt: skip
        recovered = time.monotonic() - t0
        assert first_step
        new = jobs.live_pods(core, namespace, "ddp")
        assert node not in {p.spec.node_name for p in new}
        st = jobs.status(custom, namespace, "ddp")
        assert f"its node {node} is NotReady" in st["message"] or st["phase"] == "Running"
        with capsys.disabled():
            print(
                f"\n[recovery] node {node} cut off: noticed (job Restarting) after "
                f"{noticed:.1f}s, training again after {recovered:.1f}s"
            )
        jobs.wait_phase(custom, namespace, "ddp", "Succeeded", timeout=240)
    finally:
        faults.node_cut(cluster, node, off=False)
    # Back on the network, the node stops the processes of the pod deleted while it was away.
    wait_for("the orphaned worker to stop", lambda: not _pids_in(folder), timeout=60)


def _pids_in(folder: Path) -> list[int]:
    try:
        return [_training_pid(folder)]
    except LookupError:
        return []


def test_slow_link_fails_the_preflight_at_once_and_names_it(
    cluster, process_nodes, operator, core, custom, namespace, checkpoints
):
    slow = process_nodes[2]
    faults.link_rate(cluster, slow, "100mbit")
    try:
        body = ddp_job("slow", checkpoints[0], steps=1000, delay=0.1,
                       preflight={"allReduceBytes": 2 << 20, "minBusBwGbps": 1})  # fmt: skip
        # Two pods on two nodes, one of them the slow one.
        body["spec"]["template"]["spec"]["nodeSelector"] = PROCESS
        body["spec"]["template"]["spec"]["affinity"] = {
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{
                    "key": "kubernetes.io/hostname", "operator": "In",
                    "values": [process_nodes[0], slow]}]}]}}
        }  # fmt: skip
        t0 = time.monotonic()
        jobs.create(custom, namespace, body)
        st = jobs.wait_phase(custom, namespace, "slow", "Failed", timeout=180)
        took = time.monotonic() - t0
    finally:
        faults.link_rate(cluster, slow, None)
    cond = next(c for c in st["conditions"] if c["type"] == "Failed")
    assert cond["reason"] == "PreflightFailed"
    assert slow in cond["message"] and "below minBusBwGbps 1" in cond["message"]
    assert st["preflight"]["busBwGbps"] < 0.2  # 100 Mbit/s, measured
    assert st.get("restarts", 0) == 0
    assert not list(checkpoints[1].glob("step-*.pt"))  # it never trained
    assert took < 120


def _pod(name: str, node: str, command: str, **spec) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
            "containers": [
                {"name": "c", "image": "distml-runtime:0.1.0",
                 "command": ["python", "-c", command],
                 "resources": {"limits": {"nvidia.com/gpu": "1"}},
                 "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}
            ],
            "volumes": [{"name": "scratch", "emptyDir": {}}],
            **spec,
        },
    }  # fmt: skip


def test_process_node_runs_pods_as_kubelet_would(process_nodes, core, namespace):
    """Restarts with restartCount, GPUs and hostnames, DNS of another node's pod, and a pod that
    ignores SIGTERM killed after its grace period."""
    a, b = process_nodes[0], process_nodes[1]
    server = _pod(
        "server", b,
        "import socket, time\ns = socket.create_server(('0.0.0.0', 7070))\ntime.sleep(600)",
        hostname="srv", subdomain="grp",
    )  # fmt: skip
    core.create_namespaced_pod(namespace, server)
    # Its name resolves on other nodes through a headless Service, as cluster DNS would have it.
    core.create_namespaced_service(
        namespace,
        {"metadata": {"name": "grp"},
         "spec": {"clusterIP": "None", "selector": {"app": "server"},
                  "ports": [{"port": 7070}]}},
    )  # fmt: skip
    flaky = _pod(
        "flaky", a,
        "import os, socket, sys\n"
        "marker = sys.argv[1] + '/tried'\n"
        "if not os.path.exists(marker):\n"
        "    open(marker, 'w').close(); sys.exit(7)\n"
        "print(socket.gethostname(), os.environ['CUDA_VISIBLE_DEVICES'], flush=True)\n"
        f"socket.create_connection(('srv.grp.{namespace}.svc.cluster.local', 7070), 30)\n"
        "print('reached the server on another node', flush=True)\n",
        restartPolicy="OnFailure", hostname="flk",
    )  # fmt: skip
    flaky["spec"]["containers"][0]["args"] = ["/scratch"]
    wait_for(
        "server running",
        lambda: core.read_namespaced_pod("server", namespace).status.phase == "Running",
    )
    core.create_namespaced_pod(namespace, flaky)
    pod = wait_for(
        "flaky Succeeded",
        lambda: (
            (p := core.read_namespaced_pod("flaky", namespace)).status.phase == "Succeeded" and p
        ),
        timeout=60,
    )
    (cs,) = pod.status.container_statuses
    assert cs.restart_count == 1 and cs.last_state.terminated.exit_code == 7
    node_ip = next(
        addr.address for addr in core.read_node(a).status.addresses if addr.type == "InternalIP"
    )
    assert pod.spec.node_name == a and pod.status.pod_ip == node_ip  # the node's own network
    log = core.read_namespaced_pod_log("flaky", namespace, container="c")
    assert "flk 0\n" in log or "flk 1\n" in log  # its own hostname, one GPU of the node
    assert "reached the server on another node" in log

    stubborn = _pod(
        "stubborn", a,
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\ntime.sleep(600)",
        terminationGracePeriodSeconds=2,
    )  # fmt: skip
    core.create_namespaced_pod(namespace, stubborn)
    try:
        core.read_namespaced_pod_log("stubborn", namespace, container="c")
    except client.ApiException as err:  # asked before it started: kubelet's own answer
        assert err.status == 400 and "is waiting to start" in err.body
    wait_for(
        "stubborn running",
        lambda: core.read_namespaced_pod("stubborn", namespace).status.phase == "Running",
    )
    wait_for(
        "stubborn ready",
        lambda: (
            "ready" in (core.read_namespaced_pod_log("stubborn", namespace, container="c") or "")
        ),
        timeout=60,
    )
    t0 = time.monotonic()
    core.delete_namespaced_pod("stubborn", namespace)

    def gone() -> bool:
        try:
            core.read_namespaced_pod("stubborn", namespace)
        except client.ApiException as err:
            return err.status == 404
        return False

    wait_for("stubborn deleted", gone, timeout=30)
    assert 2 <= time.monotonic() - t0 < 10  # SIGTERM ignored: SIGKILL after the grace period
