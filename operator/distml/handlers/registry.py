"""One asyncio worker per TrainingJob, woken by events about the job, its pods or the nodes, and
by its own requeue timer. One worker per job means a job is never reconciled twice at once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("distml.registry")
Key = tuple[str, str, str]  # (kind, namespace, name): kinds share names, never workers
# After a reconcile, events that arrive within a short window are answered together: a gang's
# pods change state in bursts, and one reconcile per burst leaves the CPU to the API server and
# the scheduler. The window is fixed: one that grew with the reconcile's wall time (to bound a
# busy job's share) grew with every other job's load too, under a burst, and kept status seconds
# behind the pods; a reconcile reads caches, so it costs little CPU.
_COALESCE_SECONDS = 0.25


class JobWorkers:
    def __init__(self, reconcile: Callable[[Key], Awaitable[float | None]]) -> None:
        self._reconcile = reconcile
        self._wake: dict[Key, asyncio.Event] = {}
        self._tasks: dict[Key, asyncio.Task[None]] = {}
        self.waiting: set[Key] = set()  # jobs waiting for capacity: woken when GPUs free up

    def ensure(self, key: Key) -> None:
        if key not in self._tasks or self._tasks[key].done():
            self._wake[key] = asyncio.Event()
            self._tasks[key] = asyncio.create_task(
                self._run(key), name=f"{key[0]} {key[1]}/{key[2]}"
            )
        self.wake(key)

    def has(self, key: Key) -> bool:
        return key in self._tasks and not self._tasks[key].done()

    def wake(self, key: Key) -> None:
        event = self._wake.get(key)
        if event is not None:
            event.set()

    def wake_waiting(self) -> None:
        for key in list(self.waiting):
            self.wake(key)

    def wake_all(self) -> None:
        for key in list(self._wake):
            self.wake(key)

    async def forget(self, key: Key) -> None:
        task = self._tasks.pop(key, None)
        self._wake.pop(key, None)
        self.waiting.discard(key)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def stop(self) -> None:
        for key in list(self._tasks):
            await self.forget(key)

    async def _run(self, key: Key) -> None:
        event = self._wake[key]
        delay: float | None = None
        failures = 0
        while True:
            if delay is None:
                await event.wait()
            else:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(event.wait(), timeout=delay)
            event.clear()
            try:
                delay = await self._reconcile(key)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception:
                failures += 1
                delay = min(60.0, 0.5 * 2**failures)  # retry, never crash-loop
                log.exception("reconcile of %s %s/%s failed; retrying in %.1fs", *key, delay)
            await asyncio.sleep(_COALESCE_SECONDS)
