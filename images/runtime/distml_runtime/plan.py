"""Prints the pipeline plan for a model before anything launches: the profiled layers, where the
stages are cut, each stage's time and memory, the expected bubble, and how an even split by layer
count would compare.

    python -m distml_runtime.plan --widths 512,2048,256,1024 --stages 2 --microbatches 8
    python -m distml_runtime.plan --widths 4096,4096,4096 --stages 2 --gpu-memory 80MiB --json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict

import torch

from distml_runtime.pipeline.models import DIGITS_FEATURES, mlp_layers
from distml_runtime.pipeline.planning import (
    LayerProfile,
    MemoryModel,
    PipelinePlan,
    plan_pipeline,
    split_evenly,
    theoretical_bubble,
)
from distml_runtime.pipeline.profiling import profile_layers

_UNITS = {
    "": 1,
    "b": 1,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
}
OPTIMIZER_STATES = {"sgd": 1, "adam": 2}


def parse_bytes(text: str) -> int:
    match = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 80GiB, 512MiB or 1000000)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f}"


def render(plan: PipelinePlan, layers: list[LayerProfile], even_seconds: float) -> str:
    p = len(plan.stages)
    lines = ["layer profile (one micro-batch, forward+backward):"]
    lines.append(f"  {'layer':<14} {'ms':>9} {'params MiB':>11} {'acts MiB':>9}")
    for layer in layers:
        lines.append(
            f"  {layer.name:<14} {layer.seconds * 1e3:>9.3f} {_mib(layer.param_bytes):>11} "
            f"{_mib(layer.activation_bytes):>9}"
        )
    lines.append(f"plan: {p} stages, {plan.microbatches} micro-batches")
    lines.append(f"  {'stage':>5} {'layers':<10} {'ms':>9} {'memory MiB':>11}")
    for s in plan.stages:
        start, end = s.layers
        lines.append(
            f"  {s.stage:>5} {f'[{start}, {end})':<10} {s.seconds * 1e3:>9.3f} "
            f"{_mib(s.memory_bytes):>11}"
        )
    lines.append(
        f"expected bubble {plan.expected_bubble:.3f} "
        f"(balanced stages in theory: {theoretical_bubble(p, plan.microbatches):.3f})"
    )
    speedup = even_seconds / plan.bottleneck_seconds if plan.bottleneck_seconds else 1.0
    lines.append(
        f"slowest stage {plan.bottleneck_seconds * 1e3:.3f} ms; an even split by layer count: "
        f"{even_seconds * 1e3:.3f} ms ({speedup:.2f}x slower)"
    )
    if not plan.fits:
        lines.append(
            f"DOES NOT FIT: the tightest stage of the leanest split needs "
            f"{_mib(plan.missing_bytes)} MiB more than the GPU's memory; add stages, use fewer "
            "micro-batches in flight (1f1b), or a smaller micro-batch"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m distml_runtime.plan",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--widths", default="512,2048,256,1024,128", help="hidden widths of the MLP")
    ap.add_argument("--stages", type=int, default=2)
    ap.add_argument("--microbatches", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=256, help="per replica, per step")
    ap.add_argument("--schedule", choices=["gpipe", "1f1b"], default="1f1b")
    ap.add_argument("--optimizer", choices=sorted(OPTIMIZER_STATES), default="adam")
    ap.add_argument("--gpu-memory", type=parse_bytes, default=None, help="e.g. 80GiB")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    widths = [int(w) for w in args.widths.split(",") if w]
    if args.batch_size % args.microbatches:
        ap.error(f"--batch-size {args.batch_size} does not split into {args.microbatches}")
    gpu = args.gpu_memory
    if gpu is None:
        gpu = (
            torch.cuda.get_device_properties(device).total_memory
            if device.type == "cuda"
            else 2**40
        )
    sample = torch.randn(args.batch_size // args.microbatches, DIGITS_FEATURES)
    layers = profile_layers(mlp_layers(widths), sample, device)
    memory = MemoryModel(gpu, OPTIMIZER_STATES[args.optimizer], args.schedule, args.microbatches)
    try:
        plan = plan_pipeline(layers, args.stages, memory)
    except ValueError as err:
        ap.error(str(err))
    even = max(
        sum(x.seconds for x in layers[s:e]) for s, e in split_evenly(len(layers), args.stages)
    )
    if args.json:
        print(
            json.dumps(
                {
                    "layers": [asdict(x) for x in layers],
                    "stages": [asdict(s) for s in plan.stages],
                    "fits": plan.fits,
                    "missing_bytes": plan.missing_bytes,
                    "expected_bubble": plan.expected_bubble,
                    "theoretical_bubble": theoretical_bubble(args.stages, args.microbatches),
                    "even_split_bottleneck_seconds": even,
                }
            )
        )
    else:
        print(render(plan, layers, even))
    return 0 if plan.fits else 3


if __name__ == "__main__":
    sys.exit(main())
