"""runPolicy.activeDeadlineSeconds: a job running longer fails and its live pods stop; until
then, the planner looks again when the deadline falls."""

from __future__ import annotations

import datetime as dt

from distml.api.models import Phase
from distml.podstate import parse_time
from distml.trainingjob import actions
from distml.trainingjob.model import Outcome, PhaseChange
from distml.trainingjob.observe import Observation


def decide(o: Observation) -> Outcome | None:
    limit = o.spec.run_policy.active_deadline_seconds
    started = parse_time(o.status.start_time)
    if limit is None or started is None:
        return None
    left = (started + dt.timedelta(seconds=limit) - o.now).total_seconds()
    if left > 0:
        return Outcome(requeue_after=left, final=False)
    return Outcome(
        phase=PhaseChange(
            Phase.FAILED,
            "DeadlineExceeded",
            f"ran longer than activeDeadlineSeconds={limit}",
            "Warning",
        ),
        status={"completion_time": o.stamp},
        delete=actions.deletions(o, o.pods, only_live=True),
    )
