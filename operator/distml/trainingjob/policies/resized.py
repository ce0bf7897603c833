"""spec.replicas changed under an admitted gang (kubectl scale): one new generation at the new
size, admitted like a new gang; neither a failure nor a restart against backoffLimit."""

from __future__ import annotations

from distml.api.models import Phase
from distml.trainingjob import actions
from distml.trainingjob.model import Outcome, PhaseChange, Signals
from distml.trainingjob.observe import Observation


def decide(o: Observation) -> Outcome | None:
    adm = o.admission
    if adm is None or o.spec.elastic is not None or adm.replicas == o.spec.replicas:
        return None
    return Outcome(
        phase=PhaseChange(
            Phase.RESTARTING,
            "Resized",
            f"spec.replicas changed from {adm.replicas} to {o.spec.replicas}: replacing the "
            f"{len(o.current)} pods with a new generation of {o.spec.replicas}",
        ),
        status={
            **actions.next_generation(o),
            "resizes": o.status.resizes + 1,
            "next_attempt_time": None,
        },
        delete=actions.deletions(o, o.current),
        requeue_after=1.0,
        signals=Signals(resized=True),
    )
