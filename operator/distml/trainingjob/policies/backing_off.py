"""After a restart or a released gang, the next attempt waits until nextAttemptTime."""

from __future__ import annotations

from distml.api.models import Phase
from distml.podstate import parse_time
from distml.trainingjob.model import Outcome, PhaseChange
from distml.trainingjob.observe import Observation


def decide(o: Observation) -> Outcome | None:
    next_at = parse_time(o.status.next_attempt_time)
    if o.admission is not None or next_at is None or next_at <= o.now:
        return None
    phase = None
    if not o.stored.phase:
        phase = PhaseChange(Phase.QUEUED, "BackingOff", "backing off before the next attempt")
    return Outcome(phase=phase, requeue_after=(next_at - o.now).total_seconds())
