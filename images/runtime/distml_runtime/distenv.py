"""Joining a torch.distributed job: from torchrun's environment inside a pod, or by spawning N
local ranks on this machine (for tests, benchmarks and laptops)."""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import os
import socket
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from distml_runtime import peers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pick_backend(requested: str | None = None) -> str:
    if requested:
        if requested == "nccl" and not torch.cuda.is_available():
            raise RuntimeError("--backend nccl needs a CUDA GPU; none is visible here")
        return requested
    return "nccl" if torch.cuda.is_available() else "gloo"


def device_for(backend: str) -> torch.device:
    if backend == "nccl":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init(backend: str) -> torch.device:
    """Initialises the default group from RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT (as torchrun
    sets them), or as a job of one when they are absent."""
    device = device_for(backend)
    if not under_launcher():  # a plain `python -m ...`: a job of one
        os.environ.update(
            {
                "RANK": "0",
                "WORLD_SIZE": "1",
                "LOCAL_RANK": "0",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(free_port()),
            }
        )
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {}
        if backend == "nccl":
            kwargs["device_id"] = device
        limit = peers.timeout()  # how long a collective waits for a silent peer
        if limit is not None:
            kwargs["timeout"] = limit
        dist.init_process_group(backend=backend, **kwargs)
    return device


def _spawned(
    local_rank: int,
    nproc: int,
    port: int,
    ranks_per_node: int,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
) -> None:
    os.environ.update(
        {
            "RANK": str(local_rank),
            "WORLD_SIZE": str(nproc),
            "LOCAL_RANK": str(local_rank),
            "LOCAL_WORLD_SIZE": str(ranks_per_node),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "GROUP_RANK": str(local_rank // ranks_per_node),
            # The parent hosts the rendezvous store, as torchrun's agent does: every rank is a
            # client, and the store outlives them all.
            "TORCHELASTIC_USE_AGENT_STORE": "True",
        }
    )
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    faulthandler.enable()  # a rank that dies of a signal logs its Python stacks, as under launch
    torch.set_num_threads(1)
    code, ended = 0, False
    try:
        fn(*args)
        ended = True
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else int(done.code is not None)
        ended = True
    finally:
        if dist.is_initialized():
            leave(clean=ended and code == 0)
    exit_process(code)  # not reached on an error: torch.multiprocessing reports it


def leave(clean: bool) -> None:
    """Destroys the process group. After a clean end every rank first waits for the others
    (a barrier), so that none tears its gloo pairs down while a peer still talks to it; a rank
    that failed does not wait for peers that may never come."""
    if clean:
        with contextlib.suppress(Exception):
            dist.barrier()
    dist.destroy_process_group()


def exit_process(code: int) -> NoReturn:
    """Ends a rank's process with `code` once its work is done and its process group destroyed,
    skipping the interpreter's finalization. torch and gloo objects torn down at exit can abort a
    rank that finished cleanly ("terminate called without an active exception", SIGABRT, with no
    Python frame left), which the operator must take for a failure worth a restart. Output is
    flushed first; nothing else of ours needs finalizing."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def spawn(
    fn: Callable[..., Any], nproc: int, *args: Any, ranks_per_node: int | None = None
) -> None:
    """Runs fn(*args) in `nproc` fresh processes forming one job; raises if any of them fails."""
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    # Hosted here on a port the OS picks and held until every rank is gone: no port picked
    # now and bound later by a rank (another process may take it in between), and no rank 0
    # taking the store down while the others still leave the group.
    store = dist.TCPStore("127.0.0.1", 0, nproc, is_master=True, wait_for_workers=False)
    try:
        mp.start_processes(
            _spawned,
            args=(nproc, store.port, ranks_per_node or nproc, fn, args),
            nprocs=nproc,
            start_method="spawn",
        )
    finally:
        del store


def under_launcher() -> bool:
    """True when torchrun (or the operator's env contract) already made this process a rank."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _exit_with_code(train: Callable[[Any], int], args: Any) -> None:
    code = train(args)
    if code:
        sys.exit(code)


def run_ranks(train: Callable[[Any], int], args: Any) -> int:
    """The entry point of a training command: `train(args)` as this process's rank under
    torchrun, or in `args.nproc` spawned local ranks when asked for and not under a launcher."""
    if getattr(args, "nproc", 0) and not under_launcher():
        try:
            spawn(_exit_with_code, args.nproc, train, args)
        except mp.ProcessExitedException as err:  # a rank's own exit code is the answer
            if err.exit_code is None or err.exit_code < 0:
                raise
            return int(err.exit_code)
        return 0
    code = None
    try:
        code = train(args)
        return code
    except Exception as err:
        if not peers.is_peer_loss(err):
            raise
        rank = dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))
        code = peers.report(err, rank)
        return code
    finally:
        if dist.is_initialized():
            leave(clean=code == 0)


def add_rank_arguments(ap: argparse.ArgumentParser) -> None:
    """The flags every training command shares: backend, local ranks, metrics."""
    ap.add_argument("--backend", choices=["gloo", "nccl"], default=None)
    ap.add_argument("--nproc", type=int, default=0, help="spawn N local ranks (not under torchrun)")
    ap.add_argument("--metrics", action=argparse.BooleanOptionalAction, default=True)
