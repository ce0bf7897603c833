"""An elastic job whose group has run: it changes size instead of restarting.

A pod lost (its node died or vanished, it was evicted or deleted, it died of a signal or lost a
peer) is deleted (forced where no kubelet answers) and the rest go on: torchrun's agents meet
again without it in one rendezvous round and resume from the newest checkpoint. Each slot left
empty gets a replacement where the GPU ledger has room (first where the lost pod ran, while that
node is usable); without room the job runs smaller and says what it waits for
(WaitingForCapacity). spec.replicas moving within the bounds (kubectl scale) grows the group the
same way, or stops its highest slots (they leave through SIGTERM, so every rank checkpoints
first). Every change of size is a Resize in status, an Event and a metric; none counts against
backoffLimit.

Slot 0's pod hosts the rendezvous store. When it is lost, the others' launchers wait for the
store's new host under the same name (distml_runtime.launch.HostLoss), so slot 0 is replaced
like any other slot. Where the ledger has no room for it, the highest slot of the group gives
up its node to it (through SIGTERM, as a scale-down): without its store the group cannot meet
at all, with one rank fewer it can. Its own slot then waits for capacity like any other.

What this policy leaves to the others: a group that has not run yet (gang start is all or
nothing), an application error (the restart policy decides), fewer than minReplicas left
(slot 0's replacement counted), and slot 0 lost with no other slot to give it a node.
"""

from __future__ import annotations

from distml import admission, podstate, rendering
from distml.api.models import Admission, Condition, Phase, Resize
from distml.conditions import set_condition
from distml.policies.restart import Failure, describe, is_retryable
from distml.trainingjob import actions
from distml.trainingjob.demand import demand
from distml.trainingjob.model import Event, Obj, Outcome, PhaseChange, PodDeletion, Signals
from distml.trainingjob.observe import Observation

HISTORY = 10  # resizes kept in status
WAITING = "WaitingForCapacity"
FRESH_SECONDS = 10.0  # group readings older than this say nothing of the group now
LOSSES = ("PodLost", "NodeLost", "LeftGroup")


def reported_group(o: Observation, running: list[Obj]) -> tuple[int, list[Obj]] | None:
    """The group as its ranks report it (distml.handlers.groups): its size and the running pods
    not in it, when every running pod that answered the last read names the same size and the
    ones that did not answer are exactly those missing from it (a pod cut off with its node, or
    one still joining); None without such a reading."""
    at = o.world.members_at
    if at is None or (o.now - at).total_seconds() > FRESH_SECONDS:
        return None
    fresh = {n for n, r in o.world.members.items() if r.time == at}
    answered = [p for p in running if p["metadata"]["name"] in fresh]
    sizes = {o.world.members[p["metadata"]["name"]].group_size for p in answered}
    if len(sizes) != 1:
        return None
    size = sizes.pop()
    if size == len(answered) and size <= len(running):
        return size, [p for p in running if p["metadata"]["name"] not in fresh]
    return None


def lost_pod(o: Observation, pod: Obj) -> Failure | None:
    """Why a pod of the group no longer counts, or None while it does: it failed or was lost
    with its node (as for any job), or it is being deleted from a slot the job still has."""
    found = o.failure(pod)
    if found is not None or podstate.is_terminal(pod) or o.held(pod):
        return found
    if podstate.is_deleting(pod) and podstate.rank(pod) < o.spec.replicas:
        return Failure(podstate.rank(pod), pod["metadata"]["name"], None, "the pod was deleted")
    return None


def _resizable(o: Observation, f: Failure) -> bool:
    if f.exit_code is None:
        return True
    if o.spec.restart_policy == "Never":
        return False
    if o.spec.restart_policy == "OnFailure":
        return True
    return is_retryable(f, o.spec.exit_codes.retryable)


def decide(o: Observation) -> Outcome | None:
    el, adm = o.spec.elastic, o.admission
    if el is None or adm is None or o.stored.phase != Phase.RUNNING:
        return None
    cur = o.current
    if any(o.held(p) for p in cur):
        return None  # nodes NotReady in an outage, or not silent long enough: wait and see
    lost = {p["metadata"]["name"]: f for p in cur if (f := lost_pod(o, p)) is not None}
    if any(not _resizable(o, f) for f in lost.values()):
        return None  # an application error: the failed policy decides
    target = o.spec.replicas
    nodes = list(adm.nodes) + [""] * max(target - len(adm.nodes), 0)
    live = [
        p for p in cur
        if not podstate.is_terminal(p) and not podstate.is_deleting(p)
        and p["metadata"]["name"] not in lost
    ]  # fmt: skip
    host_lost = any(f.rank == 0 for f in lost.values())
    donor = None
    if host_lost and not _place(o, [0], nodes):
        # No room for the rendezvous host's replacement: the highest slot of the group gives
        # it its node (without its store the group cannot meet at all; one rank fewer can).
        donor = _donor(o, live, target)
        if donor is None:
            return None  # nothing to give it: the group restarts
        nodes[0], nodes[podstate.rank(donor)] = podstate.node_name(donor), ""
        live.remove(donor)
    finished = o.in_phase("Succeeded")
    if finished and not live:
        return actions.finish(
            o, Phase.SUCCEEDED, "Succeeded", f"the {len(finished)} workers exited 0"
        )
    # Slot 0 being replaced counts: the others wait for it (the store is its).
    host_coming = host_lost or (target > 0 and all(podstate.rank(p) != 0 for p in cur))
    if len(live) + host_coming < el.min_replicas:
        return None  # too few to go on: the group restarts (failed, missing)
    leaving = [p for p in live if podstate.rank(p) >= target]  # scaled down
    staying = [p for p in live if podstate.rank(p) < target]
    delete = [
        *actions.deletions(o, [p for p in cur if p["metadata"]["name"] in lost]),
        *(PodDeletion(p["metadata"]["name"]) for p in ([*leaving, donor] if donor else leaving)),
    ]
    # The slots with no pod at all (a lost pod's name is free once it is gone) get one.
    taken = {podstate.rank(p) for p in cur}
    vacant = [] if finished else [r for r in range(target) if r not in taken]
    create: list[Obj] = []
    waiting = 0
    if vacant:
        placed = _place(o, vacant, nodes)
        for rank, node in zip(vacant, placed, strict=False):
            nodes[rank] = node
            create.append(rendering.render_worker_pod(o.meta, o.spec, rank, o.generation, node))
        waiting = len(vacant) - len(placed)
    new_adm = Admission(
        restart_generation=adm.restart_generation,
        replicas=target,
        gpus_per_replica=adm.gpus_per_replica,
        nodes=nodes[:target] if adm.gpus_per_replica else [],
        time=adm.time,
    )
    running = [p for p in staying if podstate.phase(p) == "Running"]
    # The ranks' own word, where their launchers answer: a pod still running whose peers met
    # without it is out of the group now, long before its node counts as lost.
    counted = len(running)
    out: list[Obj] = []
    if (group := reported_group(o, running)) is not None:
        counted, out = group
    left = [p["metadata"]["name"] for p in out if p["metadata"]["name"] in o.world.members]
    joining = [p["metadata"]["name"] for p in out if p["metadata"]["name"] not in left]
    # Workers that finish one by one at the end are not a shrink: the count stays as it was.
    workers = counted if not finished or o.status.workers is None else o.status.workers
    history, events, resized = _resizes(o, lost, leaving, workers, left)
    bounds = f"elastic {el.min_replicas}-{el.max_replicas}"
    message = f"{counted} of {target} workers in the group ({bounds})"
    if left:
        message += f"; its ranks met again without {', '.join(left)} (running, not answering)"
    if joining:
        message += f"; joining: {', '.join(joining)}"
    if finished:
        message += f", {len(finished)} finished"
    conditions = [c.model_dump(by_alias=True) for c in o.status.conditions]
    if waiting:
        need = f"{waiting} x {adm.gpus_per_replica} nvidia.com/gpu"
        wait_msg = f"running smaller: waiting for capacity for {need} on whole nodes"
        conditions = set_condition(conditions, WAITING, True, "InsufficientGPUs", wait_msg, o.stamp)
        phase = PhaseChange(Phase.RUNNING, WAITING, f"{message}; {wait_msg}", "Warning",
                            announce_reason_once=True)  # fmt: skip
    else:
        if any(c["type"] == WAITING for c in conditions):
            conditions = set_condition(conditions, WAITING, False, "Capacity", "", o.stamp)
        phase = PhaseChange(Phase.RUNNING, "Running", message, announce_reason_once=True)
    settling = bool(delete or create or len(running) != len(staying) or any(
        podstate.is_deleting(p) for p in cur
    ))  # fmt: skip
    restarts, restart_events = _worker_restarts(o, cur)
    events = [*events, *restart_events]
    return Outcome(
        phase=phase,
        status={
            "admission": new_adm,
            "workers": workers,
            "resizes": o.status.resizes + len(resized),
            "resize_history": history,
            "conditions": [Condition.model_validate(c) for c in conditions],
            "worker_restarts": restarts,
        },
        create=tuple(create),
        delete=tuple(delete),
        events=tuple(events),
        requeue_after=1.0 if settling else (o.settings.queued_recheck_seconds if waiting else None),
        signals=Signals(elastic_resizes=tuple(resized)),
    )


def _donor(o: Observation, live: list[Obj], target: int) -> Obj | None:
    """The pod that gives its node to slot 0's replacement: the highest slot of the group that
    runs on a usable node; None when there is none."""
    able = [
        p for p in live
        if 0 < podstate.rank(p) < target and podstate.phase(p) == "Running"
        and podstate.node_name(p) in o.nodes and not o.node_dead(p)
    ]  # fmt: skip
    return max(able, key=podstate.rank, default=None)


def _place(o: Observation, vacant: list[int], nodes: list[str]) -> list[str]:
    """Nodes for the vacant slots, as many as fit; CPU-only slots go anywhere (""). First
    where the lost pods ran, then in their network blocks, then wherever there is room."""
    adm = o.admission
    assert adm is not None
    if not adm.gpus_per_replica:
        return [""] * len(vacant)
    gang = demand(o.world.job)
    assert gang is not None
    lost_on = [nodes[r] for r in vacant if nodes[r]]
    keys = o.settings.topology
    blocks = {keys.block_of(o.nodes[n]) for n in lost_on if n in o.nodes}
    neighbours = sorted(n for n, node in o.nodes.items()
                        if n not in lost_on and keys.block_of(node) in blocks)  # fmt: skip
    prefer = (*lost_on, *neighbours)
    return admission.room_for(
        gang, o.world.nodes, o.world.cluster_pods, o.world.gangs, len(vacant), prefer
    )


def _worker_restarts(o: Observation, pods: list[Obj]) -> tuple[int, list[Event]]:
    """The worker restarts torchrun made in the job's pods, as their launchers say now (the
    last count while none answers), and an Event when it grew."""
    mine = {p["metadata"]["name"] for p in pods}
    readings = {n: r for n, r in o.world.members.items() if n in mine}
    if not readings:
        return o.status.worker_restarts, []
    total = sum(r.worker_restarts for r in readings.values())
    if total <= o.status.worker_restarts:
        return total, []
    where = ", ".join(f"{n}: {r.worker_restarts}" for n, r in sorted(readings.items())
                      if r.worker_restarts)  # fmt: skip
    assert o.spec.elastic is not None
    limit = o.spec.elastic.max_restarts
    return total, [
        Event("Warning", "WorkersRestarted",
              f"torchrun restarted workers inside pods ({where}; at most {limit} per pod, "
              "spec.elastic.maxRestarts)"),
    ]  # fmt: skip


def _resizes(
    o: Observation, lost: dict[str, Failure], leaving: list[Obj], running: int, left: list[str]
) -> tuple[list[Resize], list[Event], list[tuple[str, str]]]:
    """The change of size since the last count, if any: the history with it, its Event, and
    (direction, reason) for the metric."""
    history = list(o.status.resize_history)
    before = o.status.workers
    if before is None and o.admission is not None:
        # Not counted yet (the group turned Running and changed before this policy looked):
        # it was admitted with this many.
        before = o.admission.replicas
    if before is None or before == running:
        return history, [], []
    if running < before:
        direction = "shrink"
        if lost:
            first = sorted(lost.values(), key=lambda f: f.rank)[0]
            reason = "NodeLost" if first.exit_code is None and "node" in first.reason else "PodLost"
            why = describe(first) + (f" and {len(lost) - 1} more" if len(lost) > 1 else "")
        elif leaving or o.spec.replicas < before:  # scaled down (its pods may be gone)
            reason, why = "ScaledDown", f"spec.replicas is {o.spec.replicas}"
        elif left:
            reason = "LeftGroup"
            why = (f"the ranks met again without {', '.join(left)}, which still runs but does "
                   "not answer (its node silent)")  # fmt: skip
        else:
            reason, why = "PodLost", "a worker stopped running"
    else:
        direction = "grow"
        reason = _grow_reason(history, running)
        why = f"spec.replicas is {o.spec.replicas}"
    message = f"{before} -> {running} workers: {why}"
    history = [*history, Resize(time=o.stamp, from_replicas=before, to_replicas=running,
                                reason=reason, message=message)][-HISTORY:]  # fmt: skip
    event_type = "Warning" if direction == "shrink" and reason != "ScaledDown" else "Normal"
    label = "Shrunk" if direction == "shrink" else "Grown"
    return history, [Event(event_type, label, f"{reason}: {message}")], [(direction, reason)]


def _grow_reason(history: list[Resize], size: int) -> str:
    """`Replaced` while the group grows back toward the size it had before its latest loss
    (in one step or several), `ScaledUp` past it or after a scale."""
    for resize in reversed(history):
        if resize.reason in LOSSES:
            return "Replaced" if size <= resize.from_replicas else "ScaledUp"
        if resize.reason != "Replaced":
            break
    return "ScaledUp"
