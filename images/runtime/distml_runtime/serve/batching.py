"""Dynamic batching: requests that arrive together run as one forward pass. The batcher takes
what is queued, waits at most max_queue_delay for more, up to max_batch_size rows (a request is
never split, and one that would overflow the batch opens the next), then runs the model on one
worker thread while the event loop goes on accepting requests. That trades a few milliseconds
of latency for throughput, the book's main lever for serving."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from distml_runtime.serve import telemetry


@dataclass
class _Request:
    rows: torch.Tensor
    done: asyncio.Future[torch.Tensor] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Batcher:
    """`forward` runs a batch on the model thread; or, with `pipelined` (and no `forward`), a
    coroutine that sends it into a pipeline of stages: then up to `in_flight` batches are in
    the stages at once, so that each stage works on a different one."""

    def __init__(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor] | None,
        max_batch_size: int,
        max_queue_delay: float,
        pipelined: Callable[[torch.Tensor], Awaitable[torch.Tensor]] | None = None,
        in_flight: int = 1,
    ) -> None:
        self.forward, self.max_batch_size, self.max_queue_delay = (
            forward,
            max_batch_size,
            max_queue_delay,
        )
        self.pipelined = pipelined
        self.queue: asyncio.Queue[_Request] = asyncio.Queue()
        self._held: _Request | None = None  # taken, but for the next batch
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="model")
        self._slots = asyncio.Semaphore(in_flight)
        self._running: dict[int, float] = {}  # batch -> when its forward pass began
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def busy_since(self) -> float | None:
        """When the oldest forward pass still running began."""
        return min(self._running.values(), default=None)

    async def infer(self, rows: torch.Tensor) -> torch.Tensor:
        request = _Request(rows)
        self.queue.put_nowait(request)
        telemetry.QUEUE_DEPTH.set(self.queue.qsize())
        return await request.done

    def stuck_for(self) -> float:
        """Seconds the running forward pass has taken so far (0 when idle)."""
        return 0.0 if self.busy_since is None else time.monotonic() - self.busy_since

    async def _next(self, timeout: float | None) -> _Request | None:
        if self._held is not None:
            held, self._held = self._held, None
            return held
        if timeout is None:
            return await self.queue.get()
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None

    async def _take(self) -> list[_Request]:
        first = await self._next(None)
        assert first is not None
        batch, rows = [first], len(first.rows)
        deadline = time.monotonic() + self.max_queue_delay
        while rows < self.max_batch_size:
            left = deadline - time.monotonic()
            nxt = self._next_nowait() if left <= 0 else await self._next(left)
            if nxt is None:
                break
            if rows + len(nxt.rows) > self.max_batch_size:
                self._held = nxt
                break
            batch.append(nxt)
            rows += len(nxt.rows)
        telemetry.QUEUE_DEPTH.set(self.queue.qsize())
        return batch

    def _next_nowait(self) -> _Request | None:
        try:
            return self.queue.get_nowait()
        except asyncio.QueueEmpty:
            return None

    async def run(self) -> None:
        count = 0
        while True:
            batch = [r for r in await self._take() if not r.done.cancelled()]
            if not batch:
                continue
            await self._slots.acquire()
            count += 1
            task = asyncio.get_running_loop().create_task(self._run(count, batch))
            self._tasks.add(task)  # held: the loop keeps only a weak reference
            task.add_done_callback(self._tasks.discard)

    async def _run(self, number: int, batch: list[_Request]) -> None:
        x = torch.cat([r.rows for r in batch])
        self._running[number] = t0 = time.monotonic()
        try:
            if self.pipelined is not None:
                out = await self.pipelined(x)
            else:
                assert self.forward is not None
                loop = asyncio.get_running_loop()
                out = await loop.run_in_executor(self._pool, self.forward, x)
        except Exception as err:  # a bad batch fails its requests, not the server
            for r in batch:
                if not r.done.done():
                    r.done.set_exception(err)
            return
        finally:
            del self._running[number]
            self._slots.release()
        telemetry.INFERENCE_SECONDS.observe(time.monotonic() - t0)
        telemetry.BATCH_ROWS.observe(len(x))
        start = 0
        for r in batch:
            if not r.done.done():
                r.done.set_result(out[start : start + len(r.rows)])
            start += len(r.rows)
