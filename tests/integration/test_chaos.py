"""One bounded fault-injection run: a fixed number of job lifecycles while the operator is
SIGKILLed at random moments and the API server restarts once, with the invariants a user relies
on checked all along."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from distml import labels
from distml.localcluster import faults

from . import jobs
from .helpers import settled, wait_for

LIFECYCLES = 12
AT_ONCE = 4  # two fit the pool at a time; the rest queue
STAGGER = 1.5  # seconds between lifecycle starts: the run spans the chaos
REPLICAS = 2
ORPHAN_BOUND = 30.0  # seconds a pod may outlive its job
FINISH_GRACE = 5.0  # seconds a pod may run on after its job's terminal status is written
SEED = 15


def _eventually(what: str, probe, timeout: float = 90.0):
    """wait_for, riding out API errors (the API server restarts during the run)."""

    def safe():
        try:
            return probe()
        except Exception:
            return None

    return wait_for(what, safe, timeout=timeout, every=0.3)


def _retry(fn, *args) -> Any:
    return _eventually(f"{fn.__name__} to go through", lambda: fn(*args) or True, timeout=60)


class Invariants(threading.Thread):
    """Polls the namespace's jobs and pods and notes every broken invariant."""

    def __init__(self, core, custom, ns: str) -> None:
        super().__init__(daemon=True)
        self.core, self.custom, self.ns = core, custom, ns
        self.stop = threading.Event()
        self.violations: list[str] = []
        self.polls = 0
        self.pods_seen: dict[tuple[str, str], set[str]] = {}  # (job uid, pod name) -> pod uids
        self._orphan_since: dict[str, float] = {}
        self._finished_running_since: dict[str, float] = {}

    def run(self) -> None:
        while not self.stop.wait(0.3):
            try:
                pods = self.core.list_namespaced_pod(
                    self.ns, label_selector=f"{labels.MANAGED_BY}={labels.OPERATOR}"
                ).items
                js = self.custom.list_namespaced_custom_object(
                    jobs.GROUP, jobs.VERSION, self.ns, jobs.PLURAL
                )["items"]
            except Exception:
                continue  # the API server is restarting
            self.check([p for p in pods if p.metadata.labels.get(labels.RANK)], js)
            self.polls += 1

    def _note(self, what: str) -> None:
        if what not in self.violations:
            self.violations.append(what)

    def check(self, pods, js) -> None:
        now = time.monotonic()
        by_uid = {j["metadata"]["uid"]: j for j in js}
        done = ("Succeeded", "Failed")
        live = [p for p in pods if p.metadata.deletion_timestamp is None
                and p.status.phase not in done]  # fmt: skip
        live_uids = {p.metadata.uid for p in live}
        for p in pods:
            key = (p.metadata.labels[labels.OWNER_UID], p.metadata.name)
            self.pods_seen.setdefault(key, set()).add(p.metadata.uid)
        lab = [p.metadata.labels for p in live]
        per_gen = Counter((m[labels.OWNER_UID], m[labels.GENERATION]) for m in lab)
        for (uid, gen), n in per_gen.items():
            if n > REPLICAS:
                self._note(f"{n} live pods of job {uid} generation {gen}")
        per_rank = Counter((m[labels.OWNER_UID], m[labels.RANK]) for m in lab)
        for (uid, rank), n in per_rank.items():
            if n > 1:
                self._note(f"{n} live pods of job {uid} rank {rank}")
        for pod in pods:
            uid = pod.metadata.labels[labels.OWNER_UID]
            key = pod.metadata.uid
            job = by_uid.get(uid)
            if job is None:
                since = self._orphan_since.setdefault(key, now)
                if now - since > ORPHAN_BOUND:
                    self._note(f"pod {pod.metadata.name} outlived its job by {now - since:.0f}s")
                continue
            self._orphan_since.pop(key, None)
            st = job.get("status") or {}
            finished = st.get("phase") in ("Succeeded", "Failed")
            current = pod.metadata.labels[labels.GENERATION] == str(st.get("restartGeneration", 0))
            if finished and current and key in live_uids and pod.status.phase == "Running":
                since = self._finished_running_since.setdefault(key, now)
                if now - since > FINISH_GRACE:
                    self._note(f"{job['metadata']['name']} is {st['phase']} while "
                               f"{pod.metadata.name} runs")  # fmt: skip


def test_random_operator_kills_and_an_api_server_restart_break_no_invariant(
    cluster, operator, core, custom, namespace, node_pool
):
    sel, _ = node_pool(4)
    rng = random.Random(SEED)
    checker = Invariants(core, custom, namespace)
    checker.start()
    done = threading.Event()
    chaos = {"operator kills": 0, "API server restarts": 0}

    def lifecycle(i: int) -> int:
        name = f"life-{i}"
        time.sleep(max(0.0, t0 + i * STAGGER - time.monotonic()))
        _retry(jobs.create, custom, namespace, jobs.training_job(name, REPLICAS, 8, sel))
        first = _eventually(f"{name} generation 0 Running",
                            lambda: jobs.running_pods(core, namespace, name, REPLICAS, timeout=1),
                            timeout=180)  # fmt: skip
        _retry(cluster_exit, first[0].metadata.name, 137)  # one failure: one restart
        second = _eventually(f"{name} generation 1 Running",
                             lambda: jobs.running_pods(core, namespace, name, REPLICAS, gen=1,
                                                       timeout=1))  # fmt: skip
        for pod in second:
            _retry(cluster_exit, pod.metadata.name, 0)
        st = _eventually(f"{name} Succeeded",
                         lambda: (s := jobs.status(custom, namespace, name)).get("phase")
                         == "Succeeded" and s)  # fmt: skip
        _retry(jobs.delete, custom, namespace, name)
        return int(st.get("restarts", 0))

    def cluster_exit(pod: str, code: int) -> None:
        faults.exit_pod(cluster, namespace, pod, code)

    def monkey() -> None:
        t0 = time.monotonic()
        while not done.wait(rng.uniform(1.0, 4.0)):
            operator.kill()
            chaos["operator kills"] += 1
            time.sleep(rng.uniform(0.0, 1.0))
            if not chaos["API server restarts"] and time.monotonic() - t0 > 6:
                argv = cluster.stop_process("kube-apiserver")
                time.sleep(3.0)
                cluster.start_process("kube-apiserver", argv)
                chaos["API server restarts"] += 1
            operator.start(wait_ready=False)

    chaos_thread = threading.Thread(target=monkey, daemon=True)
    t0 = time.monotonic()
    chaos_thread.start()
    try:
        with ThreadPoolExecutor(AT_ONCE) as pool:
            restarts = list(pool.map(lifecycle, range(LIFECYCLES)))
    finally:
        done.set()
        chaos_thread.join()
        if operator.proc is None or operator.proc.poll() is not None:
            operator.start()
    took = time.monotonic() - t0
    # Every job is gone: so is every pod, within the orphan bound.
    _eventually(
        "every pod gone",
        lambda: (
            not core.list_namespaced_pod(
                namespace, label_selector=f"{labels.MANAGED_BY}={labels.OPERATOR}"
            ).items
        ),
        timeout=ORPHAN_BOUND + 15,
    )
    checker.stop.set()
    checker.join()
    settled(core, namespace)
    print(
        f"chaos: {LIFECYCLES} lifecycles in {took:.0f}s, {chaos['operator kills']} operator "
        f"kills, {chaos['API server restarts']} API server restart, {len(checker.pods_seen)} "
        f"pods seen, {checker.polls} invariant checks, {len(checker.violations)} violations"
    )
    assert checker.violations == []
    assert restarts == [1] * LIFECYCLES  # exactly the one failure each, never lost or doubled
    assert chaos["operator kills"] >= 3 and chaos["API server restarts"] == 1
    twice = [name for (_, name), uids in checker.pods_seen.items() if len(uids) > 1]
    assert twice == []  # no pod of a job and generation created twice (an erased restart)
