"""Data-parallel training with DistributedDataParallel on a small real dataset, with checkpoints
every N steps and resume from the newest one, also after a change of world size.

    python -m distml_runtime.train.ddp --nproc 2 --steps 200 --checkpoint-dir /tmp/ckpt
    torchrun --nproc-per-node 8 -m distml_runtime.train.ddp --steps 10000 --precision bf16

Rank 0 prints one JSON object per event (step, checkpoint, resume, done) on stdout.
"""

from __future__ import annotations

import argparse
import json
import signal
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel as DDP

from distml_runtime import distenv, peers
from distml_runtime.train import checkpoint
from distml_runtime.train.data import batch_indices, load_digits_tensors

EXIT_PREEMPTED = 143  # 128 + SIGTERM: the operator treats it as retryable


def build_model(hidden: int = 128) -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 10),
    )


class _AllReduceTimer:
    """A DDP comm hook that does the default all-reduce and adds up how long each bucket took."""

    def __init__(self) -> None:
        self.seconds = 0.0

    # No annotations: DDP checks them at run time, and this module's are strings.
    def hook(self, _state, bucket):
        t0 = time.perf_counter()
        fut = default_hooks.allreduce_hook(None, bucket)  # type: ignore[arg-type]

        def done(f: torch.futures.Future[torch.Tensor]) -> torch.Tensor:
            self.seconds += time.perf_counter() - t0
            return f.value()

        return fut.then(done)


def _emit(event: str, **fields: Any) -> None:
    if dist.get_rank() == 0:
        print(json.dumps({"event": event, **fields, "time": round(time.time(), 3)}), flush=True)


def train(args: argparse.Namespace) -> int:
    backend = distenv.pick_backend(args.backend)
    device = distenv.init(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(args.seed)
    x, y = load_digits_tensors()
    model = build_model().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    step = 0
    ckpt_dir = Path(args.checkpoint_dir) if args.checkpoint_dir else None
    latest = checkpoint.newest(ckpt_dir) if ckpt_dir else None
    if latest is not None:
        state = checkpoint.load(latest)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
        _emit(
            "resume",
            step=step,
            path=str(latest),
            from_world_size=state["world_size"],
            world_size=world,
        )
    ddp = DDP(
        model,
        bucket_cap_mb=args.bucket_cap_mb,
        device_ids=[device.index] if device.type == "cuda" else None,
    )
    timer = _AllReduceTimer()
    ddp.register_comm_hook(None, timer.hook)
    metrics = None
    if args.metrics:
        from distml_runtime.metrics import TrainingMetrics

        metrics = TrainingMetrics(rank)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    scaler = torch.amp.GradScaler(
        device.type, enabled=args.precision == "fp16" and device.type == "cuda"
    )
    stop = {"preempted": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(preempted=True))
    loss_fn = nn.CrossEntropyLoss()

    saved = {"step": step}

    def save() -> None:
        if ckpt_dir is not None and rank == 0 and saved["step"] != step:
            saved["step"] = step
            path = checkpoint.save(
                ckpt_dir,
                step,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "step": step,
                    "world_size": world,
                },
            )
            _emit("checkpoint", step=step, path=str(path))
            if metrics:
                metrics.checkpoints.inc()

    while step < args.steps:
        t0 = time.perf_counter()
        timer.seconds = 0.0
        idx = batch_indices(step, rank, world, args.batch_size, len(x), args.seed)
        xb, yb = x[idx].to(device), y[idx].to(device)
        with torch.autocast(
            device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
        ):
            loss = loss_fn(ddp(xb), yb)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        step += 1
        if args.step_delay:
            time.sleep(args.step_delay)
        took = time.perf_counter() - t0
        if metrics:
            metrics.loss.set(loss.item())
            metrics.step_seconds.set(took)
            metrics.samples_per_second.set(args.batch_size / took)
            metrics.allreduce_seconds.set(timer.seconds)
            metrics.step.set(step)
            metrics.steps.inc()
        if step % args.log_every == 0 or step == args.steps:
            mean = loss.detach().float().clone()
            dist.all_reduce(mean)
            _emit(
                "step",
                step=step,
                loss=round(mean.item() / world, 5),
                samples_per_s=round(args.batch_size * world / took, 1),
                allreduce_ms=round(timer.seconds * 1e3, 3),
            )
        if ckpt_dir and args.checkpoint_every and step % args.checkpoint_every == 0:
            save()
        # Every rank asks at every step whether any was told to stop: a rank signalled at
        # another step than its peers must not leave them in a collective it never joins.
        flag = torch.tensor([1.0 if stop["preempted"] else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item():
            save()
            if stop["preempted"]:
                _emit("preempted", step=step)
                return EXIT_PREEMPTED
            # Only a peer was told to stop (its pod is leaving: a scale-down): the rest meet
            # again without it and resume from the checkpoint just written.
            _emit("peer-left", step=step)
            return peers.EXIT_PEER_LOST
    save()
    _emit("done", step=step, world_size=world)
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m distml_runtime.train.ddp",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=32, help="per rank")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    ap.add_argument("--bucket-cap-mb", type=float, default=25.0)
    ap.add_argument("--checkpoint-dir", default="")
    ap.add_argument("--checkpoint-every", type=int, default=50)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--step-delay", type=float, default=0.0, help="sleep per step (demos, tests)")
    distenv.add_rank_arguments(ap)
    return ap


def main(argv: list[str] | None = None) -> int:
    return distenv.run_ranks(train, parser().parse_args(argv))


if __name__ == "__main__":
    distenv.exit_process(main())
