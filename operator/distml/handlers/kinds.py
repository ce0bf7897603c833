"""The kinds the operator core reconciles, each as what the core needs of it: where its objects
live, its pure planner and ledger demand, how its status is compared, and what its metrics
count. The core (distml.handlers.operator) is the same for every kind: caches, the
GPU ledger, workers, decide-record-act, expectations, Events, orphans."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Gauge

from distml import admission, metrics, reconcile, servingjob, trainingjob
from distml.api import models, serving
from distml.api.serving import ServingJobStatus
from distml.podstate import parse_time
from distml.reconcile import Plan, Settings, World

Obj = dict[str, Any]


@dataclass(frozen=True)
class Kind:
    kind: str
    plural: str
    plan: Callable[[World, Settings], Plan]
    demand: Callable[[Obj], admission.Gang | None]
    status_changed: Callable[[Obj, Obj], bool]
    phases: tuple[str, ...]  # every phase, for the gauge
    gauge: Gauge  # jobs by phase
    waits: Callable[[Obj], bool]  # whether a job with this status waits for GPUs to free up
    observe: Callable[[Obj, Plan, dt.datetime], None]
    # A starting job's count-only status changes may wait a moment for the next write.
    counts_only: Callable[[Obj, Obj], bool] | None = None
    starting_phase: str = ""

    def path(self, namespace: str, name: str = "") -> str:
        base = f"/apis/{models.GROUP}/{models.VERSION}/namespaces/{namespace}/{self.plural}"
        return f"{base}/{name}" if name else base


def _observe_training(job: Obj, plan: Plan, now: dt.datetime) -> None:
    s = plan.signals
    if s.started_seconds is not None:
        created = parse_time(job["metadata"]["creationTimestamp"])
        assert created is not None  # the API sets it on every object
        metrics.TIME_TO_RUNNING.observe((now - created).total_seconds())
    if s.queue_wait_seconds is not None:
        metrics.QUEUE_WAIT.observe(s.queue_wait_seconds)
    if s.gang_timeout:
        metrics.GANG_TIMEOUTS.inc()
    if s.resized:
        metrics.RESIZES.inc()
    for direction, reason in s.elastic_resizes:
        metrics.ELASTIC_RESIZES.labels(direction=direction, reason=reason).inc()
    if s.refused:
        metrics.CREATES_REFUSED.inc()
    if s.disrupted:
        metrics.RESTARTS_HELD.inc()
    if s.preflight_busbw_gbps is not None:
        meta = job["metadata"]
        metrics.PREFLIGHT_BUSBW.labels(meta["namespace"], meta["name"]).set(s.preflight_busbw_gbps)
    if s.restarted:
        reason = next(
            (c.get("reason", "") for c in plan.status.get("conditions", [])
             if c["type"] == "Restarting"),
            "",
        )  # fmt: skip
        metrics.RESTARTS.labels(reason=reason).inc()


def _observe_serving(job: Obj, plan: Plan, _now: dt.datetime) -> None:
    s = plan.signals
    meta = job["metadata"]
    metrics.SERVING_DESIRED.labels(meta["namespace"], meta["name"]).set(s.desired)
    ready = int(plan.status.get("readyReplicas") or 0)
    metrics.SERVING_READY.labels(meta["namespace"], meta["name"]).set(ready)
    if s.autoscaled:
        metrics.AUTOSCALE_DECISIONS.labels(direction=s.autoscaled).inc()
    if s.replaced:
        metrics.REPLICAS_REPLACED.inc(s.replaced)
    if s.rollout_seconds is not None:
        metrics.ROLLOUT_SECONDS.observe(s.rollout_seconds)


TRAINING = Kind(
    kind=models.KIND,
    plural=models.PLURAL,
    plan=trainingjob.plan_reconcile,
    demand=trainingjob.demand,
    status_changed=trainingjob.status_changed,
    phases=tuple(p.value for p in models.Phase),
    gauge=metrics.JOBS,
    # Queued or restarting gangs, and elastic jobs running smaller until GPUs free up.
    waits=lambda status: (
        status.get("phase") in (models.Phase.QUEUED, models.Phase.RESTARTING)
        or status.get("reason") == "WaitingForCapacity"
    ),
    observe=_observe_training,
    counts_only=trainingjob.only_counts_changed,
    starting_phase=models.Phase.CREATING,
)
SERVING = Kind(
    kind=serving.KIND,
    plural=serving.PLURAL,
    plan=servingjob.plan_reconcile,
    demand=servingjob.demand,
    status_changed=functools.partial(reconcile.status_changed, ServingJobStatus),
    phases=tuple(p.value for p in serving.ServingPhase),
    gauge=metrics.SERVINGJOBS,
    # A replica waits for GPUs in any phase (a rollout waits while Available).
    waits=lambda status: bool(status.get("queuedTime")),
    observe=_observe_serving,
)
KINDS = {k.kind: k for k in (TRAINING, SERVING)}


def serving_replica_states(jobs: list[Obj]) -> dict[str, int]:
    """Replicas by state over every ServingJob, from their statuses."""
    counts = dict.fromkeys(("Starting", "Ready", "NotReady", "Draining"), 0)
    for job in jobs:
        for replica in (job.get("status") or {}).get("replicaStatus") or []:
            state = replica.get("state", "")
            if state in counts:
                counts[state] += 1
    return counts
