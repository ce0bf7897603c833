"""Every worker of the generation runs (or has finished): the job is Running; the first time,
how long the gang took from admission to running is measured."""

from __future__ import annotations

from distml import podstate
from distml.api.models import Phase
from distml.podstate import parse_time
from distml.trainingjob.model import Outcome, PhaseChange, Signals
from distml.trainingjob.observe import Observation


def decide(o: Observation) -> Outcome | None:
    if o.admission is None:
        return None
    running, succeeded = o.in_phase("Running"), o.in_phase("Succeeded")
    if len(running) + len(succeeded) != o.want or any(podstate.is_deleting(p) for p in o.current):
        return None
    signals = Signals()
    admitted = parse_time(o.status.admitted_time)
    if o.stored.phase != Phase.RUNNING and admitted is not None:
        signals = Signals(started_seconds=(o.now - admitted).total_seconds())
    message = f"{len(running)} workers running"
    if succeeded:
        message += f", {len(succeeded)} finished"
    return Outcome(
        phase=PhaseChange(Phase.RUNNING, "Running", message),
        status={"next_attempt_time": None},
        signals=signals,
    )
