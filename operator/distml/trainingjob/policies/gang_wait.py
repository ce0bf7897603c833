"""A gang not all running yet: it is Creating until spec.gang.timeoutSeconds after admission;
then every pod is released (they would hold GPUs for a gang that cannot start) and it queues
again after a backoff."""

from __future__ import annotations

import datetime as dt

from distml.api.models import Phase
from distml.podstate import parse_time
from distml.trainingjob import actions
from distml.trainingjob.model import Outcome, PhaseChange, Signals
from distml.trainingjob.observe import Observation


def decide(o: Observation) -> Outcome | None:
    if o.admission is None:
        return None
    admitted = parse_time(o.status.admitted_time) or o.now
    limit = o.spec.gang.timeout_seconds
    left = (admitted + dt.timedelta(seconds=limit) - o.now).total_seconds()
    if o.stored.phase == Phase.RUNNING or left > 0:
        phase = None
        if o.stored.phase not in (Phase.CREATING, Phase.RUNNING):
            phase = PhaseChange(Phase.CREATING, "Creating", "waiting for every worker to run")
        return Outcome(
            phase=phase, requeue_after=left if left > 0 else o.settings.queued_recheck_seconds
        )
    running = len(o.in_phase("Running"))
    return actions.release(
        o,
        "GangTimeout",
        lambda wait: (
            f"only {running}/{o.want} workers were Running after {limit}s; released "
            f"every pod, next attempt in {wait:.0f}s"
        ),
        signals=Signals(gang_timeout=True),
    )
