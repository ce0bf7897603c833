"""Pods on nodes that went NotReady with many others (an outage, see distml.policies.disruption)
are held: no restart, the phase kept, one Warning while the disruption lasts."""

from __future__ import annotations

from distml.api.models import Phase
from distml.policies import disruption
from distml.trainingjob.model import Outcome, PhaseChange, Signals
from distml.trainingjob.observe import Observation


def decide(o: Observation) -> Outcome | None:
    if o.admission is None or not any(o.disrupted(p) for p in o.current):
        return None
    message = o.disruption.message if o.disruption else (
        "nodes NotReady in a disruption that has ended have not reported yet: waiting up to "
        f"{disruption.RECOVERY_GRACE_SECONDS:.0f}s for them before taking them for lost"
    )  # fmt: skip
    return Outcome(
        phase=PhaseChange(
            Phase(o.stored.phase or Phase.RUNNING),
            "NodesDisrupted",
            message,
            "Warning",
            announce_reason_once=True,
        ),
        requeue_after=5,
        signals=Signals(disrupted=True),
    )
