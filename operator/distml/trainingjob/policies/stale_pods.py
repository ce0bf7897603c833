"""Pods of an earlier restart generation are deleted, whatever else is decided (a pod already
going on a healthy node is left to finish)."""

from __future__ import annotations

from distml.trainingjob import actions
from distml.trainingjob.model import Outcome
from distml.trainingjob.observe import Observation


def decide(o: Observation) -> Outcome | None:
    doomed = actions.deletions(o, o.stale)
    return Outcome(delete=doomed, final=False) if doomed else None
