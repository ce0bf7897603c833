"""One informer for the operator and the process node agent: LIST a path, then WATCH it from the
version the LIST returned, for as long as it runs. A watch whose history has expired (410 Gone)
is followed by a LIST at once; a broken one (the API server away, the connection cut), by a LIST
after a pause, retried until it answers. The callbacks get objects as the API sends them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from distml import metrics
from distml.kube import AsyncWriter, WatchExpired

log = logging.getLogger("distml.informer")
Obj = dict[str, Any]


class Informer:
    def __init__(
        self,
        api: AsyncWriter,
        path: str,
        on_list: Callable[[list[Obj]], None],
        on_event: Callable[[str, Obj], None],
        on_broken: Callable[[Exception], None] | None = None,
        on_recovered: Callable[[], None] | None = None,
        retry_seconds: float = 1.0,
    ) -> None:
        self.api, self.path = api, path
        self.on_list, self.on_event = on_list, on_event
        self.on_broken, self.on_recovered = on_broken, on_recovered
        self.retry_seconds = retry_seconds
        self.resource = path.rstrip("/").rsplit("/", 1)[-1]

    async def list(self) -> str:
        """LISTs the path into on_list; returns the version to watch from."""
        items, version = await self.api.list_objects(self.path)
        self.on_list(items)
        return version

    async def run(
        self,
        version: str | None = None,
        relist_when: Callable[[], Awaitable[object]] | None = None,
        before_list: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        """Watches from `version` (None: LIST first). `relist_when()` finishing ends the watch
        and LISTs again (a process node whose link came back); `before_list()` is awaited
        before each LIST (one that is cut off waits to be back)."""
        broken = False
        while True:
            try:
                if version is None:
                    if before_list is not None:
                        await before_list()
                    version = await self.list()
                    if broken and self.on_recovered is not None:
                        self.on_recovered()
                    broken = False
                version = await self._watch(version, relist_when)
            except asyncio.CancelledError:
                raise
            except WatchExpired:
                metrics.WATCH_RELISTS.labels(self.resource, "expired").inc()
                version = None
            except Exception as err:
                metrics.WATCH_RELISTS.labels(self.resource, "broken").inc()
                log.warning("watch of %s broke (%s: %s); listing again", self.path,
                            type(err).__name__, err)  # fmt: skip
                broken, version = True, None
                if self.on_broken is not None:
                    self.on_broken(err)
                await asyncio.sleep(self.retry_seconds)

    async def _watch(
        self, version: str, relist_when: Callable[[], Awaitable[object]] | None
    ) -> str | None:
        """One watch until the server ends it: the version to go on from, or None to LIST."""
        watch = self.api.watch_objects(self.path, version, self.on_event)
        if relist_when is None:
            return await watch
        watching = asyncio.ensure_future(watch)
        interrupt = asyncio.ensure_future(relist_when())
        try:
            done, _ = await asyncio.wait({watching, interrupt}, return_when="FIRST_COMPLETED")
        finally:
            for task in (watching, interrupt):
                task.cancel()
        if watching in done and interrupt not in done:
            return watching.result()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await watching
        return None
