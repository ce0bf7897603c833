"""Benchmark: how fast the operator starts gangs, measured against a baseline in the same run.

    make bench-startup

1. A 64-pod job (8 GPUs a pod on 64 simulated 8-GPU nodes): kubectl-apply -> all pods Running,
   against creating the same objects (the job's headless Service and its 64 pods, rendered by the
   operator's own code) directly, and against the 64 pods alone. The direct baseline is the
   fastest creation we could write: every object at once from one async client with one
   connection pool. Ratio target <= 1.1x. Also the same objects with a Service naming every
   worker (dnsNames AllWorkers), for what the default Rank0 saves.
2. 50 jobs x 8 pods submitted at once, against their 50 Services and 400 pods created directly
   at once (target <= 1.2x).
3. 200 jobs x 8 pods submitted at once: time to all Running, how stale status gets (from a
   gang's last pod Running to its job's status saying Running: median, p99, max), the
   operator's peak RSS, and its reconciles per second (from its own metrics).

Runs on its own local cluster (.cluster-bench/), so it does not disturb `make cluster`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import copy
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kubernetes import client, config, watch
from plainhttp import PlainCreator

from distml import labels
from distml.api.models import training_job_manifest
from distml.localcluster.cluster import LocalCluster
from distml.localcluster.nodes import ClusterShape, NodeShape

REPO = Path(__file__).resolve().parents[1]
GROUP, VERSION, PLURAL = "distml.io", "v1alpha1", "trainingjobs"


def say(msg: str) -> None:
    print(f"[bench-startup] {msg}", file=sys.stderr, flush=True)


def same_objects(ns: str, manifest: dict) -> tuple[dict, list[dict]]:
    """The Service and pods the operator would create for `manifest`, as plain objects."""
    from distml.api.models import TrainingJobSpec
    from distml.rendering import render_headless_service, render_worker_pod

    meta = {**manifest["metadata"], "namespace": ns, "uid": "00000000-0000-0000-0000-000000000000"}
    spec = TrainingJobSpec.model_validate(manifest["spec"])
    objects = [render_headless_service(meta, spec)]
    objects += [render_worker_pod(meta, spec, rank, 0) for rank in range(spec.replicas)]
    for obj in objects:
        # No owner, and no claim to be the operator's: the garbage collector, and the
        # operator's own orphan sweep, would delete them at once.
        obj["metadata"].pop("ownerReferences", None)
        for key in (labels.MANAGED_BY, labels.OWNER_KIND, labels.OWNER_UID):
            obj["metadata"]["labels"].pop(key, None)
    return objects[0], objects[1:]


def job(name: str, replicas: int, gpus: int, **spec: str) -> dict:
    return training_job_manifest(
        name, replicas, gpus, {"containers": [{"name": "c", "image": "x"}]}, **spec
    )


def follow(list_fn, args: tuple, on_event, until, selector: str = "", timeout: float = 600) -> None:
    """Calls on_event(type, object) for every change of what `list_fn(*args)` lists, from what
    exists now, until `until()` is true (asked after every event, and every few seconds) or
    `timeout` passes. Objects come as plain JSON: the client's models cost the bench CPU that
    what it measures, on the same cores, would wait for. A watch the API server ends (it drops
    a watcher that falls behind a burst) goes on from the last event, as an informer does."""
    version = None  # None: the watch opens with what exists now, then follows it
    deadline = time.monotonic() + timeout
    while not until() and time.monotonic() < deadline:
        options = {"deserialize": False, "timeout_seconds": 5}
        if selector:
            options["label_selector"] = selector
        if version is not None:
            options["resource_version"] = version
        stream = watch.Watch().stream(list_fn, *args, **options)
        try:
            for ev in stream:
                version = ev["object"]["metadata"]["resourceVersion"]
                on_event(ev["type"], ev["object"])
                if until():
                    return
        except client.ApiException as err:
            if err.status != 410:
                raise
            version = None  # history gone: from what exists now (on_event sees it again)
        finally:
            # Not Watch.stop(): it shuts the socket of a connection that goes back to the pool.
            stream.close()


def wait_running(
    core: client.CoreV1Api, ns: str, selector: str, n: int, t0: float, timeout: float = 600
) -> float:
    """Seconds from t0 until n pods are Running, as a watch tells it; says when all n existed,
    on the way. A watch, not a LIST polled every few milliseconds: LISTs of hundreds of pods
    load the API server in proportion to how long the wait lasts, so they slowed the slower
    of two runs more, and the bench measured its own load."""
    phases: dict[str, str] = {}
    running = 0
    said = False

    def on_event(kind: str, pod: dict) -> None:
        nonlocal running, said
        name = pod["metadata"]["name"]
        running -= phases.pop(name, "") == "Running"
        if kind != "DELETED":
            phases[name] = (pod.get("status") or {}).get("phase", "")
            running += phases[name] == "Running"
        if not said and len(phases) >= n:
            said = True
            say(f"all {n} pods exist after {time.monotonic() - t0:.2f}s")

    follow(core.list_namespaced_pod, (ns,), on_event, lambda: running >= n, selector, timeout)
    if running < n:
        listed = core.list_namespaced_pod(ns, label_selector=selector).items
        phases_listed = collections.Counter(p.status.phase for p in listed)
        raise TimeoutError(f"{n} pods not Running in {timeout}s: the watch saw {len(phases)} "
                           f"({running} Running), a LIST finds {dict(phases_listed)}")  # fmt: skip
    return time.monotonic() - t0


def fresh_namespace(core: client.CoreV1Api, name: str) -> str:
    core.create_namespace({"metadata": {"name": name}})
    while True:  # admission needs the default ServiceAccount
        try:
            core.read_namespaced_service_account("default", name)
            return name
        except client.ApiException:
            time.sleep(0.1)


def drop_namespace(core: client.CoreV1Api, name: str) -> None:
    """Deletes a namespace and waits until it is gone, so the next round does not share the two
    cores with its clean-up (pods, endpoints, events)."""
    core.delete_namespace(name)
    while True:
        try:
            core.read_namespace(name)
        except client.ApiException as err:
            if err.status == 404:
                return
            raise
        time.sleep(0.2)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_operator(kubeconfig: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """The operator as a process; returns once its readiness probe says its caches are synced."""
    port, health = _port(), _port()
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    argv = [sys.executable, "-m", "distml", "--metrics-port", str(port), "--health-port",
            str(health)]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    for _ in range(300):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{health}/readyz", timeout=1)
            return proc, port
        except OSError:  # not answering yet, or 503: not ready
            time.sleep(0.2)
    raise TimeoutError("operator did not get ready")


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    m = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_by_process(operator_pid: int = 0) -> collections.Counter[str]:
    """CPU seconds so far of every process on this machine, by name (the operator and this
    bench told apart from other Python processes)."""
    out: collections.Counter[str] = collections.Counter()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm, rest = (entry / "stat").read_text().rsplit(")", 1)
        except OSError:  # gone meanwhile
            continue
        pid = int(entry.name)
        name = comm.split("(", 1)[1]
        if pid == operator_pid:
            name = "operator"
        elif pid == os.getpid():
            name = "bench (the user's client)"
        fields = rest.split()
        out[name] += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def show_cpu(direct: collections.Counter[str], ours: collections.Counter[str]) -> None:
    """Where the machine's CPU went in one round of each: the processes that used most."""
    total = (sum(direct.values()), sum(ours.values()))
    say(f"CPU seconds, all processes: direct {total[0]:.2f}, operator {total[1]:.2f} "
        f"({total[1] / max(total[0], 1e-9):.2f}x)")  # fmt: skip
    for name in sorted(set(direct) | set(ours), key=lambda n: -max(ours[n], direct[n]))[:9]:
        say(f"  {name:<26} direct {direct[name]:>6.2f}  operator {ours[name]:>6.2f}")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--pods", type=int, default=64)
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--pods-per-job", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=8, help="rounds of the 64-pod comparison")
    ap.add_argument("--burst-jobs", type=int, default=50)
    ap.add_argument("--burst-repeats", type=int, default=5)
    ap.add_argument("--skip-many", action="store_true", help="only the 64-pod comparison")
    ap.add_argument("--only-burst", action="store_true", help="only the burst comparison")
    args = ap.parse_args()
    nodes = max(args.pods, args.jobs * args.pods_per_job // 8)
    cluster = LocalCluster(root=REPO / ".cluster-bench", bin_dir=REPO / "bin")
    say(f"starting a local cluster with {nodes} simulated 8-GPU nodes")
    cluster.up(ClusterShape(nodes=nodes, nodes_per_block=8), NodeShape(), timeout=600)
    cluster.apply_crds(REPO / "crds")
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    api.configuration.connection_pool_maxsize = 64
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    try:
        run(cluster, core, custom, args)
    finally:
        cluster.down()


def create_at_once(api: client.ApiClient, objects: list[dict]) -> None:
    """Every object at once over one pool of 64 kept-alive connections, with no client library
    in between (`plainhttp`): the floor the operator is measured against."""

    async def go() -> None:
        async with PlainCreator(api) as plain:
            refused = [r for r in await asyncio.gather(*map(plain.create, objects)) if r]
        if refused:
            raise RuntimeError(f"direct creation refused: {refused[:3]}")

    asyncio.run(go())


def run_direct(core, rep: int, pods: int, dns: str | None = "Rank0") -> float:
    """The very objects the operator creates for the job (its headless Service and pods, rendered
    by the same code, less the owner reference), created directly at once; the Service with the
    given dnsNames, or none (dns None) for the pods alone."""
    ns = fresh_namespace(core, f"bench-direct-{rep}-{(dns or 'pods').lower()}")
    service, objs = same_objects(ns, job("big", pods, 8, dnsNames=dns or "Rank0"))
    t0 = time.monotonic()
    create_at_once(core.api_client, [service, *objs] if dns else objs)
    took = wait_running(core, ns, "distml.io/job-name=big", pods, t0)
    drop_namespace(core, ns)
    return took


def run_burst_direct(
    core, jobs: int, per_job: int, pid: int
) -> tuple[float, collections.Counter[str], collections.Counter[str]]:
    """`jobs` jobs' Services and pods, as the operator would render them, created at once; the
    time to all Running, and the API writes and CPU seconds (the idle operator, `pid`, among
    them) until then."""
    ns = fresh_namespace(core, "bench-burst-direct")
    objects: list[dict] = []
    for i in range(jobs):
        service, pods = same_objects(ns, job(f"j{i:03d}", per_job, 1))
        objects += [service, *pods]
    before, cpu = api_writes(core.api_client), cpu_by_process(pid)
    t0 = time.monotonic()
    create_at_once(core.api_client, objects)
    took = wait_running(core, ns, "distml.io/replica-type=worker", jobs * per_job, t0)
    cpu = cpu_by_process(pid) - cpu
    writes = api_writes(core.api_client) - before
    drop_namespace(core, ns)
    return took, writes, cpu


def all_jobs_running(custom, ns: str, jobs: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]
        if sum((j.get("status") or {}).get("phase") == "Running" for j in items) == jobs:
            return
        time.sleep(0.2)


WRITES = ("POST", "PUT", "PATCH", "DELETE")


def api_writes(api: client.ApiClient) -> collections.Counter[str]:
    """The API server's own count of write requests so far, by resource (and subresource)."""
    params = api.param_serialize(method="GET", resource_path="/metrics",
                                 auth_settings=["BearerToken"])  # fmt: skip
    resp = api.call_api(*params)
    resp.read()
    text = resp.data.decode()
    out: collections.Counter[str] = collections.Counter()
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        fields = dict(re.findall(r'(\w+)="([^"]*)"', line))
        if fields.get("verb") in WRITES:
            sub = f"/{fields['subresource']}" if fields.get("subresource") else ""
            out[f"{fields.get('resource', '?')}{sub}"] += int(float(line.rsplit(" ", 1)[1]))
    return out


def show_writes(jobs: int, direct: collections.Counter[str], ours: collections.Counter[str]):
    """API writes per job in one round of each, all clients together (the scheduler's bindings
    and the nodes' status updates are in both)."""
    total = (sum(direct.values()), sum(ours.values()))
    say(f"API writes per job: direct {total[0] / jobs:.1f}, operator {total[1] / jobs:.1f} "
        f"({total[1] / max(total[0], 1):.2f}x)")  # fmt: skip
    for what in sorted(set(direct) | set(ours), key=lambda w: -(ours[w] - direct[w])):
        if ours[what] or direct[what]:
            d, o = direct[what] / jobs, ours[what] / jobs
            say(f"  {what:<24} direct {d:>5.2f}  operator {o:>5.2f}")


def run_bursts(core, custom, args, pid: int) -> tuple[float, float, str]:
    """(operator, direct) medians: `burst_jobs` jobs at once against their objects created
    directly at once, alternating; and the range of the rounds' ratios."""
    bursts, directs = [], []
    per = args.pods_per_job
    api = core.api_client
    for rep in range(args.burst_repeats):
        took, direct_writes, direct_cpu = run_burst_direct(core, args.burst_jobs, per, pid)
        directs.append(took)
        ns = fresh_namespace(core, f"bench-burst-{rep}")
        before, cpu = api_writes(api), cpu_by_process(pid)
        t0 = time.monotonic()
        submit_jobs(custom, ns, args.burst_jobs, per)
        say(f"submitted after {time.monotonic() - t0:.2f}s")
        bursts.append(wait_running(core, ns, "distml.io/replica-type=worker",
                                   args.burst_jobs * per, t0))  # fmt: skip
        cpu = cpu_by_process(pid) - cpu
        if rep == 0:  # the writes until every job says Running
            all_jobs_running(custom, ns, args.burst_jobs)
            show_writes(args.burst_jobs, direct_writes, api_writes(api) - before)
            show_cpu(direct_cpu, cpu)
        custom.delete_collection_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)
        while core.list_namespaced_pod(ns).items:
            time.sleep(0.2)
        drop_namespace(core, ns)
        say(f"burst round {rep + 1}: direct {directs[-1]:.2f}s operator {bursts[-1]:.2f}s")
    ratios = sorted(b / d for b, d in zip(bursts, directs, strict=True))
    return (
        statistics.median(bursts),
        statistics.median(directs),
        f"{ratios[0]:.2f}-{ratios[-1]:.2f}x",
    )


def submit_jobs(custom, ns: str, jobs: int, per_job: int) -> None:
    body = job("j", per_job, 1)

    def submit(i: int) -> None:
        b = copy.deepcopy(body)
        b["metadata"]["name"] = f"j{i:03d}"
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, b)

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(submit, range(jobs)))


class StatusStaleness:
    """Watches a namespace's pods and jobs: when each job's last pod turned Running, and when its
    status first said Running."""

    def __init__(self, core, custom, ns: str) -> None:
        self.pod_running: dict[str, tuple[str, float]] = {}
        self.job_running: dict[str, float] = {}
        self.done = False
        follows = [
            (core.list_namespaced_pod, (ns,), self._pod),
            (custom.list_namespaced_custom_object, (GROUP, VERSION, ns, PLURAL), self._job),
        ]
        for list_fn, args, on_event in follows:
            threading.Thread(target=follow, args=(list_fn, args, on_event, lambda: self.done),
                             kwargs={"timeout": 1800}, daemon=True).start()  # fmt: skip

    def _pod(self, _: str, pod: dict) -> None:
        name = pod["metadata"]["name"]
        if (pod.get("status") or {}).get("phase") == "Running" and name not in self.pod_running:
            job_name = (pod["metadata"].get("labels") or {}).get("distml.io/job-name", "")
            self.pod_running[name] = (job_name, time.monotonic())

    def _job(self, _: str, obj: dict) -> None:
        if (obj.get("status") or {}).get("phase") == "Running":
            self.job_running.setdefault(obj["metadata"]["name"], time.monotonic())

    def figures(self, jobs: int, timeout: float = 120) -> tuple[float, float, float]:
        """(median, p99, max) seconds, once every job has said Running."""
        deadline = time.monotonic() + timeout
        while len(self.job_running) < jobs and time.monotonic() < deadline:
            time.sleep(0.2)
        self.done = True
        last: dict[str, float] = {}
        for job_name, t in list(self.pod_running.values()):
            last[job_name] = max(last.get(job_name, 0.0), t)
        lags = sorted(max(self.job_running[j] - t, 0.0) for j, t in last.items()
                      if j in self.job_running)  # fmt: skip
        if len(lags) < jobs:
            raise TimeoutError(f"only {len(lags)} of {jobs} jobs said Running")
        p99 = lags[min(len(lags) - 1, round(0.99 * (len(lags) - 1)))]
        return statistics.median(lags), p99, lags[-1]


def run_operator(core, custom, rep: int, pods: int, pid: int) -> tuple[float, float]:
    """kubectl apply -> all pods Running for one TrainingJob; and the operator's CPU seconds."""
    ns = fresh_namespace(core, f"bench-gang-{rep}")
    cpu0 = cpu_seconds(pid)
    t0 = time.monotonic()
    custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, job("big", pods, 8))
    took = wait_running(core, ns, "distml.io/job-name=big", pods, t0)
    cpu = cpu_seconds(pid) - cpu0
    custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "big")
    while core.list_namespaced_pod(ns).items:
        time.sleep(0.2)
    drop_namespace(core, ns)
    return took, cpu


def run(cluster: LocalCluster, core, custom, args) -> None:
    proc, port = start_operator(cluster.kubeconfig, cluster.logs / "operator-bench.log")
    try:
        # Steady state, not start-up: the operator has listed and is watching before the clock
        # starts (its first watch may meet "storage is initializing" on a CRD just applied).
        ns = fresh_namespace(core, "bench-warm")
        say("warming up: one small job the operator must reconcile first")
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, job("warm", 1, 1))
        wait_running(core, ns, "distml.io/job-name=warm", 1, time.monotonic())
        custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "warm")
        if args.only_burst:
            burst, burst_direct, rounds = run_bursts(core, custom, args, proc.pid)
            print(f"{args.burst_jobs} jobs x {args.pods_per_job} pods: direct {burst_direct:.2f}s "
                  f"operator {burst:.2f}s ratio {burst / burst_direct:.2f}x (rounds {rounds}) "
                  f"(medians of {args.burst_repeats})")  # fmt: skip
            return
        # 1. Direct creation and the operator, the same objects each time, in an order that
        # rotates every round; the operator runs throughout, as it would in a cluster. Medians
        # over the repeats.
        directs, pods_only, all_named, gangs, cpus = [], [], [], [], []

        def operator_run(rep: int) -> None:
            gang, cpu = run_operator(core, custom, rep, args.pods, proc.pid)
            gangs.append(gang)
            cpus.append(cpu)

        runs = [
            lambda rep: directs.append(run_direct(core, rep, args.pods)),
            lambda rep: pods_only.append(run_direct(core, rep, args.pods, dns=None)),
            lambda rep: all_named.append(run_direct(core, rep, args.pods, dns="AllWorkers")),
            operator_run,
        ]
        for rep in range(args.repeats):
            for i in range(len(runs)):
                runs[(rep + i) % len(runs)](rep)
            say(
                f"round {rep + 1}/{args.repeats}: direct {directs[-1]:.2f}s "
                f"(pods alone {pods_only[-1]:.2f}s, every worker named {all_named[-1]:.2f}s), "
                f"operator {gangs[-1]:.2f}s"
            )
        direct, bare, named, gang, gang_cpu = (
            statistics.median(v) for v in (directs, pods_only, all_named, gangs, cpus)
        )

        if args.skip_many:
            print(
                f"direct {direct:.2f}s operator {gang:.2f}s ratio {gang / direct:.2f}x; "
                f"pods alone {bare:.2f}s ratio {gang / bare:.2f}x; "
                f"every worker named {named:.2f}s ({named / bare:.2f}x the pods alone) "
                f"(medians of {args.repeats}; operator CPU {gang_cpu:.2f}s)"
            )
            return
        # 2. A burst of 50 jobs against the same objects created directly, alternating.
        per = args.pods_per_job
        burst, burst_direct, rounds = run_bursts(core, custom, args, proc.pid)

        # 3. Many jobs at once.
        ns = fresh_namespace(core, "bench-many")
        total = args.jobs * args.pods_per_job
        say(f"operator: {args.jobs} jobs x {args.pods_per_job} pods submitted at once")
        before = metric(port, "distml_reconcile_duration_seconds_count")
        stale = StatusStaleness(core, custom, ns)
        t0 = time.monotonic()
        submit_jobs(custom, ns, args.jobs, args.pods_per_job)
        submitted = time.monotonic() - t0
        many = wait_running(core, ns, "distml.io/replica-type=worker", total, t0, timeout=1200)
        stale_median, stale_p99, stale_max = stale.figures(args.jobs)
        reconciles = metric(port, "distml_reconcile_duration_seconds_count") - before
        rss = peak_rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    print(f"\n{'measure':<58} {'value':>12}")
    print(f"{f'direct: Service + {args.pods} pods created -> all Running (s)':<58} {direct:>12.2f}")
    print(f"{f'operator: {args.pods}-pod job applied -> all Running (s)':<58} {gang:>12.2f}")
    print(f"{'  (medians of ' + str(args.repeats) + ' alternating rounds)':<58}")
    print(f"{'ratio operator / direct (target <= 1.1)':<58} {gang / direct:>12.2f}x")
    print(f"{f'direct: the {args.pods} pods alone, no Service (s)':<58} {bare:>12.2f}")
    print(f"{'ratio operator / the pods alone':<58} {gang / bare:>12.2f}x")
    print(f"{'direct: Service naming every worker + the pods (s)':<58} {named:>12.2f}")
    print(f"{'  ratio to the pods alone':<58} {named / bare:>12.2f}x")
    print(f"{'operator CPU time during that start (s)':<58} {gang_cpu:>12.2f}")
    what = f"{args.burst_jobs} jobs x {per} pods"
    print(f"{f'direct: {what}: Services + pods -> Running (s)':<58} {burst_direct:>12.2f}")
    print(f"{f'operator: {what} applied at once -> Running (s)':<58} {burst:>12.2f}")
    print(f"{'  (medians of ' + str(args.burst_repeats) + ' alternating rounds)':<58}")
    print(f"{'ratio operator / direct (target <= 1.2)':<58} {burst / burst_direct:>12.2f}x")
    label = "  each round's ratio, lowest-highest"
    print(f"{label:<58} {rounds:>13}")
    print(
        f"{f'{args.jobs} jobs x {args.pods_per_job} pods: submit time (s)':<58} {submitted:>12.2f}"
    )
    print(
        f"{f'{args.jobs} jobs x {args.pods_per_job} pods: all {total} Running (s)':<58} "
        f"{many:>12.2f}"
    )
    print(
        f"{'status staleness, last pod Running -> job Running (s)':<58} "
        f"{'median':>6} {stale_median:>5.2f}"
    )
    print(f"{'  p99 (target < 2), max':<58} {stale_p99:>6.2f} {stale_max:>5.2f}")
    print(f"{'operator peak RSS (MiB)':<58} {rss:>12.1f}")
    print(
        f"{'operator reconciles (count, per second)':<58} "
        f"{reconciles:>6.0f} {reconciles / many:>5.1f}/s"
    )


if __name__ == "__main__":
    main()
