"""The serving server: the Open Inference Protocol over HTTP (aiohttp), dynamic batching, and
readiness that tells the truth.

- Ready (`/v2/health/ready`, `/v2/models/NAME/ready`) only once the model is loaded and a real
  inference through the whole path (batcher, model, response) has passed; not while it waits
  for a checkpoint to appear, not while a forward pass has hung for `stuck_seconds` (then the
  liveness probe fails too, at twice that), and not once it drains.
- Draining (SIGTERM): not ready at once, so the endpoints drop it, while it keeps answering for
  `drain_seconds` (endpoint updates take a moment to reach every client), each answer closing
  its connection (a client's next request opens a new one, through the Service, elsewhere);
  then it stops taking connections, finishes what is in flight, and exits 0.
- A body longer than `max_request_bytes` is refused with 413 before it is read.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from aiohttp import web
from torch import nn

from distml_runtime.pipeline.models import DIGITS_FEATURES
from distml_runtime.serve import protocol, telemetry
from distml_runtime.serve.batching import Batcher
from distml_runtime.serve.protocol import ProtocolError, TensorSpec
from distml_runtime.serve.stages import (
    Head,
    LostPeer,
    StageConfig,
    exit_lost,
    model_layers,
    stage_module,
)

CLASSES = 10
LEAVE_SECONDS = 0.2  # a server whose pipeline broke: the longest it waits for answers in flight
INPUT = TensorSpec("input", "FP32", (-1, DIGITS_FEATURES))
OUTPUTS = [TensorSpec("logits", "FP32", (-1, CLASSES)), TensorSpec("label", "INT64", (-1,))]


@dataclass
class Config:
    model_name: str = "digits"
    model_version: str = "1"
    checkpoint_dir: str = ""  # empty: the built-in demo model
    max_batch_size: int = 32
    max_queue_delay: float = 0.005
    drain_seconds: float = 5.0
    max_request_bytes: int = 8 << 20
    stuck_seconds: float = 10.0
    demo_hidden: int = 128  # the built-in model's width (benchmarks make it costlier)
    widths: tuple[int, ...] = ()  # the MLP's hidden layers; empty: two of demo_hidden
    stage: StageConfig | None = None  # stage 0 of a pipeline-split replica
    paced_layer_seconds: float = 0.0  # benchmarks: each layer also waits this long per pass

    @property
    def hidden(self) -> tuple[int, ...]:
        return self.widths or (self.demo_hidden, self.demo_hidden)


async def load_layers(
    config: Config, waiting: Callable[[str], None] = print
) -> tuple[list[nn.Module], str]:
    """The served model's layers (the built-in one, seeded, or the newest checkpoint, waited
    for), and where they came from."""
    from distml_runtime.train import checkpoint

    if not config.checkpoint_dir:
        return (
            model_layers(config.hidden, paced_seconds=config.paced_layer_seconds),
            "the built-in demo model (untrained, seeded)",
        )
    folder = Path(config.checkpoint_dir)
    while (latest := checkpoint.newest(folder)) is None:
        waiting(f"waiting for a checkpoint in {folder}")
        await asyncio.sleep(1.0)
    waiting(f"loading {latest}")
    state = await asyncio.get_running_loop().run_in_executor(None, checkpoint.load, latest)
    return model_layers(config.hidden, state["model"], config.paced_layer_seconds), str(latest)


def _json(code: int, doc: dict[str, Any]) -> web.Response:
    return web.json_response(doc, status=code)


class Server:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.state, self.reason = "loading", "loading the model"
        self.batcher: Batcher | None = None
        self._batching: asyncio.Task[None] | None = None
        self.source = ""
        self.head: Head | None = None
        self.answering = 0  # inference requests whose handler has not returned
        self._leaving: asyncio.Task[None] | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    async def load(self) -> None:
        """Loads the model (waiting for a checkpoint when there is none yet), warms it up with
        one real inference, and only then says ready."""

        def waiting(why: str) -> None:
            self.reason = why

        layers, self.source = await load_layers(self.config, waiting)
        c = self.config
        if c.stage is None:
            model = nn.Sequential(*layers).eval()

            def forward(x: torch.Tensor) -> torch.Tensor:
                with torch.inference_mode():
                    return model(x)

            self.batcher = Batcher(forward, c.max_batch_size, c.max_queue_delay)
        else:  # stage 0 keeps only its own layers; the others' go with `layers`
            self.state, self.reason = (
                "linking",
                f"waiting for its {c.stage.stages - 1} other stages",
            )
            self.head = Head(c.stage, stage_module(layers, c.stage), self.lost)
            try:
                await self.head.open()
            except LostPeer as err:
                self.lost(str(err))
                return
            self.batcher = Batcher(None, c.max_batch_size, c.max_queue_delay,
                                   self.head.forward, c.stage.stages)  # fmt: skip
        # Held: the event loop keeps only a weak reference to a task.
        self._batching = asyncio.get_running_loop().create_task(self.batcher.run())
        self.state, self.reason = "warming", "warming up"
        try:
            out = await self.batcher.infer(torch.zeros(1, DIGITS_FEATURES))
            if tuple(out.shape) != (1, CLASSES) or not torch.isfinite(out).all():
                raise ValueError(f"it answered {tuple(out.shape)} with non-finite values")
        except Exception as err:
            self.state, self.reason = "failed", f"the warm-up inference failed: {err}"
            print(json.dumps({"event": "warmup-failed", "error": str(err)}), flush=True)
            return
        self.state, self.reason = "ready", "ready"
        telemetry.READY.set(1)
        print(json.dumps({"event": "ready", "model": self.source}), flush=True)

    def lost(self, why: str) -> None:
        """A stage of its pipeline is gone: not ready, and the process ends (its pod fails,
        and the operator replaces every stage) once the requests in flight have had their
        error."""
        self.state, self.reason = "failed", f"a stage was lost: {why}"
        telemetry.READY.set(0)
        self._leaving = asyncio.get_running_loop().create_task(self._leave())

    async def _leave(self) -> None:
        """Exits as soon as the requests in flight have their answers (at most LEAVE_SECONDS):
        until its pod has failed, the Service still sends requests here to fail."""
        deadline = time.monotonic() + LEAVE_SECONDS
        while self.answering and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
        await asyncio.sleep(0.01)  # their responses written
        exit_lost()

    def drain(self) -> None:
        self.state, self.reason = "draining", "draining: shutting down"
        telemetry.READY.set(0)

    # --- probes ------------------------------------------------------------------------------

    def ready(self) -> tuple[bool, str]:
        stuck = self.batcher.stuck_for() if self.batcher else 0.0
        if self.state == "ready" and stuck > self.config.stuck_seconds:
            return False, f"a forward pass has not returned for {stuck:.0f}s"
        return self.state == "ready", self.reason

    async def live(self, _: web.Request) -> web.Response:
        stuck = self.batcher.stuck_for() if self.batcher else 0.0
        if stuck > 2 * self.config.stuck_seconds:
            return _json(503, {"live": False, "reason": f"a forward pass hung for {stuck:.0f}s"})
        return _json(200, {"live": True})

    async def server_ready(self, _: web.Request) -> web.Response:
        ok, why = self.ready()
        return _json(200 if ok else 503, {"ready": ok, "reason": why})

    async def metadata(self, _: web.Request) -> web.Response:
        return _json(200, {"name": "distml", "version": "0.1.0",
                           "extensions": ["binary_tensor_data"]})  # fmt: skip

    def _model_of(self, request: web.Request) -> None:
        name = request.match_info["model"]
        version = request.match_info.get("version")
        if name != self.config.model_name or version not in (None, self.config.model_version):
            v = f" version {version}" if version else ""
            c = self.config
            why = f"no model {name!r}{v}; this server serves {c.model_name!r} version "
            raise web.HTTPNotFound(
                text=json.dumps({"error": why + c.model_version}), content_type="application/json"
            )

    async def model_metadata(self, request: web.Request) -> web.Response:
        self._model_of(request)
        return _json(
            200,
            {
                "name": self.config.model_name,
                "versions": [self.config.model_version],
                "platform": "pytorch",
                "inputs": [INPUT.doc()],
                "outputs": [o.doc() for o in OUTPUTS],
            },
        )

    async def model_ready(self, request: web.Request) -> web.Response:
        self._model_of(request)
        ok, why = self.ready()
        return _json(200 if ok else 503, {"name": self.config.model_name, "ready": ok,
                                          "reason": why})  # fmt: skip

    # --- inference ---------------------------------------------------------------------------

    async def infer(self, request: web.Request) -> web.Response:
        self._model_of(request)
        if self.batcher is None or self.state not in ("ready", "draining"):
            return _json(503, {"error": f"not ready: {self.reason}"})
        body = await request.read()
        try:
            parsed = protocol.parse_request(
                body,
                request.headers.get(protocol.HEADER_LENGTH),
                {INPUT.name: INPUT},
                [o.name for o in OUTPUTS],
            )
        except ProtocolError as err:
            return _json(400, {"error": str(err)})
        rows = parsed.inputs[INPUT.name]
        if len(rows) == 0 or len(rows) > self.config.max_batch_size:
            return _json(400, {"error": f"inputs: {len(rows)} rows; this model takes 1 to "
                               f"{self.config.max_batch_size} per request"})  # fmt: skip
        if not np.isfinite(rows).all():
            return _json(400, {"error": "inputs: values must be finite numbers"})
        logits = await self.batcher.infer(torch.tensor(np.array(rows)))
        outputs = {
            "logits": ("FP32", logits.numpy()),
            "label": ("INT64", logits.argmax(dim=1).numpy().astype(np.int64)),
        }
        body, headers = protocol.encode_response(
            self.config.model_name, self.config.model_version, parsed, outputs
        )
        kind = "application/octet-stream" if headers else "application/json"
        return web.Response(body=body, headers=headers, content_type=kind)

    @web.middleware
    async def accounting(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Counts inference requests by answer (probes are not traffic); every error as JSON."""
        counted = request.method == "POST"
        t0 = time.perf_counter()
        if counted:
            telemetry.IN_FLIGHT.inc()
            self.answering += 1
        try:
            response = await handler(request)
        except web.HTTPRequestEntityTooLarge:
            response = _json(413, {"error": f"the body is larger than "
                                   f"{self.config.max_request_bytes} bytes"})  # fmt: skip
        except web.HTTPException as err:
            response = err if err.content_type == "application/json" else _json(
                err.status, {"error": err.reason}
            )  # fmt: skip
        except Exception as err:
            response = _json(500, {"error": f"inference failed: {err}"})
        finally:
            if counted:
                telemetry.IN_FLIGHT.dec()
                self.answering -= 1
        if counted:
            telemetry.REQUESTS.labels(code=str(response.status)).inc()
            if response.status == 200:
                telemetry.REQUEST_SECONDS.observe(time.perf_counter() - t0)
        if self.state in ("draining", "failed"):
            # A kept-alive connection would go on bringing requests here, past the Service:
            # the client opens a new one for its next request, and the Service sends that to
            # a replica that stays.
            response.force_close()
        return response

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_request_bytes,
                              middlewares=[self.accounting])  # fmt: skip
        model = "/v2/models/{model}"
        versioned = "/v2/models/{model}/versions/{version}"
        app.router.add_get("/v2/health/live", self.live)
        app.router.add_get("/v2/health/ready", self.server_ready)
        app.router.add_get("/v2", self.metadata)
        for base in (model, versioned):
            app.router.add_get(base, self.model_metadata)
            app.router.add_get(f"{base}/ready", self.model_ready)
            app.router.add_post(f"{base}/infer", self.infer)
        return app


async def serve(config: Config, host: str, port: int) -> int:
    server = Server(config)
    runner = web.AppRunner(server.app(), access_log=None, handle_signals=False,
                           shutdown_timeout=max(30.0, config.drain_seconds))  # fmt: skip
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    print(json.dumps({"event": "serving", "port": port}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loading = loop.create_task(server.load())
    await stop.wait()
    server.drain()
    print(json.dumps({"event": "draining", "seconds": config.drain_seconds}), flush=True)
    await asyncio.sleep(config.drain_seconds)
    loading.cancel()
    await runner.cleanup()  # stops listening, then waits for the requests in flight
    print(json.dumps({"event": "stopped"}), flush=True)
    return 0
