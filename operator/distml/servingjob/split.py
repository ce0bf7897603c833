"""Where a pipeline-split ServingJob's model is cut into stages: decided by the operator before
any pod starts, shown in status and by `python -m distml.plan`, and handed to every stage pod.

Pure. The served model is the runtime's MLP (64 features, the hidden `widths`, 10 classes), so
a layer's work is known without running it: its multiply-adds, in x out per row. Balanced
makes the largest stage as small as any contiguous split allows (the pipeline runs at the pace
of its slowest stage): the smallest bound T for which cutting greedily, left to right, needs at
most `stages` stages, found by bisection over integers; the cuts then fill every stage, keeping
one layer for each stage still to come.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from itertools import pairwise

from distml.api.serving import Pipeline, PipelineSplit, PipelineStatus, StageSplit

FEATURES, CLASSES = 64, 10
Range = tuple[int, int]  # layers [start, end)


class SplitError(ValueError):
    """A split the model cannot take (what the CRD's rules do not catch)."""


def layer_costs(widths: Sequence[int]) -> list[int]:
    """Multiply-adds per row of each layer: len(widths) + 1 of them."""
    sizes = [FEATURES, *widths, CLASSES]
    return [a * b for a, b in pairwise(sizes)]


Fits = Callable[[int, int], bool]  # whether layers [a, b) fit one stage's GPU


def _any(_a: int, _b: int) -> bool:
    return True


def stage_bytes(widths: Sequence[int], a: int, b: int, rows: int) -> int:
    """What stage [a, b) holds on its GPU: its fp32 weights and biases, and a batch of `rows`
    in and out at its widest layer."""
    sizes = [FEATURES, *widths, CLASSES]
    weights = sum((sizes[i] * sizes[i + 1] + sizes[i + 1]) * 4 for i in range(a, b))
    return weights + 2 * rows * max(sizes[a : b + 1]) * 4


def _greedy(costs: Sequence[int], stages: int, bound: int, fits: Fits = _any) -> list[Range] | None:
    """Stages of at most `bound` each that fit, cut as late as they allow while every later
    stage keeps a layer; None when `stages` are not enough. (Both limits only tighten as a
    stage grows, so the latest cut is never worse.)"""
    ranges: list[Range] = []
    start, total = 0, 0
    for i, cost in enumerate(costs):
        if cost > bound or not fits(i, i + 1):
            return None
        left_after = len(costs) - i  # layers from i on
        stages_after = stages - len(ranges) - 1  # stages still to open after this one
        full = total + cost > bound or not fits(start, i + 1)
        if i > start and (full or left_after == stages_after):
            ranges.append((start, i))
            start, total = i, 0
            if len(ranges) == stages:
                return None
        total += cost
    ranges.append((start, len(costs)))
    return ranges if len(ranges) == stages else None


def balanced(costs: Sequence[int], stages: int, fits: Fits = _any) -> list[Range] | None:
    """None: no split into `stages` fits, whatever the balance."""
    lo, hi = max(costs), sum(costs)
    if _greedy(costs, stages, hi, fits) is None:
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if _greedy(costs, stages, mid, fits) is None:
            lo = mid + 1
        else:
            hi = mid
    return _greedy(costs, stages, lo, fits)


def even(layers: int, stages: int) -> list[Range]:
    size, extra = divmod(layers, stages)
    starts = [k * size + min(k, extra) for k in range(stages + 1)]
    return list(pairwise(starts))


def explicit(layers: int, cuts: Sequence[int]) -> list[Range]:
    edges = [0, *cuts, layers]
    if any(b <= a for a, b in pairwise(edges)):
        raise SplitError(
            f"spec.pipeline.boundaries {list(cuts)} must increase strictly between 1 and "
            f"{layers - 1}: every stage needs a layer"
        )
    return list(pairwise(edges))


def split(widths: Sequence[int], pipeline: Pipeline, rows: int = 1) -> tuple[str, list[Range]]:
    """(how it was decided, the layer range of every stage), for batches of `rows`."""
    costs = layer_costs(widths)
    k = pipeline.stages
    if k > len(costs):
        raise SplitError(f"{k} stages for a model of {len(costs)} layers: every stage needs one")
    limit = parse_bytes(pipeline.gpu_memory) if pipeline.gpu_memory else None

    def fits(a: int, b: int) -> bool:
        return limit is None or stage_bytes(widths, a, b, rows) <= limit

    if pipeline.boundaries:
        if len(pipeline.boundaries) != k - 1:
            raise SplitError(
                f"spec.pipeline.boundaries has {len(pipeline.boundaries)} cuts; "
                f"{k} stages need {k - 1}"
            )
        how, ranges = "Explicit", explicit(len(costs), pipeline.boundaries)
    elif pipeline.split == PipelineSplit.EVEN:
        how, ranges = str(PipelineSplit.EVEN), even(len(costs), k)
    else:
        found = balanced(costs, k, fits)
        how, ranges = str(PipelineSplit.BALANCED), found or even(len(costs), k)
    for stage, (a, b) in enumerate(ranges):
        if not fits(a, b):
            need = stage_bytes(widths, a, b, rows)
            fix = f"no split into {k} stages fits" if how == "Balanced" else "cut it otherwise"
            raise SplitError(
                f"stage {stage} (layers {ranges_text([(a, b)])}) needs {need:,} bytes (weights "
                f"and a batch of {rows} rows); spec.pipeline.gpuMemory is {pipeline.gpu_memory} "
                f"({limit:,} bytes): {fix}"
            )
    return how, ranges


UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
         "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}  # fmt: skip
QUANTITY = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|K|M|G|T)?$"


def parse_bytes(quantity: str) -> int:
    """A Kubernetes quantity of bytes (80Gi, 512Mi, 1.5G, 1000000)."""
    m = re.fullmatch(QUANTITY, quantity)
    if m is None:
        raise SplitError(f"not a quantity of bytes: {quantity!r} (try 80Gi or 512Mi)")
    number = quantity[: len(quantity) - len(m.group(2) or "")]
    return int(float(number) * UNITS[m.group(2) or ""])


def ranges_text(ranges: Sequence[Range]) -> str:
    """0-1 | 2-4: each stage's first and last layer."""
    return " | ".join(f"{a}-{b - 1}" if b - a > 1 else f"{a}" for a, b in ranges)


def describe(widths: Sequence[int], pipeline: Pipeline, rows: int = 1) -> PipelineStatus:
    how, ranges = split(widths, pipeline, rows)
    costs = layer_costs(widths)
    total = sum(costs)
    shares = [sum(costs[a:b]) / total for a, b in ranges]
    return PipelineStatus(
        stages=len(ranges),
        layers=len(costs),
        split=how,
        text=ranges_text(ranges),
        slowest_share=round(max(shares), 4),
        per_stage=[
            StageSplit(
                stage=k,
                first_layer=a,
                last_layer=b - 1,
                share=round(share, 4),
                memory_bytes=stage_bytes(widths, a, b, rows),
            )
            for k, ((a, b), share) in enumerate(zip(ranges, shares, strict=True))
        ],
    )
