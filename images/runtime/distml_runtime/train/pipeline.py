"""Pipeline and hybrid (dp x pp) training of an MLP on the digits dataset, with the stages cut by
the planner from a profile of the model on this device.

    python -m distml_runtime.train.pipeline --nproc 4 --pp 2 --schedule 1f1b --microbatches 4
    torchrun --nproc-per-node 8 -m distml_runtime.train.pipeline --schedule gpipe --freeze 2

The pipeline size comes from --pp, else DISTML_PIPELINE_PARALLEL (set by the operator from
spec.parallelism.pipeline), else 2; the rest of the world is data parallel. Rank 0 prints the plan
and the last stage's first rank prints one JSON object per logged step.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import torch
import torch.distributed as dist

from distml_runtime import distenv
from distml_runtime.pipeline.models import DIGITS_FEATURES, mlp_layers
from distml_runtime.pipeline.planning import RankLayout, split_evenly, split_layers
from distml_runtime.pipeline.profiling import profile_layers
from distml_runtime.pipeline.stages import SCHEDULES, PipelineConfig, PipelineTrainer
from distml_runtime.train.data import batch_indices, load_digits_tensors


def _emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def _plan(
    args: argparse.Namespace, layout: RankLayout, device: torch.device
) -> list[tuple[int, int]]:
    n_layers = len(args.widths) + 1
    if args.split == "even":
        return split_evenly(n_layers, layout.num_stages)
    # rank 0 profiles and every rank takes its split, so all cut the model at the same places
    micro = args.batch_size // layout.dp // args.microbatches
    costs = torch.zeros(n_layers, dtype=torch.float64)
    if dist.get_rank() == 0:
        profile = profile_layers(
            mlp_layers(args.widths), torch.randn(micro, DIGITS_FEATURES), device
        )
        costs = torch.tensor([p.seconds for p in profile], dtype=torch.float64)
    dist.broadcast(costs, src=0)
    return split_layers(costs.tolist(), layout.num_stages)


def train(args: argparse.Namespace) -> int:
    backend = distenv.pick_backend(args.backend)
    device = distenv.init(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    pp = args.pp or int(os.environ.get("DISTML_PIPELINE_PARALLEL", "2"))
    layout = RankLayout(world, pp, args.virtual)
    ranges = _plan(args, layout, device)
    config = PipelineConfig(
        schedule=args.schedule,
        microbatches=args.microbatches,
        freeze_layers=args.freeze,
        precision=args.precision,
        lr=args.lr,
        momentum=args.momentum,
    )
    trainer = PipelineTrainer(
        mlp_layers(args.widths, seed=args.seed), ranges, layout, config, device
    )
    if rank == 0:
        _emit(
            "plan", dp=layout.dp, pp=pp, virtual=args.virtual, stages=ranges, schedule=args.schedule
        )
    reporter = trainer.holds_last and layout.replica(rank) == 0
    metrics = None
    if args.metrics:
        from distml_runtime.metrics import TrainingMetrics

        metrics = TrainingMetrics(rank)
    x, y = load_digits_tensors()
    for step in range(args.steps):
        t0 = time.perf_counter()
        idx = batch_indices(step, 0, 1, args.batch_size, len(x), args.seed)
        loss = trainer.step(x[idx], y[idx])
        took = time.perf_counter() - t0
        if metrics:
            metrics.step_seconds.set(took)
            metrics.samples_per_second.set(args.batch_size / layout.dp / took)
            metrics.allreduce_seconds.set(trainer.sync_seconds)
            metrics.step.set(step + 1)
            metrics.steps.inc()
            if loss is not None:
                metrics.loss.set(loss)
        if reporter and ((step + 1) % args.log_every == 0 or step + 1 == args.steps):
            _emit(
                "step",
                step=step + 1,
                loss=round(float(loss or 0.0), 5),
                samples_per_s=round(args.batch_size / took, 1),
                step_ms=round(took * 1e3, 2),
            )
    if reporter:
        _emit("done", step=args.steps, world_size=world)
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m distml_runtime.train.pipeline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--pp", type=int, default=0, help="pipeline stages (ranks per pipeline)")
    ap.add_argument("--virtual", type=int, default=1, help="stages per rank (interleaved only)")
    ap.add_argument("--schedule", choices=SCHEDULES, default="1f1b")
    ap.add_argument("--microbatches", type=int, default=4)
    ap.add_argument("--split", choices=["planned", "even"], default="planned")
    ap.add_argument("--freeze", type=int, default=0, help="freeze the first N layers")
    ap.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    ap.add_argument(
        "--widths",
        type=lambda s: [int(w) for w in s.split(",")],
        default=[256, 128, 128, 64],
        help="hidden widths, comma separated; the model has one more layer than widths",
    )
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=64, help="global, per step")
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=10)
    distenv.add_rank_arguments(ap)
    return ap


def main(argv: list[str] | None = None) -> int:
    return distenv.run_ranks(train, parser().parse_args(argv))


if __name__ == "__main__":
    distenv.exit_process(main())
