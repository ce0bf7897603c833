"""The autoscaler's I/O: every few seconds, the load signal of every autoscaled ServingJob's
serving Ready replicas, read from their own metrics endpoints (distml_serve_inflight_requests or
distml_serve_queue_depth on the port named `metrics`, else 9400), as KServe's autoscaler reads
its queue proxies. The readings stay in memory (an operator that restarts waits a delay window
before it scales again, which is safe); a job is reconciled when they change its decision
(distml.servingjob.autoscale), and its planner records the decision before acting on it."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
from typing import TYPE_CHECKING, Any

from distml import labels, metrics, podstate
from distml.api.serving import KIND, Autoscaling, LoadMetric
from distml.handlers.podmetrics import PodMetricsReader, read_series
from distml.handlers.registry import Key
from distml.reconcile import LoadSample
from distml.servingjob import autoscale

if TYPE_CHECKING:
    from distml.handlers.operator import Operator

SERIES = {
    LoadMetric.IN_FLIGHT: "distml_serve_inflight_requests",
    LoadMetric.QUEUE_DEPTH: "distml_serve_queue_depth",
}


def serving_ready(pod: dict[str, Any]) -> bool:
    """In its Service and Ready: a replica whose load counts (a pipeline's later stages are in
    no Service: their replica's load is its stage 0's)."""
    serving = (pod["metadata"].get("labels") or {}).get(labels.SERVING) == "true"
    return podstate.is_ready(pod) and serving and not podstate.is_deleting(pod)


class LoadReader(PodMetricsReader):
    kind = KIND
    what = "serving replicas' load"

    def __init__(self, op: Operator, period: float = 2.0, timeout: float = 1.5) -> None:
        super().__init__(op, period, timeout)
        self.history: dict[Key, collections.deque[LoadSample]] = {}

    def readings(self, key: Key) -> tuple[LoadSample, ...]:
        return tuple(self.history.get(key, ()))

    def known(self) -> list[Key]:
        return list(self.history)

    def forget(self, key: Key) -> None:
        self.history.pop(key, None)

    async def read_job(self, key: Key, job: dict[str, Any]) -> None:
        spec = job.get("spec") or {}
        if not spec.get("autoscaling") or job["metadata"].get("deletionTimestamp"):
            self.forget(key)
            return
        auto = Autoscaling.model_validate(spec["autoscaling"])
        pods = [p for p in self.op.job_pods.get(key, {}).values() if serving_ready(p)]
        series = SERIES[LoadMetric(auto.metric)]
        values = await asyncio.gather(*(self._read(p, series) for p in pods))
        got = [v for v in values if v is not None]
        now = dt.datetime.now(dt.UTC)
        history = self.history.setdefault(key, collections.deque())
        history.append(LoadSample(now, sum(got), len(got)))
        keep = max(auto.upscale_delay_seconds, auto.downscale_delay_seconds) + 3 * self.period
        while history and (now - history[0].time).total_seconds() > keep:
            history.popleft()
        current = autoscale.asked_for(job)
        moves = autoscale.decide(auto, current, tuple(history), now).desired != current
        if moves and self.op.workers.has(key):  # under peering, only the active replica acts
            self.op.workers.wake(key)

    async def _read(self, pod: dict[str, Any], series: str) -> float | None:
        text = await self.get(pod)
        try:
            value = read_series(text, series) if text is not None else None
        except ValueError:  # not an exposition
            value = None
        if value is None:
            metrics.AUTOSCALE_READS_FAILED.inc()
        return value
