"""A new generation is admitted only once the previous generation's pods are gone: they hold
GPUs, and ranks of two generations must never meet in one rendezvous."""

from __future__ import annotations

from distml import podstate
from distml.api.models import Phase
from distml.trainingjob.model import Outcome, PhaseChange
from distml.trainingjob.observe import Observation


def decide(o: Observation) -> Outcome | None:
    if o.admission is not None:
        return None
    if not any(not podstate.is_terminal(p) or podstate.is_deleting(p) for p in o.stale):
        return None
    phase = None
    if o.stored.phase not in (Phase.RESTARTING, Phase.QUEUED):
        phase = PhaseChange(
            Phase.QUEUED, "WaitingForPods", "waiting for the previous generation's pods to go"
        )
    return Outcome(phase=phase, requeue_after=1.0)
