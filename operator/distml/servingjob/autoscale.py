"""How many replicas an autoscaled ServingJob asks for, from its replicas' recent load.

Pure: the spec's bounds and target, the count it asks for now, readings of the load signal
(oldest first) and the time in; a decision out. Each reading recommends ceil(total / target)
replicas (the signal summed over the replicas read, so that replicas still starting, which
carry no load yet, do not dilute it), or the current count when the load per replica is within
TOLERANCE of the target. The count moves up only to the lowest recommendation of the last
upscaleDelaySeconds, and down only to the highest of the last downscaleDelaySeconds, and only
once the readings reach back that far: a burst shorter than the delay, a lull shorter than the
delay, or an operator that just started (it keeps readings in memory) changes nothing. That is
the stabilisation Kubernetes' HPA applies; steady load never flaps.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from distml.api.serving import Autoscaling
from distml.reconcile import LoadSample

TOLERANCE = 0.1  # a load within 10 % of the target at the current count moves nothing


@dataclass(frozen=True)
class Decision:
    desired: int
    value: float | None  # the signal per replica read, in the newest reading
    reporting: int
    message: str

    def direction(self, before: int) -> str:
        return "up" if self.desired > before else "down" if self.desired < before else ""


def asked_for(job: dict[str, Any]) -> int:
    """The replicas an autoscaled job asks for now, as its status records them (spec.replicas
    until the autoscaler has decided once)."""
    stored = ((job.get("status") or {}).get("autoscaling") or {}).get("desiredReplicas")
    return int(stored or (job.get("spec") or {}).get("replicas", 1))


def bounded(auto: Autoscaling, n: int) -> int:
    return min(max(n, auto.min_replicas), auto.max_replicas)


def recommend(auto: Autoscaling, current: int, sample: LoadSample) -> int:
    """The replicas one reading asks for."""
    if sample.reporting == 0:
        return current  # nothing read: no opinion
    if current and abs(sample.total / (auto.target * current) - 1) <= TOLERANCE:
        return current
    return bounded(auto, math.ceil(sample.total / auto.target - 1e-9))


def _since(now: dt.datetime, t: dt.datetime) -> float:
    return (now - t).total_seconds()


def decide(
    auto: Autoscaling, current: int, readings: Sequence[LoadSample], now: dt.datetime
) -> Decision:
    """The replicas to run now, having run (or asked for) `current`."""
    current_b = bounded(auto, current)
    metric = auto.metric
    if not readings or readings[-1].reporting == 0:
        why = "no replica's metrics read yet" if not readings else "no Ready replica to read"
        return Decision(current_b, None, 0, f"{metric}: {why}; keeping {current_b} replicas")
    newest = readings[-1]
    per = newest.total / newest.reporting
    recs = [(s.time, recommend(auto, current_b, s)) for s in readings]
    latest = recs[-1][1]
    said = f"{metric} {per:.2f} per replica over {newest.reporting} (target {auto.target:g})"
    if latest == current_b:
        return Decision(current_b, per, newest.reporting, f"{said}: {current_b} replicas")
    delay = auto.upscale_delay_seconds if latest > current_b else auto.downscale_delay_seconds
    window = [r for t, r in recs[:-1] if _since(now, t) <= delay] + [latest]
    if _since(now, recs[0][0]) < delay:
        held = f"{said}: asks for {latest}, for less than {delay:g}s yet; {current_b} replicas"
        return Decision(current_b, per, newest.reporting, held)
    desired = max(current_b, min(window)) if latest > current_b else min(current_b, max(window))
    if desired == current_b:
        held = f"{said}: asked for {latest}, not for all of the last {delay:g}s; {desired} replicas"
        return Decision(desired, per, newest.reporting, held)
    return Decision(desired, per, newest.reporting, f"{said}: {current_b} -> {desired} replicas")
