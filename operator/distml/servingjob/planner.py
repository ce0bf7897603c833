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
from distml.servingjob import autoscale, rendering, split
from distml.servingjob.demand import gang, stages

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
class Replica:
    """One replica: its pod, or, split into a pipeline, its stage pods (a gang: it serves only
    whole, and is replaced whole)."""

    name: str
    pods: list[Obj]  # live (not being deleted), by stage
    stages: int = 1
    broken: str = ""  # why the group is not whole: a stage pod deleted or missing

    @property
    def head(self) -> Obj | None:
        """The pod that serves: stage 0."""
        return next((p for p in self.pods if _stage(p) == 0), None)

    @property
    def ready(self) -> bool:
        head = self.head
        return head is not None and podstate.is_ready(head) and len(self.pods) == self.stages

    @property
    def failed(self) -> bool:
        return bool(self.broken) or any(podstate.is_terminal(p) for p in self.pods)

    @property
    def draining(self) -> bool:
        head = self.head
        return head is not None and _draining(head)

    @property
    def revision(self) -> str:
        return _revision(self.pods[0])

    @property
    def node(self) -> str:
        head = self.head
        return podstate.node_name(head) if head is not None else ""

    @property
    def stage_nodes(self) -> list[str] | None:
        if self.stages == 1:
            return None
        return [podstate.node_name(p) for p in self.pods]

    def why_failed(self) -> str:
        if self.broken:
            return self.broken
        pod = next(p for p in self.pods if podstate.is_terminal(p))
        code = podstate.exit_code(pod)
        why = podstate.failure_reason(pod)
        said = f"exit code {code}" if code is not None else "no exit code"
        where = f"stage {_stage(pod)} ({_name(pod)}): " if self.stages > 1 else ""
        return f"{where}{said}{f' ({why})' if why else ''}"

    def where(self) -> str:
        if self.stages == 1:
            return self.node or "no node"
        return ", ".join(podstate.node_name(p) or "no node" for p in self.pods)


@dataclass
class Replicas:
    """The job's replicas, sorted by what they are to the rollout."""

    new: list[Replica] = field(default_factory=list)  # serving, of the update revision
    old: list[Replica] = field(default_factory=list)  # serving, of another revision
    draining: list[Replica] = field(default_factory=list)  # out of the Service, not deleted yet
    failed: list[Replica] = field(default_factory=list)  # a pod finished, or the group broke

    @property
    def serving(self) -> list[Replica]:
        return [*self.new, *self.old]


def _name(pod: Obj) -> str:
    return str(pod["metadata"]["name"])


def _labels(pod: Obj) -> dict[str, str]:
    return pod["metadata"].get("labels") or {}


def _draining(pod: Obj) -> bool:
    return _labels(pod).get(labels.SERVING) == "false"


def _revision(pod: Obj) -> str:
    return _labels(pod).get(labels.REVISION, "")


def _stage(pod: Obj) -> int:
    return int(_labels(pod).get(labels.STAGE, "0"))


def sort_replicas(pods: list[Obj], rev: str, pending: frozenset[str] = frozenset()) -> Replicas:
    """`pending`: stage pods being created now (not in the cache yet), not missing. A replica
    has the stages its pods say (a rollout may change their number)."""
    groups: dict[str, list[Obj]] = {}
    for pod in pods:
        groups.setdefault(_labels(pod).get(labels.REPLICA) or _name(pod), []).append(pod)
    r = Replicas()
    for name in sorted(groups):
        members = sorted(groups[name], key=_stage)
        live = [p for p in members if not podstate.is_deleting(p)]
        if not live:
            continue  # going: its GPUs are the ledger's to count until it is gone
        size = int(_labels(live[0]).get(labels.STAGES) or 1)
        replica = Replica(name, live, size)
        if size > 1:
            gone = [_name(p) for p in members if podstate.is_deleting(p)]
            have = {_stage(p) for p in live}
            lost = [
                rendering.stage_pod_name(name, k)
                for k in range(size)
                if k not in have and rendering.stage_pod_name(name, k) not in pending
            ]
            if gone:
                replica.broken = f"its stage pod {gone[0]} is being deleted"
            elif lost:
                replica.broken = f"its stage pod {lost[0]} is gone"
        if replica.failed:
            r.failed.append(replica)
        elif replica.draining:
            r.draining.append(replica)
        elif replica.revision == rev:
            r.new.append(replica)
        else:
            r.old.append(replica)
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
    world: World,
    settings: Settings,
    count: int,
    queued: str | None,
    serving: list[Replica],
) -> tuple[list[tuple[str, ...]], admission.Verdict | None]:
    """Nodes for up to `count` new replicas (a node per stage pod), the most the ledger (and
    the queue order it keeps with every TrainingJob) lets start now; with the verdict that
    stopped it at fewer. Replicas are placed one at a time, each first in the zone that holds
    the fewest of the job's replicas (the `serving` ones by their stage 0's node, and those
    placed here as they are)."""
    job = world.job
    k = stages(job)
    keys = settings.topology
    zone_of = {n["metadata"]["name"]: keys.zone_of(n) for n in world.nodes}
    used = dict.fromkeys(sorted({z for z in zone_of.values() if z}), 0)
    for x in serving:
        if zone := zone_of.get(x.node, ""):
            used[zone] += 1
    placed: list[tuple[str, ...]] = []
    held: list[admission.Gang] = []  # this batch's replicas placed so far, as the ledger's
    base = dataclasses.replace(gang(job), waiting_since=parse_time(queued))
    for index in range(count):
        tries = [base]
        if len(used) > 1:
            least = min(used.values())
            away = frozenset(n for n, z in zone_of.items() if used.get(z, least) > least)
            if away:
                tries.insert(0, dataclasses.replace(
                    base, nodes=dataclasses.replace(base.nodes, avoid=base.nodes.avoid | away)
                ))  # fmt: skip
        verdict: admission.Verdict | None = None
        for mine in tries:
            verdict = admission.plan_queue(
                [*world.gangs, *held, mine], world.nodes, world.cluster_pods, world.now,
                settings.backfill_seconds, until=mine.uid, keys=keys,
            )[mine.uid]  # fmt: skip
            if verdict.admitted:
                break
        assert verdict is not None
        if not verdict.admitted:
            return placed, verdict
        nodes = tuple(verdict.nodes) if verdict.nodes else ("",) * k
        placed.append(nodes)
        held.append(dataclasses.replace(base, uid=f"{base.uid}/{index}", admitted=nodes,
                                        layout=None))  # fmt: skip
        if zone := zone_of.get(nodes[0], ""):
            used[zone] += 1
    return placed, None


def _state(replica: Replica, before: str) -> str:
    """Its state now; `before`, what the last status said (a replica that was Ready and is not
    now has a failing readiness probe: a hung or dying server)."""
    if replica.failed:
        return "Failed"
    if replica.draining:
        return "Draining"
    if replica.ready:
        return "Ready"
    return "NotReady" if before in ("Ready", "NotReady") else "Starting"


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
    k = stages(job)
    plan = Plan(signals=Signals(autoscaled=autoscaled))
    taken = {_name(p) for p in world.pods} | {
        _labels(p)[labels.REPLICA] for p in world.pods if labels.REPLICA in _labels(p)
    }
    replaced = 0
    reason, message = "", ""
    ranges, split_error = "", ""
    if spec.pipeline:
        try:
            status.pipeline = split.describe(
                spec.model.widths, spec.pipeline, spec.batching.max_batch_size
            )
            ranges = ",".join(f"{s.first_layer}:{s.last_layer + 1}"
                              for s in status.pipeline.per_stage)  # fmt: skip
        except split.SplitError as err:
            status.pipeline, split_error = None, str(err)
    else:
        status.pipeline = None

    def render(name: str, batch: int, slot: int, node: str) -> Obj:
        replica, stage = _replica_of(name, k)
        return rendering.render_pod(meta, spec, rev, replica, batch, slot, node,
                                    settings.runtime_image, stage, ranges)  # fmt: skip

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
    resumed: list[str] = []  # replicas whose pods the last admission created, not all seen
    pending: set[str] = set()
    if adm:
        where = adm.nodes or [""] * len(adm.pods)
        for slot, (name, node) in enumerate(zip(adm.pods, where, strict=False)):
            if name not in taken:
                pending.add(name)
                replica = _replica_of(name, k)[0]
                if replica not in resumed and replica not in taken:
                    resumed.append(replica)
                plan.create.append(render(name, adm.batch, slot, node))
    r = sort_replicas(world.pods, rev, frozenset(pending))

    # Failed replicas: deleted (every stage pod), and replaced below like any missing one.
    for rep in r.failed:
        plan.delete.extend(PodDeletion(_name(p)) for p in rep.pods)
        replaced += 1
        events.append(
            Event(
                "Warning",
                "ReplicaFailed",
                f"replica {rep.name} failed on {rep.where()}: {rep.why_failed()}; replacing it"
                + (" (all its stages)" if k > 1 else ""),
            )
        )
        reason, message = "ReplicaFailed", f"replica {rep.name} failed ({rep.why_failed()})"
    # Drained replicas: stopped once their drain is over.
    drain_wait: float | None = None
    for rep in r.draining:
        head = rep.head or rep.pods[0]
        started = parse_time((head["metadata"].get("annotations") or {}).get(labels.DRAIN_STARTED))
        left = spec.rollout.drain_seconds - (now - (started or now)).total_seconds()
        if left <= 0:
            plan.delete.extend(PodDeletion(_name(p)) for p in rep.pods)
            events.append(
                Event("Normal", "ReplicaStopped", f"replica {rep.name} stopped after draining")
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
    nodes: list[tuple[str, ...]] = []
    verdict: admission.Verdict | None = None
    if split_error:
        reason, message = "InvalidPipeline", f"no replica created: {split_error}"
    elif violations:
        more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
        reason = "PodPolicyViolation"
        message = (
            f"no replica created: the template breaks the {level!r} pod policy of "
            f"namespace {meta['namespace']}: {violations[0]}{more}"
        )
    elif missing and room > 0 and not status.admission and not refused_pod:
        nodes, verdict = _place(world, settings, min(missing, room), status.queued_time,
                                r.serving)  # fmt: skip
    created: list[str] = []
    if nodes:
        batch = (status.admission.batch if status.admission else _last_batch(world.pods)) + 1
        created = _free_names(meta["name"], rev, taken, len(nodes))
        pods = [_pod_of(name, stage, k) for name in created for stage in range(k)]
        where = [node for group in nodes for node in group]
        status.admission = ServingAdmission(
            batch=batch,
            replicas=len(nodes),
            gpus_per_replica=rendering.gpus_per_pod(spec),
            nodes=where,
            pods=pods,
        )
        for slot, (name, node) in enumerate(zip(pods, where, strict=True)):
            plan.create.append(render(name, batch, slot, node))
        placed = ", ".join(
            f"{n} on {'+'.join(group)}" if any(group) else n
            for n, group in zip(created, nodes, strict=True)
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
        if spec.pipeline:
            plan.create.insert(1, rendering.render_stage_service(meta, spec))

    # Drains: old replicas (and, scaling down, surplus new ones) leave the Service.
    gpu_blocked = verdict is not None and not created
    no_room = bool(missing) and room <= 0 and surge == 0
    in_place = max(missing - len(created), 0) if (gpu_blocked or no_room) and r.old else 0
    serving_count = len(r.serving) + len(starting)
    new_left = len(r.new) + len(starting)
    ready = sum(1 for x in r.serving if x.ready)

    def by_ready(x: Replica) -> bool:
        return x.ready

    drained: list[Replica] = []
    for rep in sorted(r.old, key=by_ready) + sorted(r.new, key=by_ready):
        is_ready = rep.ready
        keeps_min = not is_ready or ready - 1 >= min_ready
        if rep in r.old:
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
        drained.append(rep)
        serving_count -= 1
        ready -= 1 if is_ready else 0
    for rep in drained:
        plan.patch.append(
            PodPatch(
                _name(rep.head or rep.pods[0]),
                labels={labels.SERVING: "false"},
                annotations={labels.DRAIN_STARTED: stamp},
            )
        )
        how = "in place (no GPUs for a surge replica)" if gpu_blocked and rep in r.old else ""
        events.append(
            Event(
                "Normal",
                "Draining",
                f"replica {rep.name} left the Service{' ' + how if how else ''}; "
                f"stopping it in {spec.rollout.drain_seconds:g}s",
            )
        )
        wait = spec.rollout.drain_seconds
        drain_wait = wait if drain_wait is None else min(drain_wait, wait)

    # Status.
    deleted = {d.name for d in plan.delete}
    drained_names = {x.name for x in drained}
    serving_now = [x for x in r.serving if x.name not in drained_names]
    ready_now = [x for x in serving_now if x.ready]
    new_now = [x for x in r.new if x.name not in drained_names]
    old_left = [x for x in r.old if x.name not in drained_names] + [
        x for x in r.draining if x.revision != rev
    ]
    done = not old_left and len(new_now) == want and all(x.ready for x in new_now)
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
    # One pod per replica, for an HPA counting them: the one that serves.
    status.selector = ",".join(
        f"{key}={value}"
        for key, value in {
            **rendering.selector_labels(meta["name"]),
            **({labels.STAGE: "0"} if spec.pipeline else {}),
        }.items()
    )
    status.observed_generation = meta.get("generation")
    before = {x.pod: x.state for x in status.replica_status}
    states = {
        x.name: "Draining" if x.name in drained_names else _state(x, before.get(x.name, ""))
        for x in [*r.serving, *r.draining]
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
            pod=x.name,
            node=x.node,
            revision=x.revision,
            state=states[x.name],
            stage_nodes=x.stage_nodes,
        )
        for x in [*r.serving, *r.draining]
        if not {_name(p) for p in x.pods} <= deleted
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
            if verdict is not None:  # some were placed, the rest wait
                message += f"; the rest wait: {verdict.message}"
        elif serving_count > want or r.draining or drained:
            reason, message = "ScalingDown", f"{len(r.draining) + len(drained)} replicas draining"
        elif ready_count < want:
            reason, message = "ReplicasStarting", f"{ready_count} of {want} replicas Ready"
        else:
            reason, message = "Available", f"{ready_count} replicas Ready, revision {rev}"
    status.reason, status.message = reason, message
    progressing = not done or bool(r.draining or drained) or serving_count > want
    if reason in ("CreateRefused", "PodPolicyViolation", "InvalidPipeline"):  # none, ever
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
        or reason in ("PodPolicyViolation", "CreateRefused", "InvalidPipeline")
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


def _replica_of(pod: str, stages: int) -> tuple[str, int | None]:
    """A pod name's replica, and its stage (None: a replica of one pod)."""
    if stages == 1:
        return pod, None
    replica, _, stage = pod.rpartition("-s")
    return replica, int(stage)


def _pod_of(replica: str, stage: int, stages: int) -> str:
    return rendering.stage_pod_name(replica, stage) if stages > 1 else replica


def _last_batch(pods: list[Obj]) -> int:
    return max((podstate.generation(p) for p in pods), default=0)
