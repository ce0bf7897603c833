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

from collections.abc import Sequence
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


def _greedy(costs: Sequence[int], stages: int, bound: int) -> list[Range] | None:
    """Stages of at most `bound` each, cut as late as the bound allows while every later stage
    keeps a layer; None when `stages` are not enough."""
    ranges: list[Range] = []
    start, total = 0, 0
    for i, cost in enumerate(costs):
        if cost > bound:
            return None
        left_after = len(costs) - i  # layers from i on
        stages_after = stages - len(ranges) - 1  # stages still to open after this one
        if i > start and (total + cost > bound or left_after == stages_after):
            ranges.append((start, i))
            start, total = i, 0
            if len(ranges) == stages:
                return None
        total += cost
    ranges.append((start, len(costs)))
    return ranges if len(ranges) == stages else None


def balanced(costs: Sequence[int], stages: int) -> list[Range]:
    lo, hi = max(costs), sum(costs)
    while lo < hi:
        mid = (lo + hi) // 2
        if _greedy(costs, stages, mid) is None:
            lo = mid + 1
        else:
            hi = mid
    found = _greedy(costs, stages, lo)
    assert found is not None  # the whole sum always fits when len(costs) >= stages
    return found


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


def split(widths: Sequence[int], pipeline: Pipeline) -> tuple[str, list[Range]]:
    """(how it was decided, the layer range of every stage)."""
    costs = layer_costs(widths)
    k = pipeline.stages
    if k > len(costs):
        raise SplitError(f"{k} stages for a model of {len(costs)} layers: every stage needs one")
    if pipeline.boundaries:
        if len(pipeline.boundaries) != k - 1:
            raise SplitError(
                f"spec.pipeline.boundaries has {len(pipeline.boundaries)} cuts; "
                f"{k} stages need {k - 1}"
            )
        return "Explicit", explicit(len(costs), pipeline.boundaries)
    if pipeline.split == PipelineSplit.EVEN:
        return str(PipelineSplit.EVEN), even(len(costs), k)
    return str(PipelineSplit.BALANCED), balanced(costs, k)


def ranges_text(ranges: Sequence[Range]) -> str:
    """0-1 | 2-4: each stage's first and last layer."""
    return " | ".join(f"{a}-{b - 1}" if b - a > 1 else f"{a}" for a, b in ranges)


def describe(widths: Sequence[int], pipeline: Pipeline) -> PipelineStatus:
    how, ranges = split(widths, pipeline)
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
            StageSplit(stage=k, first_layer=a, last_layer=b - 1, share=round(share, 4))
            for k, ((a, b), share) in enumerate(zip(ranges, shares, strict=True))
        ],
    )
