"""End to end on process nodes: TrainingJobs whose pods are real processes on simulated GPU
servers, each its own network host. Training across nodes succeeds; a worker killed with
SIGKILL restarts the group, which resumes from its checkpoint; a node cut off mid-training is
noticed and the job recovers on the remaining nodes (the time to recovery is printed), and so
does one whose node is removed (machine and Node object gone), with no pod duplicated; a slow
link fails the preflight at once, named."""

from __future__ import annotations

import os
import signal
import time

from kubernetes import client

from distml.localcluster import faults

from . import jobs
from .conftest import OperatorProcess
from .helpers import wait_for
from .procnodes import (
    GPUS_PER_NODE,
    PROCESS,
    Census,
    ddp_job,
    events_of,
    training_pid,
    training_pids,
)


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
    with Census(core, namespace, "ddp") as census:
        os.kill(training_pid(folder), signal.SIGKILL)
        st = jobs.wait_phase(custom, namespace, "ddp", "Succeeded", timeout=240)
    assert st["restarts"] == 1 and st["restartGeneration"] == 1
    assert census.reads > 20 and census.most == 2 and census.most_in_a_slot == 1
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


def _rank1_after_a_checkpoint(core, custom, namespace: str, path: str, folder) -> client.V1Pod:
    """A 2-pod job `ddp` (peer timeout 5 s) once it has written a checkpoint: its rank 1 pod."""
    jobs.create(custom, namespace, ddp_job("ddp", path, steps=150, delay=0.1, peerTimeoutSeconds=5))
    wait_for("a checkpoint", lambda: list(folder.glob("step-*.pt")), timeout=180)
    return next(p for p in jobs.pods(core, namespace, "ddp") if p.metadata.name.endswith("-1-0"))


def test_node_cut_off_mid_training_recovers_on_the_remaining_nodes(
    cluster, process_nodes, operator, core, custom, namespace, checkpoints, capsys
):
    path, folder = checkpoints
    victim = _rank1_after_a_checkpoint(core, custom, namespace, path, folder)
    node = victim.spec.node_name
    with Census(core, namespace, "ddp") as census:
        t0 = time.monotonic()
        faults.node_cut(cluster, node)
        try:
            st = jobs.wait_phase(custom, namespace, "ddp", "Restarting", timeout=90)
            noticed = time.monotonic() - t0
            # Rank 0 lost its silent peer (peerTimeoutSeconds 5) and said so: the operator restarts
            # the group at once, while the node controller still calls the cut-off node Ready.
            ready = {c.type: c.status for c in core.read_node(node).status.conditions}["Ready"]
            assert ready == "True", f"the operator waited for the node to go NotReady: {st}"
            assert f"went silent on node {node}" in st["message"]
            assert [s["node"] for s in st["suspectNodes"]] == [node]
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
            with capsys.disabled():
                print(
                    f"\n[recovery] node {node} cut off: noticed (job Restarting) after "
                    f"{noticed:.1f}s, training again after {recovered:.1f}s"
                )
            jobs.wait_phase(custom, namespace, "ddp", "Succeeded", timeout=240)
        finally:
            faults.node_cut(cluster, node, off=False)
    assert census.reads > 50 and census.most == 2 and census.most_in_a_slot == 1
    # Back on the network, the node stops the processes of the pod deleted while it was away.
    wait_for("the orphaned worker to stop", lambda: not training_pids(folder), timeout=60)


def test_node_removed_mid_training_moves_the_job_to_the_spare_node(
    cluster, process_nodes, operator, core, custom, namespace, checkpoints, capsys
):
    path, folder = checkpoints
    victim = _rank1_after_a_checkpoint(core, custom, namespace, path, folder)
    node = victim.spec.node_name
    try:
        with Census(core, namespace, "ddp") as census:
            t0 = time.monotonic()
            faults.process_node_gone(cluster, node)
            assert not faults.kube_proxies(cluster, node)  # gone with its machine
            st = jobs.wait_phase(custom, namespace, "ddp", "Restarting", timeout=90)
            noticed = time.monotonic() - t0
            resumed = wait_for(
                "training again",
                lambda: [e for e in events_of(core, namespace, "ddp-worker-0-1")
                         if e["event"] == "resume"],
                timeout=120,
                every=0.5,
            )  # fmt: skip
            recovered = time.monotonic() - t0
            assert resumed[0]["step"] >= 10  # from its checkpoint, not from scratch
            new = jobs.live_pods(core, namespace, "ddp")
            assert {p.spec.node_name for p in new} == set(process_nodes) - {node}
            st = jobs.wait_phase(custom, namespace, "ddp", "Succeeded", timeout=240)
        assert st["restarts"] == 1 and st["restartGeneration"] == 1
        assert census.reads > 50 and census.most == 2 and census.most_in_a_slot == 1
        # The node's pod did not wait for the pod garbage collector: it went with the node.
        assert victim.metadata.name not in {p.metadata.name for p in jobs.pods(core, namespace,
                                                                             "ddp")}  # fmt: skip
        with capsys.disabled():
            print(
                f"\n[recovery] node {node} removed: noticed (job Restarting) after "
                f"{noticed:.1f}s, training again after {recovered:.1f}s"
            )
    finally:
        cluster.sync_process_nodes(len(process_nodes), gpus=GPUS_PER_NODE)


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


_SINK = """
import socket, sys
s = socket.socket(); s.bind((sys.argv[1], 0)); s.listen(1)
print(s.getsockname()[1], flush=True)
c, _ = s.accept()
while c.recv(1 << 16):
    pass
"""
_SEND = """
import socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])))
data = b"x" * (4 << 20)
t0 = time.monotonic(); c.sendall(data); c.shutdown(socket.SHUT_WR); c.recv(1)
print(len(data) * 8 / (time.monotonic() - t0) / 1e6)
"""


def _mbit_per_s(cluster, src: int, dst: int) -> float:
    """What node `src` sends to node `dst` per second over their network, in Mbit/s."""
    import subprocess
    import sys

    net = cluster.node_network()
    a, b = net.node(src), net.node(dst)
    sink = subprocess.Popen([*b.exec_prefix(), sys.executable, "-c", _SINK, b.address],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        port = sink.stdout.readline().strip()
        out = subprocess.run([*a.exec_prefix(), sys.executable, "-c", _SEND, b.address, port],
                             capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
        return float(out.stdout)
    finally:
        sink.kill()


def test_block_rate_slows_the_links_between_blocks_and_not_inside_them(cluster, process_nodes):
    # Process nodes pair up in blocks as KWOK nodes do: 000 and 001 share one, 002 is another.
    blocks = faults.block_rate(cluster, "50mbit")
    try:
        assert blocks[process_nodes[0]] == blocks[process_nodes[1]] != blocks[process_nodes[2]]
        inside, between = _mbit_per_s(cluster, 0, 1), _mbit_per_s(cluster, 0, 2)
        back = _mbit_per_s(cluster, 2, 0)
    finally:
        faults.block_rate(cluster, None)
    print(f"inside a block {inside:.0f} Mbit/s, between blocks {between:.0f} and {back:.0f}")
    assert between < 60 and back < 60  # the 50 Mbit/s bucket, both ways
    assert inside > 4 * between
    assert _mbit_per_s(cluster, 0, 2) > 4 * between  # undone
