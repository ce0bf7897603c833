"""Benchmark: pipeline bubbles against the theory, throughput against the micro-batch count, the
planner's split against an even one, and the speed-up from freezing half the layers.

    make bench-pipeline
    python bench/pipeline.py --unit-ms 36 --max-m 16 --out bench/results

Bubbles are measured on torch's real GPipe schedule with real gloo p2p between processes, on
layers whose compute is a fixed sleep (as a host thread waits on a GPU kernel), so that p ranks on
a 2-core machine do not slow each other down. The bubble is the idle share of the ranks' time:
1 - (compute all ranks did) / (p x step wall time), compared with (p-1)/(m+p-1).
Freezing is measured with real compute (an MLP, 2 ranks, one core each).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.distributed as dist

from distml_runtime import distenv
from distml_runtime.pipeline.models import mlp_layers, simulated_busy_seconds, simulated_layers
from distml_runtime.pipeline.planning import (
    RankLayout,
    split_evenly,
    split_layers,
    theoretical_bubble,
)
from distml_runtime.pipeline.stages import PipelineConfig, PipelineTrainer

# Uneven layer costs (in units) that the planner can balance exactly for 2 and 4 stages. For
# p = 4 an even split by layer count puts 5 units on one stage instead of 4; for p = 2 the even
# split happens to be the balanced one, so only p = 4 compares them.
COSTS = [4, 1, 1, 2, 3, 1, 2, 2]
WIDTH, MICRO = 16, 4


def _timed_step(trainer: PipelineTrainer, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(wall seconds of the slowest rank, compute seconds summed over ranks) for one step."""
    dist.barrier()
    busy0, t0 = simulated_busy_seconds(), time.perf_counter()
    trainer.step(x, y)
    stats = torch.tensor([time.perf_counter() - t0, simulated_busy_seconds() - busy0])
    wall = stats[:1].clone()
    dist.all_reduce(wall, op=dist.ReduceOp.MAX)
    busy = stats[1:].clone()
    dist.all_reduce(busy)
    return float(wall), float(busy)


def _bubbles(out: Path, p: int, unit: float, max_m: int, repeats: int) -> None:
    distenv.init("gloo")
    rows = []
    planned, even = split_layers([float(c) for c in COSTS], p), split_evenly(len(COSTS), p)
    splits = [("planned", planned)] + ([("even", even)] if even != planned else [])
    for split_name, ranges in splits:
        for m in range(1, max_m + 1):
            if split_name == "even" and m not in (1, 4, 8, max_m):
                continue
            layers = simulated_layers([c * unit for c in COSTS], WIDTH)
            config = PipelineConfig(schedule="gpipe", microbatches=m, lr=0.0)
            trainer = PipelineTrainer(layers, ranges, RankLayout(p, p), config, torch.device("cpu"))
            x = torch.randn(m * MICRO, WIDTH)
            y = torch.randint(0, WIDTH, (m * MICRO,))
            trainer.step(x, y)  # warm-up: shape inference, p2p buffers
            best = min((_timed_step(trainer, x, y) for _ in range(repeats)), key=lambda r: r[0])
            wall, busy = best
            row = {
                "p": p,
                "m": m,
                "split": split_name,
                "step_s": wall,
                "samples_per_s": m * MICRO / wall,
                "bubble": 1 - busy / (p * wall),
                "theory": theoretical_bubble(p, m),
            }
            rows.append(row)
            if dist.get_rank() == 0:
                print(
                    f"  p={p} m={m:>2} {split_name:<7} step {wall * 1e3:7.1f} ms  "
                    f"bubble {row['bubble']:.3f} (theory {row['theory']:.3f})",
                    flush=True,
                )
    if dist.get_rank() == 0:
        (out / f"pipeline-bubble-p{p}.json").write_text(json.dumps(rows))


def _freezing(out: Path, steps: int) -> None:
    distenv.init("gloo")
    widths = [768] * 7  # 8 layers, evenly costed
    n_layers = len(widths) + 1
    results = {}
    for freeze in (0, n_layers // 2):
        config = PipelineConfig(schedule="1f1b", microbatches=4, freeze_layers=freeze, lr=0.01)
        ranges = split_evenly(n_layers, 2)
        trainer = PipelineTrainer(
            mlp_layers(widths), ranges, RankLayout(2, 2), config, torch.device("cpu")
        )
        x, y = torch.randn(256, 64), torch.randint(0, 10, (256,))
        trainer.step(x, y)
        times = [_timed_step(trainer, x, y)[0] for _ in range(steps)]
        results[freeze] = sorted(times)[len(times) // 2]
    if dist.get_rank() == 0:
        (out / "pipeline-freeze.json").write_text(
            json.dumps({str(k): v for k, v in results.items()})
        )


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for p, color in ((2, "tab:blue"), (4, "tab:orange")):
        mine = [r for r in rows if r["p"] == p and r["split"] == "planned"]
        ms = [r["m"] for r in mine]
        ax1.plot(ms, [r["theory"] for r in mine], "-", color=color, label=f"p={p} theory")
        ax1.plot(ms, [r["bubble"] for r in mine], "o", color=color, label=f"p={p} measured")
        ax2.plot(ms, [r["samples_per_s"] for r in mine], "o-", color=color, label=f"p={p} planned")
        even = [r for r in rows if r["p"] == p and r["split"] == "even"]
        if not even:  # the planner's split is the even one here
            continue
        ax2.plot(
            [r["m"] for r in even],
            [r["samples_per_s"] for r in even],
            "x--",
            color=color,
            label=f"p={p} even split",
        )
    ax1.set(xlabel="micro-batches m", ylabel="bubble fraction", title="GPipe bubble")
    ax2.set(xlabel="micro-batches m", ylabel="samples/s", title="throughput")
    ax1.legend()
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--unit-ms", type=float, default=36.0, help="forward ms of one cost unit")
    ap.add_argument("--max-m", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for p in (2, 4):
        print(f"==> GPipe on {p} stages, m = 1..{args.max_m}", flush=True)
        distenv.spawn(_bubbles, p, out, p, args.unit_ms / 1e3, args.max_m, args.repeats)
        rows += json.loads((out / f"pipeline-bubble-p{p}.json").read_text())
    print("==> freezing half the layers (real compute, 2 ranks)", flush=True)
    distenv.spawn(_freezing, 2, out, 8)
    freeze = json.loads((out / "pipeline-freeze.json").read_text())

    planned = [r for r in rows if r["split"] == "planned"]
    worst = max(
        planned, key=lambda r: abs(r["bubble"] - r["theory"]) / r["theory"] if r["theory"] else 0
    )
    print("\n| p | m | measured bubble | theory | relative error | overhead per slot (ms) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in planned:
        p, m = r["p"], r["m"]
        err = abs(r["bubble"] - r["theory"]) / r["theory"]
        # a slot is one micro-batch's forward+backward on one stage; what the step took beyond
        # (m + p - 1) slots is the schedule's own cost (p2p, Python), which the theory leaves out
        slot = (1 - r["bubble"]) * r["step_s"] / m
        over = (r["step_s"] - (m + p - 1) * slot) / (m + p - 1)
        print(
            f"| {p} | {m} | {r['bubble']:.3f} | {r['theory']:.3f} | {err:.1%} | {over * 1e3:.1f} |"
        )
    by = {(r["p"], r["m"], r["split"]): r for r in rows}
    print("\nratios (same run):")
    for m in sorted({1, 4, 8, args.max_m} & {r["m"] for r in rows if r["split"] == "even"}):
        even, plan = by[4, m, "even"], by[4, m, "planned"]
        print(
            f"  p=4 m={m:>2}: planned / even split throughput = "
            f"{plan['samples_per_s'] / even['samples_per_s']:.2f}x"
        )
    print(
        f"  freezing half the layers: step time {freeze['0'] * 1e3:.1f} -> "
        f"{freeze[str(4)] * 1e3:.1f} ms = {freeze['0'] / freeze[str(4)]:.2f}x faster"
    )
    if worst["theory"]:
        print(
            f"  largest bubble error vs theory: p={worst['p']} m={worst['m']} "
            f"{abs(worst['bubble'] - worst['theory']) / worst['theory']:.1%}"
        )
    _plot(rows, out / "pipeline.png")
    print(f"\nplot: {out / 'pipeline.png'}")


if __name__ == "__main__":
    main()
