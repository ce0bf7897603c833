"""ServingJob end to end on process nodes: replicas are real Open Inference Protocol servers,
its Service is programmed by the real kube-proxy, and a standard client (tritonclient) drives it
from this machine, through the ClusterIP: the model's own predictions come back, a rolling
update under load fails no request, and a replica killed mid-load is replaced."""

from __future__ import annotations

import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from distml.api.serving import serving_job_manifest
from distml.localcluster.cluster import LocalCluster

from . import jobs
from .helpers import wait_for
from .procnodes import GPUS_PER_NODE, PROCESS  # a replica takes a whole node: one server

triton = pytest.importorskip("tritonclient.http")

pytestmark = pytest.mark.usefixtures("operator")
GROUP, VERSION, PLURAL, KIND = jobs.GROUP, jobs.VERSION, jobs.SERVING, "ServingJob"
status = jobs.serving_status
CLIENTS = 4


def serving_job(name: str, mark: str = "1", **spec) -> dict:
    template = {
        "spec": {
            "nodeSelector": PROCESS,
            "terminationGracePeriodSeconds": 15,
            "containers": [
                {
                    "name": "server",
                    "image": "distml-runtime:0.1.0",
                    "command": ["python", "-m", "distml_runtime.serve"],
                    "env": [{"name": "DEPLOYED", "value": mark}],
                }
            ],
        }
    }
    rollout = {"maxSurge": 1, "maxUnavailable": 0, "drainSeconds": 2}
    return serving_job_manifest(name, 2, gpusPerReplica=GPUS_PER_NODE, template=template,
                                rollout=rollout, **spec)  # fmt: skip


def settled(st: dict) -> bool:
    """Available, every replica Ready and of the update revision."""
    return (
        st.get("phase") == "Available"
        and st.get("readyReplicas") == 2
        and st.get("currentRevision") == st.get("updateRevision")
        and all(r["revision"] == st["updateRevision"] and r["state"] == "Ready"
                for r in st.get("replicaStatus", []))
    )  # fmt: skip


def wait_settled(custom, ns: str, name: str, timeout: float = 240) -> dict:
    try:
        return wait_for(f"{name} settled", lambda: settled(s := status(custom, ns, name)) and s,
                        timeout)  # fmt: skip
    except AssertionError as err:
        raise AssertionError(f"{err}; its status: {status(custom, ns, name)}") from None


def digits(n: int) -> np.ndarray:
    from distml_runtime.train.data import load_digits_tensors

    x, _ = load_digits_tensors()
    return x[:n].numpy().astype(np.float32)


class Load:
    """CLIENTS (or `clients`) threads, each with its own tritonclient, sending inferences back
    to back for as long as it runs; every result is kept as (time, seconds, error or "")."""

    def __init__(self, url: str, rows: np.ndarray, clients: int = CLIENTS) -> None:
        self.url, self.rows = url, rows
        self.results: list[tuple[float, float, str]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def _client(self) -> None:
        client = triton.InferenceServerClient(self.url, connection_timeout=10, network_timeout=10)
        inp = triton.InferInput("input", list(self.rows.shape), "FP32")
        inp.set_data_from_numpy(self.rows)
        while not self._stop.is_set():
            t0 = time.monotonic()
            err = ""
            try:
                client.infer("digits", [inp])
            except Exception as e:  # every failure counts, whatever its kind
                err = f"{type(e).__name__}: {e}"
            with self._lock:
                self.results.append((t0, time.monotonic() - t0, err))
        client.close()

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def window(self, start: float, end: float) -> list[tuple[float, float, str]]:
        with self._lock:
            return [r for r in self.results if start <= r[0] < end]


def latency(results: list[tuple[float, float, str]]) -> str:
    ok = sorted(r[1] for r in results if not r[2])
    if not ok:
        return "no successful request"
    p99 = ok[min(len(ok) - 1, int(len(ok) * 0.99))]
    return (
        f"{len(results)} requests, p50 {statistics.median(ok) * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms"
    )


def cluster_url(core, ns: str, name: str) -> str:
    return f"{core.read_namespaced_service(name, ns).spec.cluster_ip}:8000"


def test_a_real_client_gets_the_models_predictions_through_the_service(
    process_nodes, cluster, core, custom, namespace
):
    jobs.create_serving(custom, namespace, serving_job("digits"))
    st = wait_settled(custom, namespace, "digits")
    assert st["url"] == f"http://digits.{namespace}.svc:8000"
    client = triton.InferenceServerClient(cluster_url(core, namespace, "digits"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits")
    meta = client.get_model_metadata("digits")
    assert meta["inputs"][0]["name"] == "input" and meta["inputs"][0]["datatype"] == "FP32"
    rows = digits(16)
    inp = triton.InferInput("input", list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows)
    got = client.infer("digits", [inp]).as_numpy("logits")
    # The built-in model, as the server builds it (seeded), run here on the same rows.
    from distml_runtime.train.ddp import build_model

    torch.manual_seed(0)
    model = build_model().eval()
    with torch.inference_mode():
        expected = model(torch.from_numpy(rows)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    # A pod reaches it by name, as from any pod of a cluster: from a process node's namespace.
    node_ns = cluster.node_network().node(0).netns
    code = subprocess.run(
        ["ip", "netns", "exec", node_ns, sys.executable, "-c",
         "import urllib.request,sys;"
         f"print(urllib.request.urlopen('http://digits.{namespace}.svc:8000/v2/health/ready',"
         "timeout=5).status)"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert code.stdout.strip() == "200", code.stderr[-2000:]


def test_a_rolling_update_under_load_fails_no_request(process_nodes, core, custom, namespace):
    jobs.create_serving(custom, namespace, serving_job("digits"))
    first = wait_settled(custom, namespace, "digits")
    with Load(cluster_url(core, namespace, "digits"), digits(8)) as load:
        time.sleep(5)
        t_change = time.monotonic()
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, "digits",
            {"spec": serving_job("digits", mark="2")["spec"]},
        )  # fmt: skip
        st = wait_for(
            "the rollout complete",
            lambda: settled(s := status(custom, namespace, "digits"))
            and s["currentRevision"] != first["currentRevision"] and s,
            timeout=240,
        )  # fmt: skip
        t_done = time.monotonic()
        time.sleep(5)
        t_end = time.monotonic()
    before = load.window(0, t_change)
    during = load.window(t_change, t_done)
    after = load.window(t_done, t_end)
    print(f"\nbefore the rollout: {latency(before)}\nduring ({t_done - t_change:.0f}s): "
          f"{latency(during)}\nafter: {latency(after)}")  # fmt: skip
    failed = [r[2] for r in load.results if r[2]]
    assert not failed, f"{len(failed)} of {len(load.results)} requests failed: {failed[:5]}"
    assert len(during) > 50 and len(after) > 10
    assert st["replicaStatus"] and {r["revision"] for r in st["replicaStatus"]} == {
        st["updateRevision"]
    }
    got = jobs.reasons_once(core, namespace, "digits", "RolloutComplete", kind=KIND)
    assert got.count("Draining") == 2


def _server_pid(cluster: LocalCluster, namespace: str, pod: str) -> int:
    """The process group of the pod's server, as its node agent logged it."""
    pattern = re.compile(rf"pod {namespace}/{pod} container server started \(pid (\d+)\)")
    for log in sorted(Path(cluster.logs).glob("node-agent-*.log")):
        found = pattern.findall(log.read_text(errors="replace"))
        if found:
            return int(found[-1])
    raise AssertionError(f"no agent started {namespace}/{pod}")


def test_a_killed_replica_is_replaced_while_the_other_serves(
    process_nodes, cluster, core, custom, namespace
):
    jobs.create_serving(custom, namespace, serving_job("digits"))
    st = wait_settled(custom, namespace, "digits")
    victim = st["replicaStatus"][0]["pod"]
    # What was on its way to the killed server fails: requests in flight, and new connections
    # until its endpoint is gone from every kube-proxy (its pod is Failed at once; the
    # EndpointSlice and kube-proxy follow within a second or two). Then the other replica
    # takes everything, and the replacement joins it.
    back = kill_mid_load(cluster, core, custom, namespace, "digits", victim, settled)
    assert victim not in {r["pod"] for r in back["replicaStatus"]}
    events = jobs.reasons_once(core, namespace, "digits", "ReplicaFailed", kind=KIND)
    assert "ReplicaFailed" in events


def kill_mid_load(
    cluster, core, custom, ns: str, job: str, pod: str, whole: Callable[[dict], bool]
) -> dict:
    """SIGKILLs `pod`'s server under load until the job is `whole` again with one replica
    replaced; prints what failed and when it was back, asserts that failures came only around
    the kill, were a small part, and none once it was back; returns the status then."""
    with Load(cluster_url(core, ns, job), digits(8)) as load:
        time.sleep(3)
        t_kill = time.monotonic()
        os.killpg(_server_pid(cluster, ns, pod), signal.SIGKILL)
        back = wait_for(
            "a replacement Ready",
            lambda: (s := status(custom, ns, job)).get("replaced") == 1 and whole(s) and s,
            timeout=240,
        )  # fmt: skip
        t_back = time.monotonic()
        time.sleep(3)
    failed = [r for r in load.results if r[2]]
    after = load.window(t_back, float("inf"))
    span = (max(r[0] for r in failed) - t_kill) if failed else 0.0
    print(f"\nkilled {pod}: {len(failed)} of {len(load.results)} requests failed, the last "
          f"{span:.2f}s after the kill ({sorted({f[2][:80] for f in failed})}); replaced and "
          f"Ready after {t_back - t_kill:.0f}s; after: {latency(after)}")  # fmt: skip
    late = [(round(r[0] - t_kill, 2), r[2][:60]) for r in failed
            if not t_kill - 1 <= r[0] < t_kill + 10]  # fmt: skip
    assert not late, late[:5]
    assert len(failed) < len(load.results) / 4
    assert after and not any(r[2] for r in after)
    return back


def test_a_load_step_scales_it_up_and_the_end_of_it_down_failing_no_request(
    process_nodes, core, custom, namespace
):
    auto = {"minReplicas": 1, "maxReplicas": 2, "target": 1.5, "downscaleDelaySeconds": 8}
    body = serving_job("auto", autoscaling=auto)
    body["spec"]["replicas"] = 1
    jobs.create_serving(custom, namespace, body)

    def serving(n: int):  # type: ignore[no-untyped-def]
        def probe() -> dict:
            st = status(custom, namespace, "auto")
            states = [r["state"] for r in st.get("replicaStatus", [])]
            ok = (st.get("autoscaling") or {}).get("desiredReplicas") == n and states == [
                "Ready"
            ] * n
            return st if ok else {}

        return probe

    wait_for("one replica serving", serving(1), timeout=240)
    url = cluster_url(core, namespace, "auto")
    # A trickle throughout (one client: about 1 in flight, under the 1.5 target), and a step of
    # four more clients: about 5 in flight on one replica asks for ceil(5 / 1.5) -> 2 (max).
    with Load(url, digits(8), clients=1) as trickle:
        time.sleep(4)
        t_step = time.monotonic()
        with Load(url, digits(8), clients=4) as step:
            wait_for("the step scaled up", serving(2), timeout=120)
            t_up = time.monotonic()
            time.sleep(4)
        t_end = time.monotonic()
        st = wait_for("the step's end scaled down", serving(1), timeout=120)
        t_down = time.monotonic()
        time.sleep(2)
    results = trickle.results + step.results
    failed = [r[2] for r in results if r[2]]
    print(
        f"\nload step -> 2 replicas serving: {t_up - t_step:.1f}s; end of step -> 1 replica "
        f"(8 s delay, 2 s drain): {t_down - t_end:.1f}s\n"
        f"during the step: {latency(trickle.window(t_step, t_end) + step.results)}"
    )
    assert not failed, f"{len(failed)} of {len(results)} requests failed: {failed[:5]}"
    assert len(trickle.window(t_end, t_down)) > 20  # it served through the scale-down
    said = jobs.events(core, namespace, "auto", KIND)
    up = [e.message for e in said if e.reason == "ScaledUp"]
    down = [e.message for e in said if e.reason == "ScaledDown"]
    assert len(up) == 1 and "InFlightRequests" in up[0] and "1 -> 2 replicas" in up[0], up
    assert len(down) == 1 and "2 -> 1 replicas" in down[0], down
    assert st["autoscaling"]["metric"] == "InFlightRequests" and st["autoscaling"]["target"] == 1.5


WIDTHS = [96, 160, 48]  # 4 layers


def pipeline_job(name: str, replicas: int, gpus: int) -> dict:
    """`replicas` replicas of 2 stage pods of gpus / 2 GPUs each."""
    pipeline = {"stages": 2, "microbatches": 2, "peerTimeoutSeconds": 3}
    body = serving_job(name, model={"widths": WIDTHS}, pipeline=pipeline)
    body["spec"].update(replicas=replicas, gpusPerReplica=gpus)
    return body


def whole(st: dict, n: int) -> bool:
    """Every one of `n` replicas Ready, each with both its stages placed."""
    reps = st.get("replicaStatus", [])
    return (
        st.get("readyReplicas") == n
        and len(reps) == n
        and all(r["state"] == "Ready" and len(r.get("stageNodes") or []) == 2 for r in reps)
    )


def serving_whole(custom, ns: str, name: str, n: int, timeout: float = 240) -> dict:
    try:
        return wait_for(f"{name}: {n} whole replicas Ready",
                        lambda: whole(s := status(custom, ns, name), n) and s, timeout)  # fmt: skip
    except AssertionError as err:
        raise AssertionError(f"{err}; its status: {status(custom, ns, name)}") from None


def test_a_two_stage_replica_answers_what_the_whole_model_does_in_one_process(
    process_nodes, core, custom, namespace
):
    # 2 GPUs a stage: each stage pod takes a whole node, and activations cross the network.
    jobs.create_serving(custom, namespace, pipeline_job("split", 1, 2 * GPUS_PER_NODE))
    st = serving_whole(custom, namespace, "split", 1)
    assert st["pipeline"]["text"] == "0-1 | 2-3" and st["pipeline"]["split"] == "Balanced"
    nodes = st["replicaStatus"][0]["stageNodes"]
    assert len(set(nodes)) == 2, nodes
    rows = digits(24)
    client = triton.InferenceServerClient(cluster_url(core, namespace, "split"))
    assert client.is_model_ready("digits")
    inp = triton.InferInput("input", list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows)
    got = client.infer("digits", [inp]).as_numpy("logits")
    from distml_runtime.serve.stages import model_layers

    whole = torch.nn.Sequential(*model_layers(WIDTHS)).eval()
    with torch.inference_mode():
        expected = whole(torch.from_numpy(rows)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_a_killed_stage_replaces_its_whole_replica_while_the_other_serves(
    process_nodes, cluster, core, custom, namespace
):
    # 1 GPU a stage: each replica's stages share a node (a node is a block of its own here).
    jobs.create_serving(custom, namespace, pipeline_job("split", 2, 2))
    st = serving_whole(custom, namespace, "split", 2)
    victim = st["replicaStatus"][0]["pod"]
    # Only what was on its way to the broken replica fails: its stage 0 fails its requests in
    # flight and exits as soon as they are answered; its pod is Failed and leaves the endpoints.
    back = kill_mid_load(cluster, core, custom, namespace, "split", f"{victim}-s1",
                         lambda s: whole(s, 2))  # fmt: skip
    assert victim not in {r["pod"] for r in back["replicaStatus"]}
    events = [e.message for e in jobs.events(core, namespace, "split", KIND)
              if e.reason == "ReplicaFailed"]  # fmt: skip
    assert events and "(all its stages)" in events[0], events
