"""A job deleted and created again under the same name: the earlier one's pods hold this one's
pod names until the garbage collector, or the operator's orphan sweep, deletes them."""

from __future__ import annotations

from distml.api.models import Phase
from distml.trainingjob.model import Outcome, PhaseChange
from distml.trainingjob.observe import Observation


def decide(o: Observation) -> Outcome | None:
    if o.admission is not None or not o.predecessors:
        return None
    return Outcome(
        phase=PhaseChange(
            Phase.QUEUED,
            "WaitingForPredecessor",
            f"waiting for {len(o.predecessors)} pods of an earlier TrainingJob named {o.name} "
            "to go",
        ),
        requeue_after=1.0,
    )
