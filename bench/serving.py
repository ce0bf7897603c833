"""Benchmark: the serving server's dynamic batching, and a ServingJob's rolling update under load.

    make bench-serving                # both; the rollout on its own cluster
    python bench/serving.py batching
    python bench/serving.py rollout --namespace default --name ddp-digits   # a running one

1. Batching: two servers on this machine, one batching (--max-batch-size 32,
   --max-queue-delay-ms 5) and one not (--max-batch-size 1), with the built-in model made wider
   (--demo-hidden) so a forward pass costs what a real model's does. Closed-loop clients
   (tritonclient's asyncio client, binary tensors) at 1, 2, 4, ... 64 at once, a few seconds
   each: requests/s, p50 and p99 at each. The figure: the most requests/s each server serves
   with p99 within the same latency budget, and their ratio (target >= 3x).
2. Rollout: a ServingJob of 2 replicas on 3 process nodes (real servers, the real kube-proxy),
   CLIENTS concurrent clients through its ClusterIP while its template changes: requests
   served and failed (target 0), p50/p99 before, during and after.
3. Autoscaling, on the same cluster: an autoscaled ServingJob (1-2 replicas, 1.5 requests in
   flight per replica, 8 s down delay) under one client, then a step to 1 + CLIENTS clients:
   the time from the step to the second replica serving, p50/p99 before, during the step and
   once both serve; then the step's end: the time back to one replica, and requests failed
   through both changes (target 0).
4. Pipeline-split replicas: the same model (--pipe-widths, 8 layers) served by one process,
   and by replicas of 2 and 4 stage processes on this machine (the runtime's stage transport,
   TCP on loopback), with 1 and with 4 micro-batches per batch; CLIENTS x 4 closed-loop
   clients for --seconds each: requests/s, p50 and p99, and each against the single process.
   This machine's cores are shared by every stage; on GPUs each stage has its own.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.http as triton
import tritonclient.http.aio as triton_aio

from distml_runtime.distenv import free_port

REPO = Path(__file__).resolve().parents[1]
BUDGET_MS = 50.0
CONCURRENCY = (1, 2, 4, 8, 16, 32, 64)


def say(msg: str) -> None:
    print(msg, flush=True)


def rows(n: int) -> np.ndarray:
    return np.random.default_rng(0).random((n, 64), dtype=np.float32)


# --- load ----------------------------------------------------------------------------------------


Result = tuple[float, float, str]  # start time, latency, error or ""


async def closed_loop(
    url: str, clients: int, seconds: float = 0.0, stop: asyncio.Event | None = None
) -> list[Result]:
    """`clients` clients, each sending its next request when the last is answered, for
    `seconds` (or until `stop` is set): (start time, latency, error or "") of every request."""
    data = rows(1)
    results: list[tuple[float, float, str]] = []
    deadline = time.monotonic() + seconds if seconds else float("inf")

    def going() -> bool:
        return time.monotonic() < deadline and not (stop is not None and stop.is_set())

    async def one() -> None:
        client = triton_aio.InferenceServerClient(url, conn_limit=1, conn_timeout=10)
        inp = triton.InferInput("input", list(data.shape), "FP32")
        inp.set_data_from_numpy(data, binary_data=True)
        try:
            while going():
                t0 = time.monotonic()
                err = ""
                try:
                    await client.infer("digits", [inp])
                except Exception as e:  # every failure counts
                    err = f"{type(e).__name__}: {e}"[:160]
                results.append((t0, time.monotonic() - t0, err))
        finally:
            await client.close()

    await asyncio.gather(*(one() for _ in range(clients)))
    return results


def summary(results: list[tuple[float, float, str]], seconds: float | None = None) -> dict:
    ok = sorted(r[1] for r in results if not r[2])
    span = seconds or ((max(r[0] for r in results) - min(r[0] for r in results)) if results
                       else 0)  # fmt: skip
    return {
        "requests": len(results),
        "failed": sum(1 for r in results if r[2]),
        "rps": len(ok) / span if span else 0.0,
        "p50_ms": statistics.median(ok) * 1e3 if ok else float("nan"),
        "p99_ms": ok[min(len(ok) - 1, int(len(ok) * 0.99))] * 1e3 if ok else float("nan"),
    }


# --- 1. batching ---------------------------------------------------------------------------------


def start_server(max_batch: int, hidden: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "distml_runtime.serve", "--host", "127.0.0.1", "--port", str(port),
         "--metrics-port", "0", "--max-batch-size", str(max_batch), "--max-queue-delay-ms", "5",
         "--demo-hidden", str(hidden)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"127.0.0.1:{port}"
    wait_ready(url, [proc], "the server")
    return proc, url


def wait_ready(url: str, procs: list[Any], what: str, timeout: float = 180) -> None:
    """Until the server at `url` says it is ready; `procs` killed if it never does."""
    client = triton.InferenceServerClient(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if client.is_server_ready():
                return
        except Exception:  # not listening yet
            pass
        time.sleep(0.2)
    for p in procs:
        p.kill()
    raise TimeoutError(f"{what} did not get ready")


def bench_batching(args: argparse.Namespace) -> float:
    say(f"1. dynamic batching: built-in model with {args.hidden}-wide layers, p99 budget "
        f"{BUDGET_MS:.0f} ms, {args.seconds:.0f}s per level")  # fmt: skip
    best: dict[str, float] = {}
    for label, max_batch in (("batched (max 32)", 32), ("unbatched (max 1)", 1)):
        proc, url = start_server(max_batch, args.hidden)
        try:
            asyncio.run(closed_loop(url, 4, 1.0))  # warm up
            say(f"  {label}")
            say(f"    {'clients':>8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
            best[label] = 0.0
            for c in CONCURRENCY:
                s = summary(asyncio.run(closed_loop(url, c, args.seconds)), args.seconds)
                within = s["p99_ms"] <= BUDGET_MS
                say(f"    {c:>8} {s['rps']:>9.0f} {s['p50_ms']:>8.1f} {s['p99_ms']:>8.1f}"
                    f"{'' if within else '   over budget'}")  # fmt: skip
                if within:
                    best[label] = max(best[label], s["rps"])
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    batched, unbatched = best["batched (max 32)"], best["unbatched (max 1)"]
    ratio = batched / unbatched if unbatched else float("inf")
    say(f"  within p99 <= {BUDGET_MS:.0f} ms: batched {batched:.0f} req/s, unbatched "
        f"{unbatched:.0f} req/s: {ratio:.2f}x (target >= 3x)")  # fmt: skip
    return ratio


# --- 4. pipeline-split replicas ------------------------------------------------------------------


def start_replica(
    widths: list[int], cuts: list[int], microbatches: int, paced_ms: float
) -> tuple[list[Any], str]:
    """A replica of len(cuts) + 1 stage processes (one process when there are no cuts)."""
    bounds = [0, *cuts, len(widths) + 1]
    k = len(bounds) - 1
    ports = [free_port() for _ in range(k)]
    http = free_port()
    ranges = ",".join(f"{a}:{b}" for a, b in itertools.pairwise(bounds))
    model = {"DISTML_MODEL_WIDTHS": ",".join(map(str, widths)),
             "DISTML_PACED_LAYER_MS": str(paced_ms),
             # The cores shared out: torch would give every process a thread per core, and
             # four processes on two cores would spend their time preempting each other.
             "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // k))}  # fmt: skip
    procs = []
    for stage in reversed(range(k)):  # the later stages first: stage 0 waits for them
        env = {**os.environ, **model}
        if k > 1:
            env |= {"DISTML_STAGES": str(k), "DISTML_STAGE_RANGES": ranges,
                    "DISTML_MICROBATCHES": str(microbatches), "DISTML_STAGE": str(stage),
                    "DISTML_STAGE_LISTEN": str(ports[stage]),
                    "DISTML_STAGE_NEXT": f"127.0.0.1:{ports[(stage + 1) % k]}"}  # fmt: skip
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "distml_runtime.serve", "--host", "127.0.0.1", "--port",
             str(http), "--metrics-port", "0", "--max-queue-delay-ms", "2"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))  # fmt: skip
    url = f"127.0.0.1:{http}"
    wait_ready(url, procs, f"the {k}-stage replica")
    return procs, url


def bench_pipeline(args: argparse.Namespace) -> dict:
    clients = 4 * args.clients
    say(
        f"4. pipeline-split replicas vs one pod of the same model: {clients} clients, "
        f"{args.seconds:.0f}s each; {os.cpu_count()} cores here, shared by the stages"
    )
    regimes = [
        (f"a. compute on the CPU cores, widths {args.pipe_widths}", args.pipe_widths, 0.0),
        (f"b. {args.paced_layer_ms:g} ms per layer per pass, as on an accelerator per stage "
         f"(--paced-layer-ms), widths 256 x 7", "256,256,256,256,256,256,256",
         args.paced_layer_ms),
    ]  # fmt: skip
    figures: dict = {}
    for title, text, paced in regimes:
        widths = [int(w) for w in text.split(",")]
        layers = len(widths) + 1
        say(f"  {title} ({layers} layers)")
        say(f"    {'replica':<26} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'vs 1 pod':>9}")
        cases: list[tuple[str, list[int], int]] = [("1 pod", [], 1)]
        for k in (2, 4):
            cuts = [layers * s // k for s in range(1, k)]
            cases += [(f"{k} stages, 1 micro-batch", cuts, 1),
                      (f"{k} stages, 4 micro-batches", cuts, 4)]  # fmt: skip
        base = 0.0
        for label, cuts, micro in cases:
            procs, url = start_replica(widths, cuts, micro, paced)
            try:
                asyncio.run(closed_loop(url, clients, 1.0))  # warm up
                s = summary(asyncio.run(closed_loop(url, clients, args.seconds)), args.seconds)
            finally:
                for p in procs:
                    p.kill()
                    p.wait(timeout=30)
            base = base or s["rps"]
            figures[f"{title[:2]} {label}"] = s
            failed = f"  {s['failed']} failed" if s["failed"] else ""
            say(f"    {label:<26} {s['rps']:>8.0f} {s['p50_ms']:>8.1f} {s['p99_ms']:>8.1f} "
                f"{s['rps'] / base:>8.2f}x{failed}")  # fmt: skip
    return figures


# --- 2. rollout ----------------------------------------------------------------------------------


def rollout(namespace: str, name: str, clients: int, kubeconfig: str | None = None,
            mark: str | None = None) -> dict:  # fmt: skip
    """Changes the ServingJob's template (an env var) under load; returns the figures."""
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=kubeconfig)
    custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    group = ("distml.io", "v1alpha1", namespace, "servingjobs", name)

    def status() -> dict:
        return custom.get_namespaced_custom_object(*group).get("status") or {}

    def settled(st: dict) -> bool:
        return (st.get("phase") == "Available" and st.get("currentRevision") == st.get(
            "updateRevision") and all(r["state"] == "Ready" and r["revision"] == st[
            "updateRevision"] for r in st.get("replicaStatus", [])))  # fmt: skip

    job = custom.get_namespaced_custom_object(*group)
    before_rev = status().get("currentRevision")
    ip = core.read_namespaced_service(name, namespace).spec.cluster_ip
    url = f"{ip}:{job['spec'].get('port', 8000)}"
    template = job["spec"].get("template") or {}
    spec = template.setdefault("spec", {})
    if not spec.get("containers"):
        spec["containers"] = [{"name": "server", "image": "distml-runtime:0.1.0",
                               "command": ["python", "-m", "distml_runtime.serve"]}]  # fmt: skip
    env = [e for e in spec["containers"][0].get("env") or [] if e["name"] != "DEPLOYED"]
    spec["containers"][0]["env"] = [*env, {"name": "DEPLOYED", "value": mark or str(time.time())}]

    marks: dict[str, float] = {}

    async def run() -> list[tuple[float, float, str]]:
        stop = asyncio.Event()
        load = asyncio.create_task(closed_loop(url, clients, stop=stop))
        await asyncio.sleep(5)
        marks["change"] = time.monotonic()
        await asyncio.to_thread(custom.patch_namespaced_custom_object, *group,
                                {"spec": {"template": template}})  # fmt: skip
        while True:
            await asyncio.sleep(0.5)
            st = await asyncio.to_thread(status)
            if settled(st) and st.get("currentRevision") != before_rev:
                break
            if time.monotonic() - marks["change"] > 600:
                stop.set()
                raise TimeoutError(f"the rollout did not complete: {st.get('message')}")
        marks["done"] = time.monotonic()
        await asyncio.sleep(5)
        stop.set()
        return await load

    results = asyncio.run(run())
    t_change, t_done = marks["change"], marks["done"]
    parts = {
        "before": summary([r for r in results if r[0] < t_change]),
        "during": summary([r for r in results if t_change <= r[0] < t_done]),
        "after": summary([r for r in results if r[0] >= t_done]),
    }
    failed = [r[2] for r in results if r[2]]
    out = {"seconds": t_done - t_change, "requests": len(results), "failed": len(failed),
           "errors": sorted(set(failed))[:5], **parts}  # fmt: skip
    st = status()
    say(
        f"  rollout {before_rev} -> {st.get('currentRevision')} in {out['seconds']:.0f}s under "
        f"{clients} clients: {len(results)} requests, {len(failed)} failed (target 0)"
    )
    for part in ("before", "during", "after"):
        s = parts[part]
        say(f"    {part:<7} {s['requests']:>6} requests  {s['rps']:>6.0f} req/s  p50 "
            f"{s['p50_ms']:6.1f} ms  p99 {s['p99_ms']:6.1f} ms")  # fmt: skip
    if failed:
        say(f"    errors: {out['errors']}")
    return out


SERVER = {
    "nodeSelector": {"distml.io/simulated-node": "process"},
    "containers": [{"name": "server", "image": "distml-runtime:0.1.0",
                    "command": ["python", "-m", "distml_runtime.serve"]}],
}  # fmt: skip


class ServingCluster:
    """Its own cluster with 3 process nodes of 2 GPUs and the operator; ServingJobs of one
    replica per node."""

    def __init__(self) -> None:
        from distml.localcluster.cluster import LocalCluster

        self.cluster = LocalCluster(root=REPO / ".cluster-bench-serving", bin_dir=REPO / "bin")

    def __enter__(self) -> ServingCluster:
        from kubernetes import client, config

        from distml.localcluster.nodes import ClusterShape, NodeShape

        self.cluster.up(ClusterShape(nodes=0), NodeShape(), timeout=300)
        self.cluster.apply_crds(REPO / "crds")
        self.cluster.sync_process_nodes(3, gpus=2)
        self.cluster.start_operator(free_port())
        api = config.new_client_from_config(config_file=str(self.cluster.kubeconfig))
        self.custom, self.core = client.CustomObjectsApi(api), client.CoreV1Api(api)
        return self

    def __exit__(self, *_: object) -> None:
        self.cluster.down()

    def group(self, name: str) -> tuple[str, str, str, str, str]:
        return ("distml.io", "v1alpha1", "default", "servingjobs", name)

    def status(self, name: str) -> dict:
        return self.custom.get_namespaced_custom_object(*self.group(name)).get("status") or {}

    def create(self, name: str, replicas: int, **spec: object) -> None:
        from distml.api.serving import serving_job_manifest

        body = serving_job_manifest(name, replicas, gpusPerReplica=2, template={"spec": SERVER},
                                    **spec)  # fmt: skip
        self.custom.create_namespaced_custom_object(*self.group(name)[:4], body)

    def wait(self, what: str, probe: Any, timeout: float = 300) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = probe()
            if got:
                return got
            time.sleep(0.25)
        raise TimeoutError(what)

    def serving(self, name: str, n: int) -> dict:
        """Its status once it asks for `n` replicas and exactly `n` serve, Ready (else {})."""
        st = self.status(name)
        want = (st.get("autoscaling") or {}).get("desiredReplicas", st.get("readyReplicas"))
        states = [r["state"] for r in st.get("replicaStatus", [])]
        return st if want == n and states == ["Ready"] * n else {}

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(*self.group(name))
        sel = f"distml.io/job-name={name}"
        self.wait(
            f"{name}'s pods gone",
            lambda: not self.core.list_namespaced_pod("default", label_selector=sel).items,
        )


def bench_rollout(args: argparse.Namespace, c: ServingCluster) -> dict:
    say(f"2. rolling update under load: 2 replicas on 3 process nodes, {args.clients} clients")
    c.create("digits", 2, rollout={"maxSurge": 1, "maxUnavailable": 0, "drainSeconds": 2})
    c.wait("digits Available", lambda: c.serving("digits", 2))
    out = rollout("default", "digits", args.clients, str(c.cluster.kubeconfig))
    c.delete("digits")
    return out


def bench_autoscale(args: argparse.Namespace, c: ServingCluster) -> dict:
    say(f"3. autoscaling: 1-2 replicas, target 1.5 in flight, a step from 1 to "
        f"{1 + args.clients} clients")  # fmt: skip
    auto = {"minReplicas": 1, "maxReplicas": 2, "target": 1.5, "downscaleDelaySeconds": 8}
    c.create("auto", 1, autoscaling=auto, rollout={"drainSeconds": 2})
    c.wait("one replica serving", lambda: c.serving("auto", 1))
    ip = c.core.read_namespaced_service("auto", "default").spec.cluster_ip
    url = f"{ip}:8000"
    marks: dict[str, float] = {}

    async def run() -> tuple[list[Result], list[Result]]:
        stop_trickle, stop_step = asyncio.Event(), asyncio.Event()
        trickle = asyncio.create_task(closed_loop(url, 1, stop=stop_trickle))
        await asyncio.sleep(5)
        marks["step"] = time.monotonic()
        step = asyncio.create_task(closed_loop(url, args.clients, stop=stop_step))
        await asyncio.to_thread(c.wait, "the step served by 2", lambda: c.serving("auto", 2), 120)
        marks["up"] = time.monotonic()
        await asyncio.sleep(5)
        stop_step.set()
        marks["end"] = time.monotonic()
        await asyncio.to_thread(c.wait, "back to 1", lambda: c.serving("auto", 1), 120)
        marks["down"] = time.monotonic()
        await asyncio.sleep(2)
        stop_trickle.set()
        return await trickle, await step

    trickle, step = asyncio.run(run())
    results = trickle + step
    failed = [r[2] for r in results if r[2]]
    parts = {
        "before": summary([r for r in results if r[0] < marks["step"]]),
        "step, one replica": summary([r for r in results if marks["step"] <= r[0] < marks["up"]]),
        "step, two replicas": summary([r for r in results if marks["up"] <= r[0] < marks["end"]]),
        "after": summary([r for r in results if r[0] >= marks["end"]]),
    }
    out = {"step_to_serving_s": marks["up"] - marks["step"],
           "end_to_one_s": marks["down"] - marks["end"], "requests": len(results),
           "failed": len(failed), "errors": sorted(set(failed))[:5], **parts}  # fmt: skip
    say(f"  load step -> second replica serving: {out['step_to_serving_s']:.1f} s; end of the "
        f"step -> one replica: {out['end_to_one_s']:.1f} s (8 s delay, 2 s drain); "
        f"{len(results)} requests, {len(failed)} failed (target 0)")  # fmt: skip
    for part, s_ in parts.items():
        say(f"    {part:<18} {s_['requests']:>6} requests  {s_['rps']:>6.0f} req/s  p50 "
            f"{s_['p50_ms']:6.1f} ms  p99 {s_['p99_ms']:6.1f} ms")  # fmt: skip
    for e in c.core.list_namespaced_event("default", field_selector="involvedObject.name=auto")\
            .items:  # fmt: skip
        if e.reason in ("ScaledUp", "ScaledDown"):
            say(f"    {e.reason}: {e.message}")
    c.delete("auto")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("what", nargs="?",
                    choices=["all", "batching", "rollout", "autoscale", "pipeline"],
                    default="all")  # fmt: skip
    ap.add_argument("--pipe-widths", default="1024,1024,1024,1024,1024,1024,1024")
    ap.add_argument("--paced-layer-ms", type=float, default=2.0)
    ap.add_argument("--seconds", type=float, default=4.0, help="per concurrency level")
    ap.add_argument("--hidden", type=int, default=4096, help="the built-in model's width")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--namespace", help="rollout: of this running ServingJob (no own cluster)")
    ap.add_argument("--name")
    ap.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    ap.add_argument("--json", type=Path, help="write the figures here too")
    args = ap.parse_args()
    figures: dict = {}
    if args.what in ("all", "batching"):
        figures["batching_ratio"] = bench_batching(args)
    if args.what in ("all", "pipeline"):
        figures["pipeline"] = bench_pipeline(args)
    if args.what == "rollout" and args.name:
        figures["rollout"] = rollout(args.namespace or "default", args.name, args.clients,
                                     args.kubeconfig)  # fmt: skip
    elif args.what in ("all", "rollout", "autoscale"):
        with ServingCluster() as c:
            if args.what in ("all", "rollout"):
                figures["rollout"] = bench_rollout(args, c)
            if args.what in ("all", "autoscale"):
                figures["autoscale"] = bench_autoscale(args, c)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
