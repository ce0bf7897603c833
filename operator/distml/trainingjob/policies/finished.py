"""A finished job: its pods cleaned up as cleanPodPolicy says, and the job itself deleted once
ttlSecondsAfterFinished has passed since it finished."""

from __future__ import annotations

from distml.api.models import FINISHED
from distml.podstate import parse_time
from distml.trainingjob import actions
from distml.trainingjob.model import Outcome
from distml.trainingjob.observe import Observation


def decide(o: Observation) -> Outcome | None:
    if o.stored.phase not in FINISHED:
        return None
    ttl = o.spec.run_policy.ttl_seconds_after_finished
    done = parse_time(o.status.completion_time)
    if ttl is None or done is None:
        return Outcome(delete=actions.cleanup(o))
    left = ttl - (o.now - done).total_seconds()
    if left <= 0:
        return Outcome(delete=actions.cleanup(o), delete_job=True)
    return Outcome(delete=actions.cleanup(o), requeue_after=left)
