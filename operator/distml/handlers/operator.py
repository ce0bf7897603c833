"""The operator core: watch jobs of every kind (TrainingJob, ServingJob: distml.handlers.kinds),
their pods, the nodes and the namespaces; reconcile each job in its worker.

The GPU ledger lives here, as caches the pure admission reads: live GPU pods (from a watch),
and every job's demand (from a LIST at start-up, kopf's job events, and each reconcile's own
decision, assumed at once). A decision and the assumption it makes happen with no await between
them, so two jobs reconciled concurrently never see the same free GPUs.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from typing import Any

import kopf

from distml import admission, failpoints, labels, metrics, podstate
from distml.api.models import GROUP, KIND, VERSION
from distml.api.serving import KIND as SERVING_KIND
from distml.handlers.autoscaler import LoadReader
from distml.handlers.groups import GroupReader
from distml.handlers.kinds import KINDS, Kind, serving_replica_states
from distml.handlers.registry import JobWorkers, Key
from distml.informer import Informer
from distml.kube import BULK, AsyncWriter, NotServed, api_message
from distml.podstate import iso
from distml.policies import disruption, orphans
from distml.reconcile import Plan, Settings, World

log = logging.getLogger("distml.operator")
NODES, PODS, NAMESPACES = "/api/v1/nodes", "/api/v1/pods", "/api/v1/namespaces"
CACHES = (NODES, NAMESPACES, PODS)
JOBS_PATH = f"/apis/{GROUP}/{VERSION}"
# Orphans (pods and Services of a job that is gone) are deleted within a sweep period of the
# job's deletion, whatever the garbage collector does.
SWEEP_SECONDS = 10.0
ORPHAN_GRACE_SECONDS = 3.0
EXPECTATION_SECONDS = 5.0  # how long a reconcile waits for the cache to show its own writes
# A starting gang's count-only status writes (its pods created, bound, ready: progress, not a
# decision) go out one per job per second at most, and all together at most COUNT_WRITES_PER_SECOND
# a second: when many gangs start at once, each shows its progress less often, rather than the
# API server spending on progress the CPU it needs to start the pods (a status write costs it
# about twice a pod create). Phase changes are never held back.
COUNT_WRITE_SECONDS = 1.0
COUNT_WRITES_PER_SECOND = 10.0
NOT_SERVED_SECONDS = 30.0  # how long start-up waits for a kind's CRD to be served


def count_write_interval(starting: int) -> float:
    """How long a starting gang's count-only status write waits after the job's last status
    write, while `starting` gangs (this one among them) are starting."""
    return max(COUNT_WRITE_SECONDS, starting / COUNT_WRITES_PER_SECOND)


def _version(obj: dict[str, Any]) -> int:
    try:
        return int(obj["metadata"].get("resourceVersion") or 0)
    except ValueError:
        return 0


def _cache(cache: dict[str, Any], event_type: str, obj: dict[str, Any]) -> dict[str, Any] | None:
    """Applies a watch event of a cluster-scoped object to `cache` (by name); returns what the
    cache held before."""
    name = obj["metadata"]["name"]
    before = cache.get(name)
    if event_type == "DELETED":
        cache.pop(name, None)
    else:
        cache[name] = obj
    return before


async def _retrying(fn: Any, *args: Any, passes: tuple[type[Exception], ...] = ()) -> Any:
    """`fn(*args)` until it answers, backing off to 2 s; an exception in `passes` is raised."""
    delay = 0.25
    while True:
        try:
            return await fn(*args)
        except asyncio.CancelledError:
            raise
        except passes:
            raise
        except Exception as err:
            log.warning(
                "%s failed (%s); trying again in %.1fs", args[0] if args else fn, err, delay
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


def job_key(namespace: str, name: str, kind: str = KIND) -> Key:
    """A job's worker key (the kind first: kinds share names, never workers)."""
    return (kind, namespace, name)


def kind_of(job: dict[str, Any]) -> str:
    return str(job.get("kind") or KIND)


def _placement(node: dict[str, Any] | None) -> tuple[Any, ...]:
    """What of a node decides which pods it may take."""
    if node is None:
        return ()
    spec = node.get("spec") or {}
    return (
        node["metadata"].get("labels"),
        spec.get("taints"),
        spec.get("unschedulable"),
        podstate.node_gpus(node),
    )


class StatusConflict(Exception):
    """The job changed since it was read: read it again and decide again."""


class Operator:
    """The state the handlers share: API access, caches of nodes, GPU pods, namespaces and job
    demands, and the job workers."""

    def __init__(
        self,
        writer: AsyncWriter,
        settings: Settings,
        namespaces: tuple[str, ...] = (),
        peering: bool = False,
    ) -> None:
        # With kopf peering, a replica that waits gets no job events: only those start workers.
        self.peering = peering
        self.writer = writer
        self.settings = settings
        self.watched = namespaces  # empty: every namespace
        self.workers = JobWorkers(self.reconcile)
        self.nodes: dict[str, dict[str, Any]] = {}
        self.not_ready: set[str] = set()  # the nodes' names that are not Ready
        self.gpu_pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.namespaces: dict[str, dict[str, Any]] = {}
        self.gangs: dict[str, admission.Gang] = {}  # job uid -> its demand on the ledger
        self.jobs: dict[Key, dict[str, Any]] = {}  # the newest version of each job seen
        # The operator's own pods (every phase), by the job they belong to and their name.
        self.job_pods: dict[Key, dict[str, dict[str, Any]]] = {}
        # Per job: pods it created that the cache has not shown yet, pods it deleted that the
        # cache still shows alive, and since when (see _observed).
        self.expected: dict[Key, tuple[frozenset[str], frozenset[str], float]] = {}
        self._gang_versions: dict[str, int] = {}  # job uid -> resourceVersion the demand is from
        self._written_at: dict[Key, float] = {}  # when we last wrote each job's status
        self._uids: dict[Key, str] = {}
        self.phases: dict[Key, str] = {}
        self.disrupted = 0  # NotReady nodes whose pods are held (an outage, not node loss)
        self.held_nodes: dict[str, float | None] = {}  # see disruption.hold
        self.disruption = disruption.Disruption()  # as the nodes are now
        self.primed = False  # every cache filled once (jobs included)
        self.synced: set[str] = set()  # caches whose LIST or WATCH is current
        self.sweep_soon = asyncio.Event()  # a job was deleted: look for its orphans now
        self._resync: asyncio.Task[None] | None = None
        self._informers: dict[str, Informer] = {}
        self.refusals: dict[Key, tuple[int, list[str]]] = {}  # (restart generation, messages)
        self.kinds: dict[str, Kind] = dict(KINDS)
        self._gang_kinds: dict[str, str] = {}  # job uid -> its kind
        self.loads = LoadReader(self)  # autoscaled ServingJobs' load, read from their replicas
        self.groups = GroupReader(self)  # elastic TrainingJobs' groups, read from their pods

    # --- caches fed by watch events ----------------------------------------------------------

    def on_node(self, event_type: str, node: dict[str, Any]) -> None:
        before = _cache(self.nodes, event_type, node)
        was = before is not None and podstate.node_ready(before)
        now = event_type != "DELETED" and podstate.node_ready(node)
        if now or event_type == "DELETED":
            self.not_ready.discard(node["metadata"]["name"])
        else:
            self.not_ready.add(node["metadata"]["name"])
        if was != now:  # a node came or went: queued gangs may fit, running ones may be hit
            self._note_disruption()
            self.workers.wake_all()
        elif now and _placement(before) != _placement(node):
            # Its taints, labels, GPUs or cordon changed (the not-ready taint lifted after the
            # node turned Ready): which gangs it can take changed.
            self.workers.wake_waiting()

    def _note_disruption(self) -> None:
        found = self.disruption = disruption.find(self.nodes.values())
        self.held_nodes = disruption.hold(
            self.held_nodes, found, self.nodes.values(), time.monotonic()
        )
        if len(self.held_nodes) != self.disrupted:
            self.disrupted = len(self.held_nodes)
            metrics.NODES_DISRUPTED.set(self.disrupted)
            if found:
                log.warning("%s", found.message)

    def on_namespace(self, event_type: str, ns: dict[str, Any]) -> None:
        before = _cache(self.namespaces, event_type, ns)
        if before is not None and (before["metadata"].get("labels") or {}) != (
            ns["metadata"].get("labels") or {}
        ):  # its Pod Security level may have changed
            self.workers.wake_waiting()

    def on_pod(self, event_type: str, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        key = (meta["namespace"], meta["name"])
        gpu = podstate.gpu_request(pod) > 0
        if event_type == "DELETED" or podstate.is_terminal(pod) or not gpu:
            freed = self.gpu_pods.pop(key, None) is not None
            if freed:
                self.workers.wake_waiting()
        else:
            self.gpu_pods[key] = pod
        pod_labels = meta.get("labels") or {}
        job = pod_labels.get(labels.JOB_NAME)
        if job:
            job_key = (pod_labels.get(labels.OWNER_KIND, KIND), meta["namespace"], job)
            if pod_labels.get(labels.MANAGED_BY) == labels.OPERATOR:
                ours = self.job_pods.setdefault(job_key, {})
                if event_type == "DELETED":
                    ours.pop(meta["name"], None)
                else:
                    ours[meta["name"]] = pod
            self.workers.wake(job_key)

    def on_job(self, job: dict[str, Any], deleted: bool = False) -> None:
        """A job as the API has it now. A version no newer than the one a demand was recorded
        from is not allowed to take back a decision made since: an event that lags what this
        operator wrote, or the very version a decision was made from, met again (a LIST, or
        kopf's event, while the decision's status write is still on its way) and saying
        nothing of the decision (the two gangs admitted into one node's GPUs that follow)."""
        meta = job["metadata"]
        uid = meta.get("uid", "")
        kind = kind_of(job)
        key = job_key(meta.get("namespace", ""), meta["name"], kind)
        if deleted:
            self._drop_gang(uid)
            self._uids.pop(key, None)
            if (self.jobs.get(key) or {}).get("metadata", {}).get("uid") == uid:
                self.jobs.pop(key, None)
            self.sweep_soon.set()
            return
        version = _version(job)
        recorded = self._gang_versions.get(uid, 0)
        if version and version < recorded:
            return
        cached = self.jobs.get(key)
        if cached is None or cached["metadata"].get("uid") != uid or _version(cached) <= version:
            self.jobs[key] = job
        if version and version == recorded:
            return
        self._replaced(key, uid)
        self._gang_kinds[uid] = kind
        self._set_gang(uid, self.kinds[kind].demand(job), version)

    def _replaced(self, key: Key, uid: str) -> None:
        """`uid` is the job named `key` now: one that had the name before is gone (its DELETED
        event may never come, as when it fell into a broken watch), and so is its demand."""
        before = self._uids.get(key)
        if before and before != uid:
            self._drop_gang(before)
        self._uids[key] = uid

    def _set_gang(self, uid: str, gang: admission.Gang | None, version: int) -> None:
        before = self.gangs.get(uid)
        if gang is None:
            self.gangs.pop(uid, None)
        else:
            self.gangs[uid] = gang
        self._gang_versions[uid] = version
        if (
            before is not None
            and before.admitted is not None
            and (gang is None or not gang.admitted)
        ):
            self.workers.wake_waiting()  # a reservation was released

    def _drop_gang(self, uid: str) -> None:
        self._set_gang(uid, None, 0)
        self._gang_versions.pop(uid, None)
        self._gang_kinds.pop(uid, None)

    def replace(self, path: str, items: list[dict[str, Any]]) -> None:
        """A fresh LIST: what it lacks is gone."""
        if path == NODES:
            self.nodes = {n["metadata"]["name"]: n for n in items}
            self.not_ready = {n for n, node in self.nodes.items() if not podstate.node_ready(node)}
            self._note_disruption()
        elif path == NAMESPACES:
            self.namespaces = {n["metadata"]["name"]: n for n in items}
        else:
            self.gpu_pods, self.job_pods = {}, {}
            for pod in items:
                self.on_pod("ADDED", pod)
        self.workers.wake_all()

    def informer(self, path: str) -> Informer:
        """The watch that keeps one cache current: nodes, namespaces or pods (every phase: the
        operator's own finished pods are evidence). A LIST replaces the cache; after a broken
        watch the cache reads as not synced (readiness) until the LIST that follows, and once
        the nodes are listed again after an outage the jobs are too, at once, rather than when
        kopf's own watch is through its backoff (seconds later, after a long outage)."""
        if path not in self._informers:
            on_event = {NODES: self.on_node, NAMESPACES: self.on_namespace}.get(path, self.on_pod)

            def listed(items: list[dict[str, Any]]) -> None:
                self.replace(path, items)
                self.synced.add(path)

            self._informers[path] = Informer(
                self.writer,
                path,
                on_list=listed,
                on_event=on_event,
                on_broken=lambda _err: self.synced.discard(path),
                on_recovered=self._resync_after_outage if path == NODES else None,
            )
        return self._informers[path]

    def _resync_after_outage(self) -> None:
        if self._resync is None or self._resync.done():
            self._resync = asyncio.create_task(self.resync_jobs())

    async def prime(self) -> dict[str, str]:
        """Fills every cache (jobs too, so no job is admitted before another's admission is
        known); returns where each watch starts. An API server that is down or still starting
        is asked again within a second or two, for as long as it takes."""
        versions = {}
        for path in CACHES:
            versions[path] = await _retrying(self.informer(path).list)
        for kind in self.kinds.values():
            for path in self._scopes(JOBS_PATH, kind.plural):
                items = await self._list_kind(kind, path)
                for job in items:
                    self.on_job({**job, "kind": kind.kind})
        self.primed = True
        return versions

    async def _list_kind(self, kind: Kind, path: str) -> list[dict[str, Any]]:
        """A kind's jobs at start-up, asked again while the API server is starting; a kind
        whose CRD is not installed (a chart upgraded without its CRDs) is none, said loudly,
        rather than an operator that never gets ready for the kinds that are."""
        deadline = time.monotonic() + NOT_SERVED_SECONDS
        while True:
            try:
                items, _ = await _retrying(self.writer.list_objects, path, passes=(NotServed,))
                return list(items)
            except NotServed:
                if time.monotonic() > deadline:
                    log.error("%s is not served: its CRD is not installed (kubectl apply "
                              "--server-side -f crds/); no %s is reconciled until it is",
                              path, kind.kind)  # fmt: skip
                    return []
                await asyncio.sleep(1.0)

    def ready(self) -> tuple[bool, str]:
        """Whether the caches are warm and every watch is current (the readiness probe)."""
        if not self.primed:
            return False, "warming up: the caches are not filled yet (is the API server up?)"
        stale = [p for p in CACHES if p not in self.synced]
        if stale:
            return False, f"re-listing after a broken watch: {', '.join(stale)}"
        return True, "caches synced"

    async def follow(self, path: str, resource_version: str) -> None:
        """Keeps a cache current for as long as the operator runs."""
        await self.informer(path).run(resource_version)

    async def resync_jobs(self, attempts: int = 30) -> None:
        """LISTs the jobs into the cache and reconciles every one (what kopf's watch would
        bring), asking again while a starting API server refuses (429, 403)."""
        for attempt in range(attempts):
            try:
                await self._list_jobs(wake_all=True)
                return
            except Exception as err:
                if attempt == attempts - 1:
                    log.warning("re-listing jobs after an outage failed (%s)", err)
                await asyncio.sleep(1.0)

    async def _list_jobs(self, wake_all: bool) -> set[str]:
        """LISTs every job into the cache; a job with no worker yet (its event lost in a broken
        watch) gets one, unless under peering (a waiting replica must not act), and with
        `wake_all` every job with a worker is reconciled. Returns the UIDs of the jobs not
        being deleted."""
        live: set[str] = set()
        for kind in self.kinds.values():
            for path in self._scopes(JOBS_PATH, kind.plural):
                try:
                    items, listed = await self.writer.list_objects(path)
                except NotServed:
                    continue  # said at start-up; the other kinds are swept all the same
                for job in items:
                    meta = job["metadata"]
                    key = job_key(meta["namespace"], meta["name"], kind.kind)
                    self.on_job({**job, "kind": kind.kind})
                    if self.workers.has(key):
                        if wake_all:
                            self.workers.wake(key)
                    elif not self.peering:  # its event was lost in a broken watch
                        self.workers.ensure(key)
                    if not meta.get("deletionTimestamp"):
                        live.add(meta["uid"])
                listed_uids = {j["metadata"]["uid"] for j in items}
                self._forget_missing(listed_uids, int(listed or 0), path, kind.kind)
        return live

    def _scopes(self, api: str, resource: str) -> list[str]:
        return [f"{api}/namespaces/{ns}/{resource}" for ns in self.watched] or [f"{api}/{resource}"]

    async def sweep_orphans(self) -> int:
        """Deletes pods and Services made for a job (of any kind) that no longer exists (see
        distml.policies.orphans); returns how many."""
        managed = {"labelSelector": f"{labels.MANAGED_BY}={labels.OPERATOR}"}
        # Pods from the cache (the watch saw each before now); Services, few and small, listed.
        # Only in the namespaces this operator owns: another operator's jobs are not in its LIST.
        objects = [
            ("Pod", p)
            for (_, ns, _), pods in self.job_pods.items()
            if not self.watched or ns in self.watched
            for p in pods.values()
        ]
        for path in self._scopes("/api/v1", "services"):
            items, _ = await self.writer.list_objects(path, managed)
            objects += [("Service", o) for o in items]
        # After the objects (see orphans.find). The LIST doubles as a resync: a job whose
        # event a broken watch lost is reconciled within one period.
        live = await self._list_jobs(wake_all=False)
        found = [
            o
            for job_kind in self.kinds
            for kind in ("Pod", "Service")
            for o in orphans.find((x for k, x in objects if k == kind), job_kind, live, kind)
            if not self.terminating(o.namespace)
        ]
        for o in found:
            resource = "pods" if o.kind == "Pod" else "services"
            path = f"/api/v1/namespaces/{o.namespace}/{resource}/{o.name}"
            code, answer = await self.writer.request(
                "DELETE", path, {"preconditions": {"uid": o.uid}}
            )
            if code < 300 or code in (404, 409):  # gone already, or replaced by a new one
                log.warning("deleted orphan %s %s/%s: its job (uid %s) is gone",
                            o.kind, o.namespace, o.name, o.owner_uid)  # fmt: skip
                metrics.ORPHANS_DELETED.labels(kind=o.kind).inc()
            else:
                log.warning("could not delete orphan %s %s/%s: %s %s", o.kind, o.namespace,
                            o.name, code, answer.get("message"))  # fmt: skip
        return len(found)

    def _forget_missing(self, listed: set[str], version: int, path: str, kind: str) -> None:
        """Drops the demand of every job a LIST at `version` no longer has, when the demand was
        recorded before it (a job created since is not in the list, yet alive)."""
        scope = path.split("/namespaces/")[1].split("/")[0] if "/namespaces/" in path else None
        for uid, gang in list(self.gangs.items()):
            if (scope is not None and gang.namespace != scope) or self._gang_kinds.get(
                uid, KIND
            ) != kind:
                continue
            if uid not in listed and self._gang_versions.get(uid, 0) <= version:
                log.warning("forgetting %s: its %s is gone", gang.title, kind)
                self._drop_gang(uid)
                key = job_key(gang.namespace, gang.name, kind)
                if (self.jobs.get(key) or {}).get("metadata", {}).get("uid") == uid:
                    self.jobs.pop(key, None)  # its worker asks the API next, and stops
                    self.workers.wake(key)

    async def sweep_forever(self, period: float) -> None:
        """A sweep at once (the garbage collector had all the time the operator was away),
        then every `period`, and ORPHAN_GRACE_SECONDS after any job is deleted (the garbage
        collector goes first; a burst of deletions is one sweep)."""
        first = True
        while True:
            if not first:
                soon = asyncio.create_task(self.sweep_soon.wait())
                done, _ = await asyncio.wait({soon}, timeout=period)
                soon.cancel()
                if done:
                    await asyncio.sleep(ORPHAN_GRACE_SECONDS)
            first = False
            self.sweep_soon.clear()
            try:
                await self.sweep_orphans()
            except asyncio.CancelledError:
                raise
            except Exception as err:
                log.warning("orphan sweep failed (%s); next in %.0fs", err, period)

    async def _namespace_going(self, namespace: str) -> bool:
        """Asks the API (the namespace watch may lag the pods vanishing with it)."""
        code, ns = await self.writer.request("GET", f"{NAMESPACES}/{namespace}")
        if code < 300 and ns.get("metadata"):
            self.namespaces[namespace] = ns
        return code == 404 or self.terminating(namespace)

    def terminating(self, namespace: str) -> bool:
        ns = self.namespaces.get(namespace) or {}
        return bool(ns.get("metadata", {}).get("deletionTimestamp")) or (
            (ns.get("status") or {}).get("phase") == "Terminating"
        )

    # --- reconcile ---------------------------------------------------------------------------

    async def reconcile(self, key: Key) -> float | None:
        try:
            return await self._reconcile(key)
        except StatusConflict:
            return 0.1  # decide again on what the job is now
        except Exception:
            metrics.RECONCILE_ERRORS.inc()  # the worker logs it and retries with backoff
            raise

    async def _reconcile(self, key: Key) -> float | None:
        t0 = time.perf_counter()
        kind_name, ns, name = key
        kind = self.kinds[kind_name]
        if self.terminating(ns):
            # Its pods vanish with it: no restarts, no creates, nothing to retry.
            return None
        # What the API refused of this generation's creates, carried until a plan has seen it.
        generation, refused = self.refusals.pop(key, (-1, []))
        requeue: float | None = None
        for _ in range(2):  # a second pass when the API refused a create: release the gang
            job = self.jobs.get(key)
            if job is None:  # not seen yet (or forgotten): ask
                job = await self.writer.get_job(ns, name, kind.plural)
                if job is not None:
                    job = {**job, "kind": kind.kind}
                    self.on_job(job)
            if job is None or job["metadata"].get("deletionTimestamp"):
                self.forget_job(key)
                return None
            current = int((job.get("status") or {}).get("restartGeneration") or 0)
            if refused and generation != current:
                refused = []  # about a generation that has been replaced since
            if not self._observed(key):
                if refused:
                    self.refusals[key] = (current, refused)
                return 0.25  # its own creates and deletes are not in the cache yet
            generation = current
            pods = list(self.job_pods.get(key, {}).values())
            now, t_now = dt.datetime.now(dt.UTC), time.monotonic()
            uid = job["metadata"]["uid"]
            world = World(
                job=job,
                pods=pods,
                nodes=list(self.nodes.values()),
                cluster_pods=list(self.gpu_pods.values()),
                now=now,
                gangs=[g for u, g in self.gangs.items() if u != uid],
                namespace=self.namespaces.get(ns),
                refused=refused,
                held_nodes=frozenset(
                    n for n, until in self.held_nodes.items() if until is None or until > t_now
                ),
                disruption=self.disruption,
                not_ready=frozenset(self.not_ready),
                node_map=dict(self.nodes),
                load=self.loads.readings(key),
            )
            world.members, world.members_at = self.groups.readings(key)
            plan = kind.plan(world, self.settings)
            # The decision is assumed in the ledger before anything awaits (see the docstring).
            self._replaced(key, uid)
            self._set_gang(uid, kind.demand({**job, "status": plan.status}), _version(job))
            refused = await self.apply(job, plan, now)
            requeue = plan.requeue_after
            if not refused:
                break
            log.warning("%s/%s: the API refused %d objects: %s", ns, name, len(refused), refused[0])
        else:
            self.refusals[key] = (generation, refused)  # for the next reconcile
        took = time.perf_counter() - t0
        metrics.RECONCILE_SECONDS.observe(took)
        log.debug(
            "reconciled %s/%s in %.3fs: %d created, %d deleted, phase %s",
            ns,
            name,
            took,
            len(plan.create),
            len(plan.delete),
            plan.status.get("phase"),
        )
        return 0.5 if refused else requeue

    def _observed(self, key: Key) -> bool:
        """Whether the pod cache shows what this job's last apply did (its creates there, its
        deletes going), as a controller's expectations: deciding on a cache that lags its own
        writes would create the same pods again. Given up on after a few seconds (an event lost
        to a broken watch is made good by the LIST that follows)."""
        expected = self.expected.get(key)
        if expected is None:
            return True
        created, deleted, since = expected
        pods = self.job_pods.get(key, {})
        pending = [n for n in created if n not in pods] + [
            n for n in deleted if n in pods and not pods[n]["metadata"].get("deletionTimestamp")
        ]
        if pending and time.monotonic() - since < EXPECTATION_SECONDS:
            return False
        self.expected.pop(key, None)
        return True

    def forget_job(self, key: Key) -> None:
        uid = self._uids.pop(key, None)
        if uid:
            self._drop_gang(uid)
        self.jobs.pop(key, None)
        self.expected.pop(key, None)
        self.refusals.pop(key, None)
        self._written_at.pop(key, None)
        self.phases.pop(key, None)
        self.workers.waiting.discard(key)
        self.loads.forget(key)
        self.groups.forget(key)
        if key[0] == SERVING_KIND:
            for gauge in (metrics.SERVING_DESIRED, metrics.SERVING_READY):
                with contextlib.suppress(KeyError):
                    gauge.remove(key[1], key[2])
        self._count_phases()

    async def write_status(self, job: dict[str, Any], status: dict[str, Any]) -> None:
        """A merge patch of the status that carries the resourceVersion it was decided from: a
        job changed since (by a user, or by another operator) is a conflict, never overwritten."""
        meta = job["metadata"]
        kind = self.kinds[kind_of(job)]
        key = job_key(meta["namespace"], meta["name"], kind.kind)
        path = f"{kind.path(meta['namespace'], meta['name'])}/status"
        body = {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": status}
        code, answer = await self.writer.request("PATCH", path, body)
        if code == 404:  # deleted under the cached copy: the next reconcile finds it gone
            self.jobs.pop(key, None)
            raise StatusConflict(meta["name"])
        if code == 409:
            fresh = await self.writer.get_job(meta["namespace"], meta["name"], kind.plural)
            if fresh is not None:
                self._gang_versions.pop(meta["uid"], None)
                self.on_job({**fresh, "kind": kind.kind})
            raise StatusConflict(meta["name"])
        if code >= 300:
            raise RuntimeError(f"writing the status of {meta['name']}: {code} {answer}")
        self._gang_versions[meta["uid"]] = _version(answer)
        self.jobs[key] = {**answer, "kind": kind.kind}
        self._written_at[key] = time.monotonic()

    async def post_event(self, job: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """Best effort: an Event the API refuses is logged and counted, and never stops the
        reconcile that it describes."""
        meta = job["metadata"]
        now = iso(dt.datetime.now(dt.UTC))
        body = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": kind_of(job),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "source": {"component": labels.OPERATOR},
            "reportingComponent": labels.OPERATOR,
            "reportingInstance": labels.OPERATOR,
        }
        try:
            code, answer = await self.writer.request(
                "POST", f"/api/v1/namespaces/{meta['namespace']}/events", body, level=BULK
            )
            if code >= 300:
                raise RuntimeError(f"{code} {api_message(str(answer.get('message', answer)))}")
        except Exception as err:
            metrics.EVENTS_FAILED.inc()
            log.warning("event %s for %s/%s not posted: %s", reason, meta["namespace"],
                        meta["name"], err)  # fmt: skip

    async def _post_events(self, job: dict[str, Any], events: list[Any]) -> None:
        """One after another, so that they are listed in the order they were decided in."""
        for e in events:
            await self.post_event(job, e.type, e.reason, e.message)

    async def apply(self, job: dict[str, Any], plan: Plan, now: dt.datetime) -> list[str]:
        """Record, then act: the new status first, then the creates and deletes it decided, and
        its Events. Returns what the API refused to create."""
        meta = job["metadata"]
        kind = self.kinds[kind_of(job)]
        key = job_key(meta["namespace"], meta["name"], kind.kind)
        if plan.delete_job:
            log.info("deleting %s/%s: ttlSecondsAfterFinished has passed", *key[1:])
            await self.writer.delete_job(*key[1:], kind.plural)
            return []
        if getattr(plan.signals, "restarted", False) and await self._namespace_going(
            meta["namespace"]
        ):
            return []  # its pods vanish with the namespace: that is no failure to restart for
        changed = kind.status_changed(job, plan.status)
        acts = bool(plan.create or plan.delete or plan.patch or plan.events)
        since = time.monotonic() - self._written_at.get(key, 0.0)
        interval = count_write_interval(
            sum(p == kind.starting_phase for (k, _, _), p in self.phases.items() if k == kind.kind)
        )
        if (
            changed
            and not acts
            and kind.counts_only is not None
            and plan.status.get("phase") == kind.starting_phase
            and since < interval
            and kind.counts_only(job, plan.status)
        ):
            # A gang starting, its counts alone changed: they go out with the next write, at
            # most `interval` from the last (every pod of a big gang moves them a few times).
            wait = interval - since
            plan.requeue_after = min(plan.requeue_after or wait, wait)
            changed = False
        elif changed or plan.create or plan.delete or plan.patch:
            # Unchanged, the write is a compare-and-swap on the resourceVersion: pods are only
            # created or deleted for the job as it is now, never for a cached copy gone stale.
            await self.write_status(job, plan.status)
            if changed:
                failpoints.hit("after-status-write", str(plan.status.get("phase", "")))
        results = await asyncio.gather(
            *(self.writer.create(o) for o in plan.create),
            *(self.writer.delete_pod(meta["namespace"], d.name, d.force) for d in plan.delete),
            *(self._patch_pod(meta["namespace"], x) for x in plan.patch),
            self._post_events(job, plan.events if changed else []),
        )
        created = results[: len(plan.create)]
        metrics.PODS_CREATED.inc(
            sum(
                1
                for o, r in zip(plan.create, created, strict=True)
                if r is True and o["kind"] == "Pod"
            )
        )
        refused = [r for r in created if isinstance(r, str)]
        made = frozenset(
            o["metadata"]["name"]
            for o, r in zip(plan.create, created, strict=True)
            if o["kind"] == "Pod" and isinstance(r, bool)
        )
        if made or plan.delete:
            self.expected[key] = (made, frozenset(d.name for d in plan.delete), time.monotonic())
        self.phases[key] = plan.status.get("phase") or ""
        if kind.waits(plan.status):
            self.workers.waiting.add(key)
        else:
            self.workers.waiting.discard(key)
        self._count_phases()
        kind.observe(job, plan, now)
        return refused

    async def _patch_pod(self, namespace: str, patch: Any) -> None:
        """A merge patch of a pod's labels and annotations; a pod gone already is no error."""
        body = {"metadata": {"labels": patch.labels, "annotations": patch.annotations}}
        path = f"/api/v1/namespaces/{namespace}/pods/{patch.name}"
        code, answer = await self.writer.request("PATCH", path, body)
        if code >= 300 and code != 404:
            raise RuntimeError(f"patching pod {patch.name}: {code} {answer.get('message')}")

    def _count_phases(self) -> None:
        for kind in self.kinds.values():
            counts = dict.fromkeys(kind.phases, 0)
            for (k, _, _), phase in self.phases.items():
                if k == kind.kind and phase in counts:
                    counts[phase] += 1
            for phase, n in counts.items():
                kind.gauge.labels(phase=phase).set(n)
        serving = [j for (k, _, _), j in self.jobs.items() if k != KIND]
        for state, n in serving_replica_states(serving).items():
            metrics.SERVING_REPLICAS.labels(state=state).set(n)
        metrics.GPUS_RESERVED.set(
            sum(g.replicas * g.gpus_per_replica for g in self.gangs.values() if g.admitted)
        )


def register(op: Operator) -> None:
    """Wires the operator's handlers into kopf's default registry."""

    followers: list[asyncio.Task[None]] = []

    @kopf.on.startup()
    async def warm_caches(**_: Any) -> None:
        # Before any job is reconciled: a node missing from a cold cache would look "gone", and
        # a job whose admission is not known yet would look like free GPUs.
        # Pods and nodes are followed by the operator's own watches, not kopf's: an event costs
        # a JSON parse and a dict update instead of kopf's handler machinery, and the operator
        # sees thousands of them when gangs start.
        versions = await op.prime()
        for path, version in versions.items():
            followers.append(asyncio.create_task(op.follow(path, version), name=f"follow {path}"))
        followers.append(asyncio.create_task(op.sweep_forever(SWEEP_SECONDS), name="orphans"))
        followers.append(asyncio.create_task(op.loads.run_forever(), name="serving load"))
        followers.append(asyncio.create_task(op.groups.run_forever(), name="training groups"))

    for kind in op.kinds.values():
        kopf.on.event(GROUP, VERSION, kind.plural, id=f"{kind.plural}-events")(
            _job_events(op, kind.kind)
        )

    @kopf.on.cleanup()
    async def stop(**_: Any) -> None:
        for task in followers:
            task.cancel()
        await op.workers.stop()
        await op.writer.close()


def _job_events(op: Operator, kind: str) -> Any:
    async def job_event(event: kopf.RawEvent, namespace: str | None, name: str, **_: Any) -> None:
        key = job_key(namespace or "", name, kind)
        body = {**dict(event["object"]), "kind": kind}
        if event["type"] == "DELETED":
            op.on_job(body, deleted=True)
            await op.workers.forget(key)
            op.phases.pop(key, None)
            op._count_phases()
        else:
            # The echo of its own status write wakes the job too: a reconcile goes on from the
            # state it recorded (a finished job's TTL, a restart's backoff) on that wake.
            op.on_job(body)
            op.workers.ensure(key)

    return job_event
