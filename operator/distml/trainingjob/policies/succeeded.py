"""Every worker of the generation exited 0: the job succeeded."""

from __future__ import annotations

from distml.api.models import Phase
from distml.trainingjob import actions
from distml.trainingjob.model import Outcome
from distml.trainingjob.observe import Observation


def decide(o: Observation) -> Outcome | None:
    if o.admission is None or len(o.in_phase("Succeeded")) != o.want:
        return None
    return actions.finish(o, Phase.SUCCEEDED, "Succeeded", f"all {o.want} workers exited 0")
