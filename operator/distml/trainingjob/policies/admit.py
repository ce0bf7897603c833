"""Gang admission: the job's place in the queue and the GPU ledger decide whether its whole
gang fits now; admitted, it is recorded with a node per rank and its pods are created, or it
waits Queued with its position and why."""

from __future__ import annotations

import dataclasses

from distml import admission
from distml.api.models import Admission, Phase
from distml.podstate import parse_time
from distml.trainingjob import actions
from distml.trainingjob.demand import demand
from distml.trainingjob.model import Outcome, PhaseChange, Signals, dump_status
from distml.trainingjob.observe import Observation


def decide(o: Observation) -> Outcome | None:
    if o.admission is not None:
        return None
    queued = o.status.queued_time or o.stamp
    suspects = o.suspects
    status = o.status.model_copy(
        update={"queued_time": queued, "admission": None, "suspect_nodes": suspects}
    )
    mine = demand({**o.world.job, "status": dump_status(status)})
    assert mine is not None
    # Its admission is what is being decided, whatever an older status says (an operator that
    # kept no admission record left admittedTime on a gang whose pods are all gone).
    # A restart prefers the nodes its previous generation ran on (while usable, with room).
    before = o.status.admission
    prefer = tuple(before.nodes) if before and before.replicas == o.spec.replicas else ()
    mine = dataclasses.replace(mine, admitted=None, prefer=prefer)
    verdict = admission.plan_queue(
        [*o.world.gangs, mine],
        o.world.nodes,
        o.world.cluster_pods,
        o.now,
        o.settings.backfill_seconds,
        until=mine.uid,
        keys=o.settings.topology,
    )[mine.uid]
    if not verdict.admitted:
        never = ("NoNodeFits", "NoMatchingNode", "NoBlockFits")
        kind = "Warning" if verdict.reason in never else "Normal"
        return Outcome(
            phase=PhaseChange(Phase.QUEUED, verdict.reason, verdict.message, kind),
            status={
                "queued_time": queued,
                "queue_position": verdict.position,
                "suspect_nodes": suspects,
            },
            requeue_after=o.settings.queued_recheck_seconds,
        )
    adm = Admission(
        restart_generation=o.generation,
        replicas=o.spec.replicas,
        gpus_per_replica=o.spec.gpus_per_replica,
        nodes=[n for n in verdict.nodes if n],
        time=o.stamp,
    )
    waited = (o.now - (parse_time(queued) or o.now)).total_seconds()
    return Outcome(
        phase=PhaseChange(
            Phase.CREATING,
            "Admitted",
            f"admitted ({verdict.message}); creating {o.spec.replicas} pods",
        ),
        status={
            "admission": adm,
            "queued_time": None,
            "queue_position": None,
            "admitted_time": o.stamp,
            "gang_attempts": o.status.gang_attempts + 1,
            "next_attempt_time": None,
            "start_time": o.status.start_time or o.stamp,
            "suspect_nodes": suspects,
        },
        create=actions.create_missing(o, adm, set(), o.spec.replicas),
        requeue_after=o.spec.gang.timeout_seconds,
        signals=Signals(queue_wait_seconds=waited),
    )
