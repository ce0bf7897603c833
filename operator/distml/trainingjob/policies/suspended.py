"""runPolicy.suspend: the job's live pods are deleted and it waits, Suspended, until resumed."""

from __future__ import annotations

from distml.api.models import Phase
from distml.trainingjob import actions
from distml.trainingjob.model import Outcome, PhaseChange
from distml.trainingjob.observe import Observation


def decide(o: Observation) -> Outcome | None:
    if not o.spec.run_policy.suspend:
        return None
    phase = None
    if o.stored.phase != Phase.SUSPENDED:
        phase = PhaseChange(Phase.SUSPENDED, "Suspended", "suspended: pods deleted until resumed")
    return Outcome(
        phase=phase,
        status={"start_time": None, "queue_position": None},
        delete=actions.deletions(o, o.pods, only_live=True),
    )
