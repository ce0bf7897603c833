"""TrainingJob handlers: watch jobs, their pods and the nodes; reconcile each job in its worker."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from distml import labels, metrics, podstate
from distml.api.models import GROUP, PLURAL, VERSION
from distml.handlers.registry import JobWorkers, Key
from distml.kube import AsyncWriter, Kube, WatchExpired
from distml.planning import Plan, Settings, World, iso, plan_reconcile

log = logging.getLogger("distml.trainingjob")
NODES, PODS = "/api/v1/nodes", "/api/v1/pods"
LIVE = "status.phase!=Succeeded,status.phase!=Failed"


class Operator:
    """The state the handlers share: API access, caches of nodes and GPU pods, job workers."""

    def __init__(self, kube: Kube, settings: Settings, threads: int = 16) -> None:
        self.kube = kube
        self.writer = AsyncWriter(kube.api)
        self.settings = settings
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="kube")
        self.workers = JobWorkers(self.reconcile)
        self.nodes: dict[str, dict[str, Any]] = {}
        self.gpu_pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.phases: dict[Key, str] = {}

    async def io(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    # --- caches fed by watch events ----------------------------------------------------------

    def on_node(self, event_type: str, node: dict[str, Any]) -> None:
        name = node["metadata"]["name"]
        before = self.nodes.get(name)
        if event_type == "DELETED":
            self.nodes.pop(name, None)
        else:
            self.nodes[name] = node
        was = before is not None and podstate.node_ready(before)
        now = event_type != "DELETED" and podstate.node_ready(node)
        if was != now:  # a node came or went: queued gangs may fit, running ones may be hit
            self.workers.wake_all()

    def replace_nodes(self, nodes: list[dict[str, Any]]) -> None:
        """A fresh LIST: what it lacks is gone."""
        self.nodes = {n["metadata"]["name"]: n for n in nodes}
        self.workers.wake_all()

    def replace_pods(self, pods: list[dict[str, Any]]) -> None:
        self.gpu_pods = {}
        for pod in pods:
            self.on_pod("ADDED", pod)
        self.workers.wake_all()

    async def relist(self, path: str) -> str:
        """LISTs nodes or live pods into their cache; returns where the watch goes on from."""
        if path == NODES:
            nodes, version = await self.writer.list_objects(NODES)
            self.replace_nodes(nodes)
        else:
            pods, version = await self.writer.list_objects(PODS, fieldSelector=LIVE)
            self.replace_pods(pods)
        return version

    async def prime(self) -> dict[str, str]:
        """Fills both caches; returns where each watch starts."""
        return {path: await self.relist(path) for path in (NODES, PODS)}

    async def follow(self, path: str, resource_version: str) -> None:
        """Keeps a cache current for as long as the operator runs: watch, and LIST again when
        the watch's history has expired or the connection broke."""
        on_event = self.on_node if path == NODES else self.on_pod
        while True:
            try:
                resource_version = await self.writer.watch_objects(path, resource_version, on_event)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                if not isinstance(err, WatchExpired):
                    log.warning("watch of %s broke (%s); listing again", path, err)
                    await asyncio.sleep(1.0)
                try:
                    resource_version = await self.relist(path)
                except asyncio.CancelledError:
                    raise
                except Exception as err2:
                    log.warning("listing %s failed (%s); retrying", path, err2)
                    await asyncio.sleep(1.0)

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
        job = (meta.get("labels") or {}).get(labels.JOB_NAME)
        if job:
            self.workers.wake((meta["namespace"], job))

    # --- reconcile ---------------------------------------------------------------------------

    async def reconcile(self, key: Key) -> float | None:
        try:
            return await self._reconcile(key)
        except Exception:
            metrics.RECONCILE_ERRORS.inc()  # the worker logs it and retries with backoff
            raise

    async def _reconcile(self, key: Key) -> float | None:
        t0 = time.perf_counter()
        ns, name = key
        job = await self.io(self.kube.get_job, ns, name)
        if job is None or job["metadata"].get("deletionTimestamp"):
            self.phases.pop(key, None)
            self.workers.waiting.discard(key)
            self._count_phases()
            return None
        pods = await self.io(self.kube.list_job_pods, ns, name)
        now = dt.datetime.now(dt.UTC)
        world = World(
            job=job,
            pods=pods,
            nodes=list(self.nodes.values()),
            cluster_pods=list(self.gpu_pods.values()),
            now=now,
        )
        plan = plan_reconcile(world, self.settings)
        await self.apply(job, plan, now)
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
        return plan.requeue_after

    async def apply(self, job: dict[str, Any], plan: Plan, now: dt.datetime) -> None:
        meta = job["metadata"]
        key = (meta["namespace"], meta["name"])
        if plan.delete_job:
            log.info("deleting %s/%s: ttlSecondsAfterFinished has passed", *key)
            await self.io(self.kube.delete_job, *key)
            return
        created = await asyncio.gather(*(self.writer.create(o) for o in plan.create))
        metrics.PODS_CREATED.inc(
            sum(
                1 for o, new in zip(plan.create, created, strict=True) if new and o["kind"] == "Pod"
            )
        )
        await asyncio.gather(
            *(self.writer.delete_pod(meta["namespace"], d.name, d.force) for d in plan.delete)
        )
        if plan.status != (job.get("status") or {}):
            await self.io(self.kube.patch_status, *key, plan.status)
            # Events only once the status that they describe is written.
            stamp = iso(now)
            await asyncio.gather(
                *(
                    self.io(self.kube.post_event, job, e.type, e.reason, e.message, stamp)
                    for e in plan.events
                )
            )
        phase = plan.status.get("phase", "")
        self.phases[key] = phase
        if phase == "Queued":
            self.workers.waiting.add(key)
        else:
            self.workers.waiting.discard(key)
        self._count_phases()
        self._observe(job, plan, now)

    def _observe(self, job: dict[str, Any], plan: Plan, now: dt.datetime) -> None:
        if plan.started_seconds is not None:
            created = dt.datetime.fromisoformat(
                job["metadata"]["creationTimestamp"].replace("Z", "+00:00")
            )
            metrics.TIME_TO_RUNNING.observe((now - created).total_seconds())
        if plan.queue_wait_seconds is not None:
            metrics.QUEUE_WAIT.observe(plan.queue_wait_seconds)
        if plan.gang_timeout:
            metrics.GANG_TIMEOUTS.inc()
        if plan.preflight_busbw_gbps is not None:
            meta = job["metadata"]
            metrics.PREFLIGHT_BUSBW.labels(meta["namespace"], meta["name"]).set(
                plan.preflight_busbw_gbps
            )
        if plan.restarted:
            reason = next(
                (
                    c.get("reason", "")
                    for c in plan.status.get("conditions", [])
                    if c["type"] == "Restarting"
                ),
                "",
            )
            metrics.RESTARTS.labels(reason=reason).inc()

    def _count_phases(self) -> None:
        counts: dict[str, int] = {}
        for phase in self.phases.values():
            counts[phase] = counts.get(phase, 0) + 1
        for phase in (
            "Queued",
            "Creating",
            "Running",
            "Restarting",
            "Succeeded",
            "Failed",
            "Suspended",
        ):
            metrics.JOBS.labels(phase=phase).set(counts.get(phase, 0))


def register(op: Operator) -> None:
    """Wires the operator's handlers into kopf's default registry."""

    followers: list[asyncio.Task[None]] = []

    @kopf.on.startup()
    async def warm_caches(**_: Any) -> None:
        # Before any job is reconciled: a node missing from a cold cache would look "gone".
        # Pods and nodes are followed by the operator's own watches, not kopf's: an event costs
        # a JSON parse and a dict update instead of kopf's handler machinery, and the operator
        # sees thousands of them when gangs start.
        versions = await op.prime()
        for path, version in versions.items():
            followers.append(asyncio.create_task(op.follow(path, version), name=f"follow {path}"))

    @kopf.on.event(GROUP, VERSION, PLURAL)
    async def job_event(event: kopf.RawEvent, namespace: str | None, name: str, **_: Any) -> None:
        key = (namespace or "", name)
        if event["type"] == "DELETED":
            await op.workers.forget(key)
            op.phases.pop(key, None)
            op._count_phases()
        else:
            op.workers.ensure(key)

    @kopf.on.cleanup()
    async def stop(**_: Any) -> None:
        for task in followers:
            task.cancel()
        await op.workers.stop()
        await op.writer.close()
        op.pool.shutdown(wait=False, cancel_futures=True)
