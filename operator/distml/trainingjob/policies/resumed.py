"""A suspended job resumed: a new generation, queued like a new gang; the deadline counts anew."""

from __future__ import annotations

from distml.api.models import Phase
from distml.trainingjob import actions
from distml.trainingjob.model import Outcome, PhaseChange
from distml.trainingjob.observe import Observation


def decide(o: Observation) -> Outcome | None:
    if o.stored.phase != Phase.SUSPENDED:
        return None
    return Outcome(
        phase=PhaseChange(Phase.QUEUED, "Resumed", "resumed; waiting for room for the gang"),
        status={**actions.next_generation(o), "start_time": None, "next_attempt_time": None},
        final=False,
    )
