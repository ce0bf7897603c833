"""The group as an elastic TrainingJob's ranks see it: every few seconds, each running pod's
launcher says how many pods its latest rendezvous round had and how many worker restarts it
spent (distml_launch_group_size, distml_launch_worker_restarts on its /metrics). When the ranks
meet again without a pod whose node went silent, the operator learns it from them in seconds,
not when the node controller declares the node lost; and torchrun's restarts inside a pod reach
status. The readings stay in memory; a job is reconciled when one changes."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import TYPE_CHECKING, Any

from distml import podstate
from distml.api.models import KIND
from distml.handlers.podmetrics import PodMetricsReader, read_many
from distml.handlers.registry import Key
from distml.reconcile import MemberReading

if TYPE_CHECKING:
    from distml.handlers.operator import Operator

GROUP_SIZE = "distml_launch_group_size"
RESTARTS = "distml_launch_worker_restarts"


class GroupReader(PodMetricsReader):
    kind = KIND
    what = "elastic training pods' groups"

    def __init__(self, op: Operator, period: float = 2.0, timeout: float = 1.5) -> None:
        super().__init__(op, period, timeout)
        self.latest: dict[Key, dict[str, MemberReading]] = {}
        self.read_at: dict[Key, dt.datetime] = {}

    def readings(self, key: Key) -> tuple[dict[str, MemberReading], dt.datetime | None]:
        return dict(self.latest.get(key, {})), self.read_at.get(key)

    def known(self) -> list[Key]:
        return list(self.latest)

    def forget(self, key: Key) -> None:
        self.latest.pop(key, None)
        self.read_at.pop(key, None)

    async def read_job(self, key: Key, job: dict[str, Any]) -> None:
        if not (job.get("spec") or {}).get("elastic") or job["metadata"].get("deletionTimestamp"):
            self.forget(key)
            return
        pods = [
            p for p in self.op.job_pods.get(key, {}).values()
            if podstate.phase(p) == "Running" and not podstate.is_deleting(p)
        ]  # fmt: skip
        texts = await asyncio.gather(*(self.get(p) for p in pods))
        now = dt.datetime.now(dt.UTC)
        before = self.latest.get(key, {})
        latest: dict[str, MemberReading] = {}
        for pod, text in zip(pods, texts, strict=True):
            name = pod["metadata"]["name"]
            got = _parse(text, _identity(job, pod))
            if got is not None:
                latest[name] = MemberReading(now, *got)
            elif name in before:
                latest[name] = before[name]  # silent this pass: its last word stands
        then = self.read_at.get(key)
        self.latest[key], self.read_at[key] = latest, now
        # Woken when a size, a count or who answered changes.
        changed = _signature(latest, now) != _signature(before, then)
        if changed and self.op.workers.has(key):  # under peering, only the active replica acts
            self.op.workers.wake(key)


def _signature(
    readings: dict[str, MemberReading], at: dt.datetime | None
) -> dict[str, tuple[int, int, bool]]:
    return {n: (r.group_size, r.worker_restarts, r.time == at) for n, r in readings.items()}


def _identity(job: dict[str, Any], pod: dict[str, Any]) -> dict[str, str]:
    """The labels its launcher puts on its series (distml_runtime.launch.GroupGauges)."""
    return {
        "trainingjob": job["metadata"]["name"],
        "rank": str(podstate.rank(pod)),
        "generation": str(podstate.generation(pod)),
    }


def _parse(text: str | None, match: dict[str, str]) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        found = read_many(text, (GROUP_SIZE, RESTARTS), match)
    except ValueError:
        return None
    if GROUP_SIZE not in found or found[GROUP_SIZE] < 1:
        return None  # the launcher has not met its group yet
    return int(found[GROUP_SIZE]), int(found.get(RESTARTS, 0))
