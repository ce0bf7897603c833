"""A ServingJob's reconcile, decided: which replicas to create (and where, from the GPU ledger
TrainingJobs share), which to take out of the Service, which to stop, and the status.

Pure: the world in, a plan out. The rolling update, counted in replicas:
- At most `replicas + maxSurge` replicas hold GPUs at once; a draining replica still counts
  (it holds its GPUs until it stops).
- A replica of the update revision is created while there is room for it under that bound and
  GPUs for it on the ledger.
- An old replica leaves the Service when a Ready replica can take its place: while there are
  more serving replicas than `replicas`, and Ready ones never fall below
  `replicas - maxUnavailable`. When a surge replica gets no GPUs (or maxSurge is 0), old
  replicas are replaced in place instead, as many at a time as maxUnavailable allows.
- Leaving the Service is a label change, recorded on the pod with its time; the pod is deleted
  `drainSeconds` later, once the requests on their way to it are answered.
- A replica whose pod failed (its server died, its liveness probe failed) is deleted and
  replaced; status and an Event say which and why.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from distml import admission, labels, podpolicy, podstate
from distml.api.models import Condition
from distml.api.serving import (
    AutoscalingStatus,
    ReplicaStatus,
    ServingAdmission,
    ServingJobSpec,
    ServingJobStatus,
    ServingPhase,
)
from distml.conditions import set_condition
from distml.podstate import iso, parse_time
from distml.reconcile import Event, Plan, PodDeletion, PodPatch, Settings, World
from distml.servingjob import autoscale, rendering
from distml.servingjob.demand import gang

Obj = dict[str, Any]
REFUSED_RETRY_SECONDS = 10.0
STARTING_RECHECK_SECONDS = 15.0


@dataclass(frozen=True)
class Signals:
    """What happened, for the metrics."""

    replaced: int = 0  # failed replicas deleted to be replaced
    rollout_seconds: float | None = None  # a rollout completed, after this long
    desired: int = 0  # the replicas it asks for
    autoscaled: str = ""  # the autoscaler moved the count: up or down


@dataclass
class Replicas:
    """The job's pods, sorted by what they are to the rollout."""

    new: list[Obj] = field(default_factory=list)  # serving, of the update revision
    old: list[Obj] = field(default_factory=list)  # serving, of another revision
    draining: list[Obj] = field(default_factory=list)  # out of the Service, not deleted yet
    failed: list[Obj] = field(default_factory=list)  # finished (a server never exits on its own)

    @property
    def serving(self) -> list[Obj]:
        return [*self.new, *self.old]


def _name(pod: Obj) -> str:
    return str(pod["metadata"]["name"])


def _draining(pod: Obj) -> bool:
    return (pod["metadata"].get("labels") or {}).get(labels.SERVING) == "false"


def _revision(pod: Obj) -> str:
    return (pod["metadata"].get("labels") or {}).get(labels.REVISION, "")


def sort_replicas(pods: list[Obj], rev: str) -> Replicas:
    r = Replicas()
    for pod in sorted(pods, key=_name):
        if podstate.is_deleting(pod):
            continue  # going: its GPUs are the ledger's to count until it is gone
        if podstate.is_terminal(pod):
            r.failed.append(pod)
        elif _draining(pod):
            r.draining.append(pod)
        elif _revision(pod) == rev:
            r.new.append(pod)
        else:
            r.old.append(pod)
    return r


def _of_revision(pod: str, job: str, rev: str) -> bool:
    return pod.startswith(f"{job}-{rev}-")


def _free_names(job: str, rev: str, taken: set[str], count: int) -> list[str]:
    names: list[str] = []
    index = 0
    while len(names) < count:
        name = rendering.pod_name(job, rev, index)
        if name not in taken:
            names.append(name)
        index += 1
    return names


def _place(
    world: World, settings: Settings, spec: ServingJobSpec, count: int, queued: str | None
) -> tuple[list[str], admission.Verdict | None]:
    """Nodes for up to `count` new replicas, the most the ledger (and the queue order it keeps
    with every TrainingJob) lets start now; with the verdict that stopped it at fewer."""
    base = dataclasses.replace(gang(world.job), waiting_since=parse_time(queued))
    last: admission.Verdict | None = None
    for k in range(count, 0, -1):
        mine = dataclasses.replace(base, replicas=k)
        verdict = admission.plan_queue(
            [*world.gangs, mine],
            world.nodes,
            world.cluster_pods,
            world.now,
            settings.backfill_seconds,
            until=mine.uid,
        )[mine.uid]
        if verdict.admitted:
            return list(verdict.nodes), last
        last = last or verdict
    return [], last


def _state(pod: Obj, before: str) -> str:
    """Its state now; `before`, what the last status said (a replica that was Ready and is not
    now has a failing readiness probe: a hung or dying server)."""
    if podstate.is_terminal(pod):
        return "Failed"
    if _draining(pod):
        return "Draining"
    if podstate.is_ready(pod):
        return "Ready"
    return "NotReady" if before in ("Ready", "NotReady") else "Starting"


def _why_failed(pod: Obj) -> str:
    code = podstate.exit_code(pod)
    why = podstate.failure_reason(pod)
    said = f"exit code {code}" if code is not None else "no exit code"
    return f"{said}{f' ({why})' if why else ''}"


def plan_reconcile(world: World, settings: Settings | None = None) -> Plan:
    settings = settings or Settings()
    job, now = world.job, world.now
    stamp = iso(now)
    meta = job["metadata"]
    spec = ServingJobSpec.model_validate(job.get("spec") or {})
    status = ServingJobStatus.model_validate(job.get("status") or {})
    rev = rendering.revision(spec)
    events: list[Event] = []
    want, autoscaled = _autoscale(world, spec, status, stamp, events)
    surge, unavailable = spec.rollout.max_surge, spec.rollout.max_unavailable
    min_ready = max(want - unavailable, 0)
    r = sort_replicas(world.pods, rev)
    plan = Plan(signals=Signals(autoscaled=autoscaled))
    taken = {_name(p) for p in world.pods}
    replaced = 0
    reason, message = "", ""

    # A new revision: the rollout starts.
    rolling_from = status.update_revision
    if status.update_revision != rev:
        if status.update_revision:
            events.append(
                Event(
                    "Normal", "RolloutStarted", f"revision {rev} replaces {status.update_revision}"
                )
            )
        status.rollout_start_time = stamp if status.update_revision else None
        status.update_revision = rev
    # Pods the last admission created are in the cache: their reservation is over. Those not
    # seen yet are created (again: a create of one that exists is a no-op), unless the revision
    # they were for has been replaced since.
    adm = status.admission
    if adm and (
        set(adm.pods) <= taken or not all(_of_revision(n, meta["name"], rev) for n in adm.pods)
    ):
        status.admission = adm = None
    resumed: list[str] = []
    if adm:
        where = adm.nodes or [""] * len(adm.pods)
        for slot, (name, node) in enumerate(zip(adm.pods, where, strict=False)):
            if name not in taken:
                resumed.append(name)
                plan.create.append(
                    rendering.render_pod(
                        meta, spec, rev, name, adm.batch, slot, node, settings.runtime_image
                    )
                )

    # Failed replicas: deleted, and replaced below like any missing one.
    for pod in r.failed:
        plan.delete.append(PodDeletion(_name(pod)))
        replaced += 1
        events.append(
            Event(
                "Warning",
                "ReplicaFailed",
                f"replica {_name(pod)} failed on {podstate.node_name(pod) or 'no node'}:"
                f" {_why_failed(pod)}; replacing it",
            )
        )
        reason, message = "ReplicaFailed", f"replica {_name(pod)} failed ({_why_failed(pod)})"
    # Drained replicas: stopped once their drain is over.
    drain_wait: float | None = None
    for pod in r.draining:
        started = parse_time((pod["metadata"].get("annotations") or {}).get(labels.DRAIN_STARTED))
        left = spec.rollout.drain_seconds - (now - (started or now)).total_seconds()
        if left <= 0:
            plan.delete.append(PodDeletion(_name(pod)))
            events.append(
                Event("Normal", "ReplicaStopped", f"replica {_name(pod)} stopped after draining")
            )
        else:
            drain_wait = left if drain_wait is None else min(drain_wait, left)

    # What the API refused last time (a Service of that name that is not ours, a quota, an
    # admission webhook) is tried again, every REFUSED_RETRY_SECONDS, and said until it goes.
    refused_pod = any(m.startswith("Pod ") for m in world.refused)
    if world.refused:
        reason = "CreateRefused"
        message = f"the API refused: {world.refused[0]}"
        if refused_pod:
            status.admission = None  # its reservation goes with it
        plan.requeue_after = REFUSED_RETRY_SECONDS

    # Creates: replicas of the update revision, within the surge bound and the ledger.
    level = podpolicy.namespace_level(world.namespace, settings.pod_rules.default_level)
    violations = podpolicy.check_template(
        rendering.template(spec, settings.runtime_image), level, settings.pod_rules, None
    )
    holding = len(r.serving) + len(r.draining) + len(resumed)
    missing = max(want - len(r.new) - len(resumed), 0)
    room = want + surge - holding
    nodes: list[str] = []
    verdict: admission.Verdict | None = None
    if violations:
        more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
        reason = "PodPolicyViolation"
        message = (
            f"no replica created: the template breaks the {level!r} pod policy of "
            f"namespace {meta['namespace']}: {violations[0]}{more}"
        )
    elif missing and room > 0 and not status.admission and not refused_pod:
        nodes, verdict = _place(world, settings, spec, min(missing, room), status.queued_time)
    created: list[str] = []
    if nodes:
        batch = (status.admission.batch if status.admission else _last_batch(world.pods)) + 1
        created = _free_names(meta["name"], rev, taken, len(nodes))
        status.admission = ServingAdmission(
            batch=batch,
            replicas=len(nodes),
            gpus_per_replica=spec.gpus_per_replica,
            nodes=list(nodes),
            pods=created,
        )
        for slot, (name, node) in enumerate(zip(created, nodes, strict=True)):
            plan.create.append(
                rendering.render_pod(
                    meta, spec, rev, name, batch, slot, node, settings.runtime_image
                )
            )
        placed = ", ".join(
            f"{n} on {node}" if node else n for n, node in zip(created, nodes, strict=True)
        )
        verb = "Surging" if holding + len(created) > want else "ReplicaCreated"
        events.append(Event("Normal", verb, f"created {placed} (revision {rev})"))
        status.queued_time = None
    if verdict is not None and not created:
        status.queued_time = status.queued_time or stamp
        plan.requeue_after = settings.queued_recheck_seconds
    elif created or not missing:
        status.queued_time = None

    starting = [*resumed, *created]
    # The Service goes with every create (a create of one that is there and ours is a no-op),
    # and again while a refusal is said, until the API takes it.
    if starting or world.refused:
        plan.create.insert(0, rendering.render_service(meta, spec))

    # Drains: old replicas (and, scaling down, surplus new ones) leave the Service.
    gpu_blocked = verdict is not None and not created
    no_room = bool(missing) and room <= 0 and surge == 0
    in_place = max(missing - len(created), 0) if (gpu_blocked or no_room) and r.old else 0
    serving_count = len(r.serving) + len(starting)
    new_left = len(r.new) + len(starting)
    ready = sum(1 for p in r.serving if podstate.is_ready(p))
    drained: list[Obj] = []
    for pod in sorted(r.old, key=podstate.is_ready) + sorted(r.new, key=podstate.is_ready):
        is_ready = podstate.is_ready(pod)
        keeps_min = not is_ready or ready - 1 >= min_ready
        if pod in r.old:
            if serving_count > want and keeps_min:
                pass
            elif in_place > 0 and keeps_min:
                in_place -= 1
            else:
                continue
        elif new_left > want:  # scaled down: the surplus goes, not Ready ones first
            new_left -= 1
        else:
            continue
        drained.append(pod)
        serving_count -= 1
        ready -= 1 if is_ready else 0
    for pod in drained:
        plan.patch.append(
            PodPatch(
                _name(pod),
                labels={labels.SERVING: "false"},
                annotations={labels.DRAIN_STARTED: stamp},
            )
        )
        how = "in place (no GPUs for a surge replica)" if gpu_blocked and pod in r.old else ""
        events.append(
            Event(
                "Normal",
                "Draining",
                f"replica {_name(pod)} left the Service{' ' + how if how else ''}; "
                f"stopping it in {spec.rollout.drain_seconds:g}s",
            )
        )
        wait = spec.rollout.drain_seconds
        drain_wait = wait if drain_wait is None else min(drain_wait, wait)

    # Status.
    deleted = {d.name for d in plan.delete}
    drained_names = {_name(p) for p in drained}
    serving_now = [p for p in r.serving if _name(p) not in drained_names]
    ready_now = [p for p in serving_now if podstate.is_ready(p)]
    new_now = [p for p in r.new if _name(p) not in drained_names]
    old_left = [p for p in r.old if _name(p) not in drained_names] + [
        p for p in r.draining if _revision(p) != rev
    ]
    done = not old_left and len(new_now) == want and all(podstate.is_ready(p) for p in new_now)
    if done and status.current_revision != rev:
        if status.rollout_start_time and rolling_from:
            took = (now - (parse_time(status.rollout_start_time) or now)).total_seconds()
            plan.signals = dataclasses.replace(plan.signals, rollout_seconds=took)
            events.append(
                Event(
                    "Normal", "RolloutComplete", f"every replica runs revision {rev} ({took:.0f}s)"
                )
            )
        status.current_revision = rev
        status.rollout_start_time = None
    if not status.current_revision and not r.old:
        status.current_revision = rev
    ready_count = len(ready_now)
    gpus = sum(podstate.gpu_request(p) for p in world.pods if not podstate.is_terminal(p))
    status.replicas = len(serving_now) + len(starting)
    status.ready_replicas = ready_count
    status.available_replicas = ready_count
    status.updated_replicas = len(new_now) + len(starting)
    status.ready_text = f"{ready_count}/{want}"
    status.gpus = gpus
    status.replaced += replaced
    status.url = rendering.url(meta, spec)
    status.selector = ",".join(
        f"{k}={v}" for k, v in rendering.selector_labels(meta["name"]).items()
    )
    status.observed_generation = meta.get("generation")
    before = {x.pod: x.state for x in status.replica_status}
    states = {
        _name(p): "Draining" if _name(p) in drained_names else _state(p, before.get(_name(p), ""))
        for p in [*r.serving, *r.draining]
    }
    for name, state in states.items():
        if state == "NotReady" and before.get(name) == "Ready":
            events.append(
                Event(
                    "Warning",
                    "ReplicaNotReady",
                    f"replica {name} is not Ready (its readiness probe fails): "
                    "out of the Service until it passes again",
                )
            )
    status.replica_status = [
        ReplicaStatus(
            pod=_name(p), node=podstate.node_name(p), revision=_revision(p), state=states[_name(p)]
        )
        for p in [*r.serving, *r.draining]
        if _name(p) not in deleted
    ] + [ReplicaStatus(pod=n, revision=rev, state="Starting") for n in starting]

    if not reason:
        if gpu_blocked and verdict is not None:
            if r.old and unavailable == 0:
                reason = "WaitingForGPUs"
                message = (
                    f"no GPUs for a surge replica, and maxUnavailable 0 allows no "
                    f"replacement in place: {verdict.message}"
                )
            elif r.old:
                reason = "ReplacingInPlace"
                message = (
                    f"no GPUs for a surge replica: replacing old replicas in place, "
                    f"{unavailable} at a time; {verdict.message}"
                )
            else:
                reason, message = "WaitingForGPUs", verdict.message
        elif old_left:
            reason = "RollingOut"
            message = (
                f"revision {rev}: {len(new_now) + len(starting)} of {want} updated, "
                f"{len(old_left)} old replicas left"
            )
        elif len(new_now) + len(starting) < want:
            reason, message = "ScalingUp", f"{ready_count} of {want} replicas Ready"
        elif serving_count > want or r.draining or drained:
            reason, message = "ScalingDown", f"{len(r.draining) + len(drained)} replicas draining"
        elif ready_count < want:
            reason, message = "ReplicasStarting", f"{ready_count} of {want} replicas Ready"
        else:
            reason, message = "Available", f"{ready_count} replicas Ready, revision {rev}"
    status.reason, status.message = reason, message
    progressing = not done or bool(r.draining or drained) or serving_count > want
    if reason in ("CreateRefused", "PodPolicyViolation"):  # no Service, or no replica, ever
        phase = ServingPhase.DEGRADED
    elif want and ready_count == 0 and status.phase in (None, ServingPhase.PENDING):
        phase = ServingPhase.PENDING
    elif ready_count < min_ready:
        phase = ServingPhase.DEGRADED
    elif progressing:
        phase = ServingPhase.PROGRESSING
    else:
        phase = ServingPhase.AVAILABLE
    status.phase = phase
    conds = [c.model_dump(by_alias=True) for c in status.conditions]
    conds = set_condition(
        conds,
        "Available",
        ready_count >= min_ready,
        "MinimumReplicasAvailable" if ready_count >= min_ready else "MinimumReplicasUnavailable",
        f"{ready_count} Ready of {want} (at least {min_ready})",
        stamp,
    )
    conds = set_condition(
        conds, "Progressing", True, reason if progressing else "RolloutComplete", message, stamp
    )
    degraded = (
        ready_count < min_ready
        or bool(replaced)
        or reason in ("PodPolicyViolation", "CreateRefused")
    )
    conds = set_condition(
        conds,
        "Degraded",
        degraded,
        reason if degraded else "AsExpected",
        message if degraded else "",
        stamp,
    )
    status.conditions = [Condition.model_validate(c) for c in conds]

    plan.status = status.model_dump(by_alias=True, mode="json")
    plan.events = events
    plan.signals = dataclasses.replace(plan.signals, replaced=replaced, desired=want)
    waits = [w for w in (plan.requeue_after, drain_wait) if w is not None]
    if not done and not waits:
        waits.append(STARTING_RECHECK_SECONDS)
    plan.requeue_after = max(min(waits), 0.2) if waits else None
    return plan


def _autoscale(
    world: World, spec: ServingJobSpec, status: ServingJobStatus, stamp: str, events: list[Event]
) -> tuple[int, str]:
    """The replicas the job runs: spec.replicas, or the autoscaler's count, recorded in status
    (with an Event when it changes); and which way the autoscaler moved it ("" if it did not)."""
    auto = spec.autoscaling
    if auto is None:
        status.autoscaling = None
        return spec.replicas, ""
    before = status.autoscaling
    current = autoscale.asked_for(world.job)
    d = autoscale.decide(auto, current, world.load, world.now)
    moved = d.desired != current and before is not None and bool(before.desired_replicas)
    status.autoscaling = AutoscalingStatus(
        desired_replicas=d.desired,
        metric=auto.metric,
        value=round(d.value, 3) if d.value is not None else None,
        target=auto.target,
        reporting=d.reporting,
        last_scale_time=stamp if moved else (before.last_scale_time if before else None),
        message=d.message,
    )
    if not moved:
        return d.desired, ""
    up = d.desired > current
    events.append(Event("Normal", "ScaledUp" if up else "ScaledDown", d.message))
    return d.desired, "up" if up else "down"


def _last_batch(pods: list[Obj]) -> int:
    return max((podstate.generation(p) for p in pods), default=0)
