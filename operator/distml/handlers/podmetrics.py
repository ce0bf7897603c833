"""Reading what pods say on their own /metrics, every few seconds, for the operator's decisions:
the serving load (autoscaler) and the training group (groups). One GET per pod per pass, on the
port named `metrics`, else 9400; a pod that does not answer is left out of that pass."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from distml import labels
from distml.handlers.registry import Key

if TYPE_CHECKING:
    from distml.handlers.operator import Operator

log = logging.getLogger(__name__)


def metrics_port(pod: dict[str, Any]) -> int:
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == "metrics":
                return int(port["containerPort"])
    return labels.METRICS_PORT


def read_series(text: str, name: str) -> float | None:
    return read_many(text, (name,)).get(name)


def read_many(
    text: str, names: tuple[str, ...], match: dict[str, str] | None = None
) -> dict[str, float]:
    """The first sample of each named series that the exposition has (with these labels)."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in names and sample.name not in found:
                if match and any(sample.labels.get(k) != v for k, v in match.items()):
                    continue
                found[sample.name] = float(sample.value)
    return found


class PodMetricsReader:
    """Every `period` seconds, `read_job` for every job of `kind` the operator knows."""

    kind = ""
    what = ""  # for the log

    def __init__(self, op: Operator, period: float = 2.0, timeout: float = 1.5) -> None:
        self.op, self.period, self.timeout = op, period, timeout
        self.session: aiohttp.ClientSession | None = None

    def known(self) -> Iterable[Key]:
        raise NotImplementedError

    def forget(self, key: Key) -> None:
        raise NotImplementedError

    async def read_job(self, key: Key, job: dict[str, Any]) -> None:
        raise NotImplementedError

    async def run_forever(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.period)
                try:
                    await self.read_all()
                except Exception:
                    log.exception("reading %s failed", self.what)
        finally:
            if self.session is not None:
                await self.session.close()

    async def read_all(self) -> None:
        if self.session is None:
            self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        jobs = {k: j for k, j in list(self.op.jobs.items()) if k[0] == self.kind}
        for key in [k for k in self.known() if k not in jobs]:
            self.forget(key)
        await asyncio.gather(*(self.read_job(key, job) for key, job in jobs.items()))

    async def get(self, pod: dict[str, Any]) -> str | None:
        """The pod's /metrics text; None when it has no address or does not answer."""
        ip = (pod.get("status") or {}).get("podIP")
        if not ip:
            return None
        url = f"http://{ip}:{metrics_port(pod)}/metrics"
        assert self.session is not None
        try:
            async with self.session.get(url) as resp:
                return await resp.text()
        except (aiohttp.ClientError, TimeoutError, ValueError) as err:
            log.debug("reading %s: %s", url, err)
            return None
