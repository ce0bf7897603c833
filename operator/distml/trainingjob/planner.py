"""The reconcile decision for one TrainingJob: from what is (the job, its pods, the nodes, the
cluster's GPU pods, every other gang's demand on the ledger, the time) to what should be done
(pods and a Service to create, pods to delete, the new status, Events to post, when to look
again). Pure; level-triggered: the same world gives the same plan, so repeating it or restarting
the operator never duplicates anything.

The decision is the policies below, run in the order written in POLICIES. Each reads the
observation and returns an outcome or nothing; the first final outcome ends the run, and one
that is not final (a resume, a recorded preflight, pods to create) is applied before the next
policy looks. `apply` is the one place an outcome becomes status.

Decide, record, act: every decision lands in the new status (an admission with the node of each
rank, a restart's new generation and reason, a release), and the handler writes that status
before it creates or deletes anything. An operator that dies between the two finds the decision
in status and carries it on: it creates the admitted pods that are missing, or deletes the pods
of a generation that is no longer current.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from distml import placement, podstate
from distml.api.models import Condition, PlacementStatus, RankPlacement, TrainingJobStatus
from distml.conditions import set_phase_condition
from distml.trainingjob.demand import layout as rank_layout
from distml.trainingjob.model import (
    Event,
    Obj,
    Outcome,
    Plan,
    Settings,
    Signals,
    World,
    dump_status,
)
from distml.trainingjob.observe import Observation, observe
from distml.trainingjob.policies import (
    admit,
    adopted,
    backing_off,
    deadline,
    disrupted,
    elastic,
    failed,
    finished,
    gang_wait,
    missing,
    node_loss,
    pod_policy,
    predecessor,
    preflight,
    previous_generation,
    refused,
    resized,
    resumed,
    running,
    stale_pods,
    succeeded,
    suspended,
)

Policy = Callable[[Observation], Outcome | None]

# The order is the rules' precedence. A finished or suspended job does nothing else; the
# deadline beats everything after it; stale pods go whatever happens. Without an admission the
# gang waits for its predecessor, for its previous generation, for its backoff, for a template
# the pod policy allows, then for room (admit always decides). Admitted, a refused create, a
# resize, a failed preflight, an elastic group changing size, a failed worker, and held nodes
# come before counting what is there.
POLICIES: tuple[tuple[str, Policy], ...] = (
    ("finished", finished.decide),
    ("suspended", suspended.decide),
    ("resumed", resumed.decide),
    ("deadline", deadline.decide),
    ("stale pods", stale_pods.decide),
    ("adopted", adopted.decide),
    ("predecessor", predecessor.decide),
    ("previous generation", previous_generation.decide),
    ("backing off", backing_off.decide),
    ("pod policy", pod_policy.decide),
    ("admit", admit.decide),
    ("refused", refused.decide),
    ("resized", resized.decide),
    ("preflight", preflight.decide),
    ("elastic", elastic.decide),
    ("failed", failed.decide),
    ("disrupted", disrupted.decide),
    ("node loss", node_loss.decide),
    ("missing", missing.decide),
    ("succeeded", succeeded.decide),
    ("running", running.decide),
    ("gang wait", gang_wait.decide),
)


def apply(o: Observation, outcome: Outcome) -> tuple[TrainingJobStatus, list[Event]]:
    """The status after `outcome`, and the Events it posts: a phase change posts one when the
    phase or message differs from what the API has (with announce_reason_once, the reason)."""
    unknown = set(outcome.status) - set(TrainingJobStatus.model_fields)
    assert not unknown, f"not status fields: {sorted(unknown)}"
    # Shallow: policies build new values and never change the observation's.
    status = o.status.model_copy(update=dict(outcome.status))
    events = list(outcome.events)
    change = outcome.phase
    if change is not None:
        stored = o.stored
        if change.announce_reason_once:
            posted = stored.phase != change.phase or stored.reason != change.reason
        else:
            posted = stored.phase != change.phase or stored.message != change.message
        conditions = set_phase_condition(
            [c.model_dump(by_alias=True) for c in status.conditions],
            change.phase,
            change.reason,
            change.message,
            o.stamp,
        )
        status = status.model_copy(
            update={
                "phase": change.phase,
                "reason": change.reason,
                "message": change.message,
                "conditions": [Condition.model_validate(c) for c in conditions],
            }
        )
        if posted:
            events.insert(0, Event(change.event_type, change.reason, change.message))
    return status, events


def counts(o: Observation) -> dict[str, object]:
    """What exists now: pods of the current generation, and the GPUs that every pod of the job
    still holds, old generations included, until they are gone."""
    cur = o.current
    live = [p for p in o.pods if not podstate.is_terminal(p)]
    active = [p for p in live if not podstate.is_deleting(p)]
    ready = [p for p in cur if podstate.is_ready(p) and not podstate.is_deleting(p)]
    shown = sorted(
        {id(p): p for p in [*cur, *live]}.values(),
        key=lambda p: (-podstate.generation(p), podstate.rank(p)),
    )
    return {
        "replicas": len(cur),
        "active": len(active),
        "ready": len(ready),
        "succeeded": sum(podstate.phase(p) == "Succeeded" for p in cur),
        "failed": sum(podstate.phase(p) == "Failed" for p in cur),
        "ready_text": f"{len(ready)}/{o.spec.replicas}",
        "elastic_range": (
            f"{o.spec.elastic.min_replicas}-{o.spec.elastic.max_replicas}" if o.spec.elastic else ""
        ),
        "gpus": sum(podstate.gpu_request(p) for p in live if podstate.node_name(p)),
        **_layout(o, shown),
    }


def _layout(o: Observation, shown: list[Obj]) -> dict[str, object]:
    """Where each pod is (node, block, zone) and, for a parallel job, what it holds and how its
    current generation's stages lie over the blocks: from the nodes its pods are bound to, or
    pinned to by the admission while they are not bound yet."""
    keys = o.settings.topology
    adm = o.admission
    layout = rank_layout(o.world.job["spec"], adm.replicas) if adm else None

    def node_of(p: Obj) -> str:
        node = podstate.node_name(p)
        if not node and adm and podstate.generation(p) == o.generation:
            rank = podstate.rank(p)
            node = adm.nodes[rank] if rank < len(adm.nodes) else ""
        return node

    ranks = []
    for p in shown:
        node, rank = podstate.node_name(p), podstate.rank(p)
        where = o.nodes.get(node_of(p))
        held = (
            placement.describe_pod(layout, rank)
            if layout and podstate.generation(p) == o.generation and rank < layout.replicas
            else {}
        )
        ranks.append(
            RankPlacement(
                rank=rank,
                pod=p["metadata"]["name"],
                node=node,
                block=keys.block_of(where) if where else "",
                zone=keys.zone_of(where) if where else "",
                **held,
            )
        )
    out: dict[str, object] = {"ranks": ranks, "placement": None}
    if layout is None or adm is None:
        return out
    nodes = [o.nodes.get(adm.nodes[r] if r < len(adm.nodes) else "") for r in range(adm.replicas)]
    for p in o.current:
        if podstate.rank(p) < adm.replicas and podstate.node_name(p) in o.nodes:
            nodes[podstate.rank(p)] = o.nodes[podstate.node_name(p)]
    if any(n is None for n in nodes):
        return out  # a node not known (yet): nothing to say that would be true
    blocks = [keys.block_of(n) for n in nodes if n is not None]
    unit_blocks = blocks[:: layout.unit_pods]
    crossing = layout.crossings(unit_blocks)
    used = len(set(blocks))
    out["placement"] = PlacementStatus(
        pipeline_stages=layout.mode,
        pipeline=layout.pipeline,
        tensor=layout.tensor,
        data_parallel=layout.dp,
        blocks=used,
        cross_block_boundaries=len(crossing),
        crossing=[f"{s}->{s + 1}" for s in crossing],
        message=f"{layout.pipeline} stages x {layout.dp} data-parallel x {layout.tensor} tensor "
        f"in {used} block{'s' * (used != 1)}; {len(crossing)} of {layout.pipeline - 1} stage "
        "boundaries cross blocks",
    )
    return out


def _merge(a: Signals, b: Signals) -> Signals:
    return dataclasses.replace(
        a,
        **{
            f.name: getattr(b, f.name)
            for f in dataclasses.fields(b)
            if getattr(b, f.name) not in (None, False)
        },
    )


def plan_reconcile(world: World, settings: Settings | None = None) -> Plan:
    o = observe(world, settings or Settings())
    plan = Plan(signals=Signals())
    for _name, policy in POLICIES:
        outcome = policy(o)
        if outcome is None:
            continue
        status, events = apply(o, outcome)
        o = o.with_status(status)
        plan.create.extend(outcome.create)
        plan.delete.extend(outcome.delete)
        plan.events.extend(events)
        plan.delete_job = plan.delete_job or outcome.delete_job
        plan.signals = _merge(plan.signals, outcome.signals)
        if outcome.requeue_after is not None:
            after = max(outcome.requeue_after, 0.5)
            if plan.requeue_after is None or after < plan.requeue_after:
                plan.requeue_after = after
        if outcome.final:
            break
    plan.status = dump_status(o.status.model_copy(update=counts(o)))
    return plan
