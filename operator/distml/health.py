"""The operator's probes, served from its first second, before it can reach the API server:
`/healthz` (alive: the event loop answers) and `/readyz` (ready: caches filled and every watch
current; 503 with the reason otherwise)."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web


async def serve(port: int, ready: Callable[[], tuple[bool, str]]) -> web.AppRunner:
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        ok, why = ready()
        return web.Response(status=200 if ok else 503, text=f"{why}\n")

    app = web.Application()
    app.add_routes([web.get("/healthz", healthz), web.get("/readyz", readyz)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    return runner
