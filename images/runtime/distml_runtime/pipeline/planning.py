"""Where to cut a model into pipeline stages: pure arithmetic over per-layer costs and bytes.

`split_layers` finds the contiguous split that minimises the slowest stage (the pipeline runs at
the pace of its slowest stage); `plan_pipeline` does the same under a per-GPU memory limit and,
when no split fits, says how many bytes are missing on the tightest stage.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import accumulate

Range = tuple[int, int]
INF = float("inf")


def _check_stage_count(n_layers: int, p: int) -> None:
    if n_layers < 1:
        raise ValueError("a pipeline needs at least one layer; got none")
    if p < 1:
        raise ValueError(f"a pipeline needs at least 1 stage; got {p}")
    if p > n_layers:
        raise ValueError(
            f"cannot split {n_layers} layers into {p} stages: every stage needs at least one layer"
        )


def _min_max_partition(n: int, p: int, stage_cost: Callable[[int, int, int], float]) -> list[Range]:
    """Splits layers [0, n) into p non-empty contiguous ranges minimising the largest
    stage_cost(stage, start, end); INF marks a stage that cannot hold that range. Dynamic
    programming over (stages used, layers covered): O(p * n^2) calls, exact."""
    # best[j][i]: the smallest achievable max cost putting layers [0, i) on stages [0, j)
    best = [[INF] * (n + 1) for _ in range(p + 1)]
    cut = [[0] * (n + 1) for _ in range(p + 1)]
    best[0][0] = 0.0
    for j in range(1, p + 1):
        # stages j..p-1 still need one layer each, so stage j-1 ends at most at n - (p - j)
        for i in range(j, n - (p - j) + 1):
            for s in range(j - 1, i):
                if best[j - 1][s] == INF:
                    continue
                value = max(best[j - 1][s], stage_cost(j - 1, s, i))
                if value < best[j][i]:
                    best[j][i], cut[j][i] = value, s
    if best[p][n] == INF:
        return []
    ranges: list[Range] = []
    end = n
    for j in range(p, 0, -1):
        start = cut[j][end]
        ranges.append((start, end))
        end = start
    return ranges[::-1]


def _prefix(values: Sequence[float]) -> list[float]:
    return [0.0, *accumulate(float(v) for v in values)]


def split_layers(costs: Sequence[float], p: int) -> list[Range]:
    """p contiguous, non-empty, half-open layer ranges covering every layer in order, with the
    largest stage cost as small as any split allows."""
    _check_stage_count(len(costs), p)
    if any(c < 0 for c in costs):
        raise ValueError("layer costs must be >= 0")
    pre = _prefix(costs)
    return _min_max_partition(len(costs), p, lambda _j, s, e: pre[e] - pre[s])


def split_evenly(n_layers: int, p: int) -> list[Range]:
    """The split most hand-written pipelines use: the same number of layers per stage."""
    _check_stage_count(n_layers, p)
    base, extra = divmod(n_layers, p)
    ranges, start = [], 0
    for stage in range(p):
        end = start + base + (1 if stage < extra else 0)
        ranges.append((start, end))
        start = end
    return ranges


@dataclass(frozen=True)
class LayerProfile:
    """One layer as the planner sees it. `seconds` is forward+backward per micro-batch;
    `activation_bytes` is what one micro-batch keeps alive for the backward pass."""

    name: str
    seconds: float
    param_bytes: int
    activation_bytes: int


@dataclass(frozen=True)
class MemoryModel:
    """Bytes per parameter byte kept besides the parameter itself: 1 for the gradient plus the
    optimiser's state (SGD with momentum 1, Adam 2)."""

    gpu_bytes: int
    optimizer_states: int = 2
    schedule: str = "1f1b"
    microbatches: int = 8

    def in_flight(self, stage: int, p: int) -> int:
        """Micro-batches whose activations a stage holds at its peak: all of them under GPipe,
        at most p - stage under 1F1B (the warm-up depth)."""
        if self.schedule == "gpipe":
            return self.microbatches
        return min(self.microbatches, p - stage)


@dataclass(frozen=True)
class StagePlan:
    stage: int
    layers: Range
    seconds: float
    memory_bytes: int


@dataclass(frozen=True)
class PipelinePlan:
    stages: list[StagePlan]
    microbatches: int
    fits: bool
    missing_bytes: int  # on the tightest stage of the split that needs the least memory; 0 if fits

    @property
    def bottleneck_seconds(self) -> float:
        return max(s.seconds for s in self.stages)

    @property
    def expected_bubble(self) -> float:
        """Idle fraction of the GPUs: a step takes (m + p - 1) slots of the slowest stage while
        the useful work is m times the mean stage. Equals (p-1)/(m+p-1) for balanced stages."""
        p, m = len(self.stages), self.microbatches
        mean = sum(s.seconds for s in self.stages) / p
        slowest = self.bottleneck_seconds
        if slowest == 0:
            return 0.0
        return 1.0 - (m * mean) / ((m + p - 1) * slowest)


def theoretical_bubble(p: int, m: int) -> float:
    """GPipe's idle fraction with balanced stages: (p-1)/(m+p-1)."""
    return (p - 1) / (m + p - 1)


def stage_memory(
    layers: Sequence[LayerProfile], start: int, end: int, stage: int, p: int, model: MemoryModel
) -> int:
    params = sum(layer.param_bytes for layer in layers[start:end])
    acts = sum(layer.activation_bytes for layer in layers[start:end])
    return params * (2 + model.optimizer_states) + acts * model.in_flight(stage, p)


def plan_pipeline(layers: Sequence[LayerProfile], p: int, memory: MemoryModel) -> PipelinePlan:
    """The fastest split whose every stage fits in `memory.gpu_bytes`. When none fits, the plan
    holds the split that needs the least memory, with `fits=False` and the bytes it lacks."""
    _check_stage_count(len(layers), p)
    pre = _prefix([layer.seconds for layer in layers])

    def mem(j: int, s: int, e: int) -> int:
        return stage_memory(layers, s, e, j, p, memory)

    def timed_if_fits(j: int, s: int, e: int) -> float:
        return pre[e] - pre[s] if mem(j, s, e) <= memory.gpu_bytes else INF

    ranges = _min_max_partition(len(layers), p, timed_if_fits)
    fits = bool(ranges)
    missing = 0
    if not fits:
        ranges = _min_max_partition(len(layers), p, lambda j, s, e: float(mem(j, s, e)))
        missing = max(mem(j, s, e) for j, (s, e) in enumerate(ranges)) - memory.gpu_bytes
    stages = [
        StagePlan(stage=j, layers=(s, e), seconds=pre[e] - pre[s], memory_bytes=mem(j, s, e))
        for j, (s, e) in enumerate(ranges)
    ]
    return PipelinePlan(stages, memory.microbatches, fits, missing)


@dataclass(frozen=True)
class RankLayout:
    """Where a rank sits in a dp x pp grid. Stage-major: the dp replicas of a stage are
    neighbouring ranks, so with one pod per stage they share a node and its fast links for the
    gradient all-reduce, while only the small activations cross nodes. With `virtual` > 1
    (interleaved schedules) a rank holds stages k, k + pp, k + 2pp, ..."""

    world: int
    pp: int
    virtual: int = 1

    def __post_init__(self) -> None:
        if self.pp < 1 or self.virtual < 1:
            raise ValueError(
                f"pipeline size and virtual stages must be >= 1; got {self.pp}, {self.virtual}"
            )
        if self.world % self.pp:
            raise ValueError(
                f"world size {self.world} is not divisible by the pipeline size {self.pp}"
            )

    @property
    def dp(self) -> int:
        return self.world // self.pp

    @property
    def num_stages(self) -> int:
        return self.pp * self.virtual

    def position(self, rank: int) -> int:
        """The rank's place along its pipeline (0 .. pp-1)."""
        return rank // self.dp

    def replica(self, rank: int) -> int:
        return rank % self.dp

    def stages_of(self, rank: int) -> list[int]:
        return [self.position(rank) + v * self.pp for v in range(self.virtual)]

    def pipeline_ranks(self, replica: int) -> list[int]:
        return [pos * self.dp + replica for pos in range(self.pp)]

    def stage_replica_ranks(self, position: int) -> list[int]:
        return [position * self.dp + r for r in range(self.dp)]
