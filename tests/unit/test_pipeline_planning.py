"""The pipeline planner: optimal splits (checked against brute force), memory-aware plans that
say what is missing, and the rank layout of a dp x pp job."""

from __future__ import annotations

import random
from itertools import combinations

import pytest

from distml_runtime.pipeline import (
    LayerProfile,
    MemoryModel,
    plan_pipeline,
    split_evenly,
    split_layers,
    theoretical_bubble,
)
from distml_runtime.pipeline.planning import RankLayout, stage_memory


def _all_splits(n: int, p: int):
    for cuts in combinations(range(1, n), p - 1):
        bounds = [0, *cuts, n]
        yield [(bounds[i], bounds[i + 1]) for i in range(p)]


def _worst(costs, ranges):
    return max(sum(costs[s:e]) for s, e in ranges)


@pytest.mark.parametrize("seed", range(60))
def test_split_is_as_good_as_brute_force(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 9)
    p = rng.randint(1, n)
    costs = [rng.choice([0.0, rng.uniform(0, 10), rng.randint(1, 5)]) for _ in range(n)]
    ranges = split_layers(costs, p)
    assert len(ranges) == p
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(s < e for s, e in ranges), "every stage holds at least one layer"
    assert all(ranges[i][1] == ranges[i + 1][0] for i in range(p - 1)), "contiguous, in order"
    best = min(_worst(costs, r) for r in _all_splits(n, p))
    assert _worst(costs, ranges) == pytest.approx(best)


def test_split_beats_greedy_and_even_on_uneven_layers():
    costs = [1, 1, 1, 1, 8, 1, 1, 6]
    ranges = split_layers(costs, 3)
    assert _worst(costs, ranges) == 8
    assert _worst(costs, split_evenly(len(costs), 3)) > 8


@pytest.mark.parametrize(
    ("costs", "p", "message"),
    [
        ([1.0, 2.0], 0, "at least 1 stage; got 0"),
        ([1.0, 2.0], 3, "cannot split 2 layers into 3 stages"),
        ([], 1, "at least one layer"),
        ([1.0, -1.0], 1, "costs must be >= 0"),
    ],
)
def test_impossible_splits_are_refused_clearly(costs, p, message):
    with pytest.raises(ValueError, match=message):
        split_layers(costs, p)


def test_even_split_spreads_the_remainder_over_the_first_stages():
    assert split_evenly(7, 3) == [(0, 3), (3, 5), (5, 7)]


def _layers(seconds, params, acts):
    return [
        LayerProfile(f"l{i}", s, p, a)
        for i, (s, p, a) in enumerate(zip(seconds, params, acts, strict=True))
    ]


def test_memory_limit_moves_the_cut_away_from_the_fastest_split():
    layers = _layers([1, 1, 1, 1], [100, 100, 100, 1000], [0, 0, 0, 0])
    unlimited = plan_pipeline(layers, 2, MemoryModel(gpu_bytes=10**9, optimizer_states=0))
    assert [s.layers for s in unlimited.stages] == [(0, 2), (2, 4)]
    # stage 1 = layers 2,3 needs (100 + 1000) * 2 bytes; only 2000 are free
    tight = plan_pipeline(layers, 2, MemoryModel(gpu_bytes=2000, optimizer_states=0))
    assert tight.fits
    assert [s.layers for s in tight.stages] == [(0, 3), (3, 4)]
    assert all(s.memory_bytes <= 2000 for s in tight.stages)


def test_a_plan_that_cannot_fit_says_how_much_is_missing():
    layers = _layers([1, 1, 1], [100, 100, 100], [10, 10, 10])
    model = MemoryModel(gpu_bytes=300, optimizer_states=2, schedule="gpipe", microbatches=4)
    plan = plan_pipeline(layers, 3, model)
    assert not plan.fits
    # the least any stage can need: one layer, 100 * (2 + 2) params+grads+states + 10 * 4 acts
    assert plan.missing_bytes == 440 - 300


def test_1f1b_keeps_fewer_micro_batches_alive_than_gpipe():
    layers = _layers([1, 1], [0, 0], [10, 10])
    gpipe = MemoryModel(gpu_bytes=1, schedule="gpipe", microbatches=8)
    one_f = MemoryModel(gpu_bytes=1, schedule="1f1b", microbatches=8)
    assert stage_memory(layers, 0, 1, 0, 2, gpipe) == 80
    assert stage_memory(layers, 0, 1, 0, 2, one_f) == 20  # warm-up depth p - stage = 2
    assert stage_memory(layers, 1, 2, 1, 2, one_f) == 10


def test_expected_bubble_is_the_textbook_value_for_balanced_stages():
    layers = _layers([2, 2, 2, 2], [0] * 4, [0] * 4)
    plan = plan_pipeline(layers, 4, MemoryModel(gpu_bytes=1, microbatches=8))
    assert plan.expected_bubble == pytest.approx(theoretical_bubble(4, 8)) == pytest.approx(3 / 11)
    slow_last = _layers([1, 1, 1, 5], [0] * 4, [0] * 4)
    uneven = plan_pipeline(slow_last, 4, MemoryModel(gpu_bytes=1, microbatches=8))
    assert uneven.expected_bubble > theoretical_bubble(4, 8)


def test_stage_major_layout_puts_a_stages_replicas_side_by_side():
    layout = RankLayout(world=8, pp=4)
    assert layout.dp == 2
    assert layout.pipeline_ranks(0) == [0, 2, 4, 6]
    assert layout.pipeline_ranks(1) == [1, 3, 5, 7]
    assert layout.stage_replica_ranks(3) == [6, 7]
    assert layout.stages_of(5) == [2]
    interleaved = RankLayout(world=2, pp=2, virtual=2)
    assert interleaved.stages_of(0) == [0, 2] and interleaved.stages_of(1) == [1, 3]
    with pytest.raises(ValueError, match="world size 6 is not divisible by the pipeline size 4"):
        RankLayout(world=6, pp=4)
