"""A serving replica split into a pipeline of stage processes (ServingJob spec.pipeline).

Stage 0 serves the protocol and runs the first layers; the batches its batcher forms (each cut
into `microbatches` pieces) stream through the stages, up to one per stage in flight so that
each stage works on a different one, and the last stage sends its output back to stage 0.
Stage k listens on its port for what stage k - 1 sends (stage 0: for the last stage's outputs)
and connects to the next one by name.

The transport is plain TCP streams, one per hop, with a 16-byte header (sequence number, rows,
columns) before each micro-batch's float32 rows. Chosen over torch.distributed's send/recv:
serving streams batches of every size for as long as the replica lives, and must notice a lost
neighbour within seconds; gloo's send/recv need a matching receive of a known size per message,
and a receive cannot be abandoned without wrecking the group, nor bounded except by the whole
group's timeout. On a GPU cluster the same frames would go over NCCL; here the activations of a
batch are kilobytes, and one TCP hop costs what gloo's would.

A lost neighbour: an idle stage 0 sends a heartbeat (an empty frame) round the ring every
second; a stage that hears nothing from its upstream for the peer timeout, or whose connection
breaks, exits with LOST_PEER_EXIT. Stage 0 then fails its requests in flight and exits too, so
its pod fails, the replica leaves the Service at once, and the operator replaces the whole group.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import nn

from distml_runtime.pipeline.models import mlp_layers

HEADER = struct.Struct("<qii")  # sequence number, rows, columns
HEARTBEAT_SECONDS = 1.0
CONNECT_SECONDS = 600.0  # how long a stage keeps trying to reach the next one at start
LOST_PEER_EXIT = 75
Range = tuple[int, int]


class LostPeer(RuntimeError):
    """A neighbouring stage went silent or its connection broke."""


@dataclass(frozen=True)
class StageConfig:
    stage: int
    stages: int
    ranges: tuple[Range, ...]  # every stage's layers [start, end)
    listen: int  # the port this stage takes frames on
    next: str  # host:port of the next stage (the last: of stage 0)
    microbatches: int = 1
    peer_timeout: float = 5.0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> StageConfig | None:
        """The operator's contract (DISTML_STAGE*); None for a replica of one pod."""
        env = dict(os.environ) if env is None else env
        if int(env.get("DISTML_STAGES", "1")) < 2:
            return None
        return cls(
            stage=int(env["DISTML_STAGE"]),
            stages=int(env["DISTML_STAGES"]),
            ranges=parse_ranges(env["DISTML_STAGE_RANGES"]),
            listen=int(env["DISTML_STAGE_LISTEN"]),
            next=env["DISTML_STAGE_NEXT"],
            microbatches=int(env.get("DISTML_MICROBATCHES", "1")),
            peer_timeout=float(env.get("DISTML_PEER_TIMEOUT_SECONDS", "5")),
        )

    @property
    def layers(self) -> Range:
        return self.ranges[self.stage]


def parse_ranges(text: str) -> tuple[Range, ...]:
    """ "0:2,2:5" -> ((0, 2), (2, 5))."""
    out = []
    for part in text.split(","):
        a, _, b = part.partition(":")
        out.append((int(a), int(b)))
    return tuple(out)


class Paced(nn.Module):
    """A layer that also waits `seconds` per forward pass, as a host thread waits on a GPU
    kernel: for benchmarks on a few CPU cores, where stages would otherwise contend for the
    same cores that separate accelerators would not share. The output is the layer's."""

    def __init__(self, inner: nn.Module, seconds: float) -> None:
        super().__init__()
        self.inner, self.seconds = inner, seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        time.sleep(self.seconds)
        return out


def model_layers(
    widths: Sequence[int],
    state: dict[str, torch.Tensor] | None = None,
    paced_seconds: float = 0.0,
) -> list[nn.Module]:
    """The served MLP as its layers (seeded as the built-in model is), with a checkpoint's
    weights (train.ddp's flat Sequential) when given: its Linear weights in order; each layer
    Paced when `paced_seconds`."""
    layers = mlp_layers(widths, seed=0)
    if state is not None:
        _load(layers, widths, state)
    return [Paced(layer, paced_seconds) for layer in layers] if paced_seconds else layers


def _load(layers: list[nn.Module], widths: Sequence[int], state: dict[str, torch.Tensor]) -> None:
    linears = [m for layer in layers for m in layer.modules() if isinstance(m, nn.Linear)]
    keys = sorted(
        {k.rsplit(".", 1)[0] for k in state},
        key=lambda k: [int(p) for p in k.split(".") if p.isdigit()],
    )
    if len(keys) != len(linears):
        raise ValueError(
            f"the checkpoint has {len(keys)} layers; a model of widths {list(widths)} has "
            f"{len(linears)}"
        )
    for key, linear in zip(keys, linears, strict=True):
        weight, bias = state[f"{key}.weight"], state[f"{key}.bias"]
        if weight.shape != linear.weight.shape:
            raise ValueError(
                f"checkpoint layer {key}: {tuple(weight.shape)}; widths {list(widths)} need "
                f"{tuple(linear.weight.shape)}"
            )
        linear.weight.data.copy_(weight)
        linear.bias.data.copy_(bias)


def stage_module(layers: Sequence[nn.Module], cfg: StageConfig) -> nn.Module:
    start, end = cfg.layers
    return nn.Sequential(*layers[start:end]).eval().requires_grad_(False)


# --- frames ------------------------------------------------------------------------------------


async def write_frame(writer: asyncio.StreamWriter, seq: int, x: torch.Tensor | None) -> None:
    if x is None:
        writer.write(HEADER.pack(seq, 0, 0))
    else:
        x = x.detach().to(torch.float32).contiguous()
        writer.write(HEADER.pack(seq, x.shape[0], x.shape[1]) + x.numpy().tobytes())
    await writer.drain()


async def read_frame(
    reader: asyncio.StreamReader, timeout: float, who: str
) -> tuple[int, torch.Tensor | None]:
    try:
        head = await asyncio.wait_for(reader.readexactly(HEADER.size), timeout)
        seq, rows, cols = HEADER.unpack(head)
        if not rows:
            return seq, None
        data = await asyncio.wait_for(reader.readexactly(rows * cols * 4), timeout)
    except TimeoutError:
        raise LostPeer(f"nothing from {who} for {timeout:g}s") from None
    except (asyncio.IncompleteReadError, ConnectionError) as err:
        raise LostPeer(f"{who} closed the connection ({type(err).__name__})") from None
    rows_t = torch.frombuffer(bytearray(data), dtype=torch.float32)
    return seq, rows_t.view(rows, cols)


async def connect(address: str, deadline: float) -> asyncio.StreamWriter:
    """Connects to host:port, retrying (the next stage's pod may not be up, or named, yet)."""
    host, _, port = address.rpartition(":")
    while True:
        try:
            _, writer = await asyncio.open_connection(host, int(port))
            return writer
        except OSError as err:
            if time.monotonic() > deadline:
                raise LostPeer(f"could not reach {address}: {err}") from None
            await asyncio.sleep(0.5)


class Links:
    """This stage's two hops: frames in from upstream, frames out to the next stage."""

    def __init__(self, cfg: StageConfig) -> None:
        self.cfg = cfg
        self.upstream = f"stage {(cfg.stage - 1) % cfg.stages}"
        self.downstream = f"stage {(cfg.stage + 1) % cfg.stages}"
        self._accepted: asyncio.Queue[asyncio.StreamReader] = asyncio.Queue()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self._server: asyncio.Server | None = None

    async def open(self) -> None:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._accepted.put(reader)

        self._server = await asyncio.start_server(accept, "0.0.0.0", self.cfg.listen)
        deadline = time.monotonic() + CONNECT_SECONDS
        self.writer = await connect(self.cfg.next, deadline)
        try:
            self.reader = await asyncio.wait_for(self._accepted.get(), CONNECT_SECONDS)
        except TimeoutError:
            raise LostPeer(f"{self.upstream} never connected") from None
        _event("stage-linked", stage=self.cfg.stage, next=self.cfg.next)

    async def send(self, seq: int, x: torch.Tensor | None) -> None:
        assert self.writer is not None
        try:
            await write_frame(self.writer, seq, x)
        except (ConnectionError, OSError) as err:
            raise LostPeer(f"{self.downstream} closed the connection ({err})") from None

    async def receive(self) -> tuple[int, torch.Tensor | None]:
        assert self.reader is not None
        return await read_frame(self.reader, self.cfg.peer_timeout, self.upstream)


def _event(name: str, **fields: object) -> None:
    print(json.dumps({"event": name, **fields}), flush=True)


# --- a stage after the first -------------------------------------------------------------------


async def run_stage(cfg: StageConfig, module: nn.Module) -> int:
    """Receives, computes, sends on, in order, until a neighbour is lost or SIGTERM."""
    links = Links(cfg)
    pool = ThreadPoolExecutor(1, thread_name_prefix="stage")
    loop = asyncio.get_running_loop()

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return module(x)

    try:
        await links.open()
        while True:
            seq, x = await links.receive()
            y = None if x is None else await loop.run_in_executor(pool, forward, x)
            await links.send(seq, y)
    except LostPeer as err:
        _event("peer-lost", stage=cfg.stage, reason=str(err))
        return LOST_PEER_EXIT


# --- stage 0 -------------------------------------------------------------------------------------


class Head:
    """Stage 0's side of the ring: `forward` cuts a batch into micro-batches, runs the first
    layers on each and sends it on; the outputs come back from the last stage. Whatever breaks
    the ring calls `lost` once, with the reason."""

    def __init__(self, cfg: StageConfig, module: nn.Module, lost: Callable[[str], None]) -> None:
        self.cfg, self.module, self.lost = cfg, module, lost
        self.links = Links(cfg)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="stage0")
        self._waiting: dict[int, asyncio.Future[torch.Tensor]] = {}
        self._seq = 0
        self._last_sent = 0.0
        self._send_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self.error = ""

    async def open(self) -> None:
        await self.links.open()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._receive()), loop.create_task(self._heartbeat())]

    def _fail(self, why: str) -> None:
        if self.error:
            return
        self.error = why
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(LostPeer(why))
        self._waiting.clear()
        _event("peer-lost", stage=0, reason=why)
        self.lost(why)

    async def _send(self, seq: int, x: torch.Tensor | None) -> None:
        async with self._send_lock:  # a frame's header and rows go together
            self._last_sent = time.monotonic()
            await self.links.send(seq, x)

    async def _receive(self) -> None:
        try:
            while True:
                seq, y = await self.links.receive()
                fut = self._waiting.pop(seq, None)
                if fut is not None and y is not None and not fut.done():
                    fut.set_result(y)
        except LostPeer as err:
            self._fail(str(err))

    async def _heartbeat(self) -> None:
        try:
            while True:
                await asyncio.sleep(HEARTBEAT_SECONDS / 2)
                if time.monotonic() - self._last_sent >= HEARTBEAT_SECONDS:
                    await self._send(-1, None)
        except LostPeer as err:
            self._fail(str(err))

    async def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.error:
            raise LostPeer(self.error)
        loop = asyncio.get_running_loop()
        outs: list[asyncio.Future[torch.Tensor]] = []
        for chunk in x.tensor_split(min(self.cfg.microbatches, len(x))):
            y = await loop.run_in_executor(self._pool, self._first, chunk)
            self._seq += 1
            fut: asyncio.Future[torch.Tensor] = loop.create_future()
            self._waiting[self._seq] = fut
            outs.append(fut)
            try:
                await self._send(self._seq, y)
            except LostPeer as err:
                self._fail(str(err))
                raise
        return torch.cat(await asyncio.gather(*outs))

    def _first(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.module(x)


def exit_lost(code: int = LOST_PEER_EXIT) -> None:
    """Leaves at once: the pod fails, and the operator replaces the replica's every stage."""
    sys.stdout.flush()
    os._exit(code)
