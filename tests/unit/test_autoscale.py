"""The ServingJob autoscaler: how many replicas the load asks for, stabilised so that bursts and
lulls shorter than the delays, and steady load, move nothing; then the whole planner following
it against a simulated cluster: replicas added under load, drained and stopped after it."""

from __future__ import annotations

import math
import random

import pytest

from distml.api.serving import Autoscaling
from distml.reconcile import LoadSample
from distml.servingjob import autoscale

from .builders import at, make_node
from .test_servingjob import Sim, serving_job


def auto(**kw) -> Autoscaling:
    return Autoscaling.model_validate({"minReplicas": 1, "maxReplicas": 6, "target": 2, **kw})


def readings(*totals: float, every: float = 2.0, reporting: int = 2) -> list[LoadSample]:
    """One reading `every` seconds, the last at t = 100."""
    n = len(totals)
    return [LoadSample(at(100 - every * (n - 1 - i)), t, reporting) for i, t in enumerate(totals)]


@pytest.mark.parametrize(
    ("spec", "current", "totals", "want", "says"),
    [
        ({}, 2, (), 2, "no replica's metrics read yet"),
        ({}, 9, (), 6, "keeping 6"),  # outside the bounds: brought within at once
        ({}, 2, (4.0,), 2, "InFlightRequests 2.00 per replica over 2 (target 2): 2 replicas"),
        ({}, 2, (4.3,), 2, ": 2 replicas"),  # within 10 % of the target
        ({}, 2, (9.0,), 5, "2 -> 5 replicas"),  # no up delay: at once, ceil(9 / 2)
        ({}, 2, (40.0,), 6, "2 -> 6"),  # never above maxReplicas
        ({"upscaleDelaySeconds": 10}, 2, (9.0,) * 3, 2, "for less than 10s yet"),
        ({"upscaleDelaySeconds": 10}, 2, (4.0, 9, 9, 9, 9, 9, 9), 5, "2 -> 5"),
        # the lowest ask of the last 10 s: a burst that faded is not followed all the way
        ({"upscaleDelaySeconds": 10}, 2, (9.0, 9, 7, 9, 9, 9), 4, "2 -> 4"),
        ({"upscaleDelaySeconds": 10}, 2, (9.0, 9, 9, 9, 4, 9), 2, "not for all of the last 10s"),
        ({"downscaleDelaySeconds": 10}, 4, (0.0, 0.0), 4, "for less than 10s yet"),
        ({"downscaleDelaySeconds": 10}, 4, (0.0,) * 6, 1, "4 -> 1"),  # never below minReplicas
        ({"downscaleDelaySeconds": 10}, 4, (0.0, 0, 0, 5, 0, 0), 3, "4 -> 3"),  # the highest ask
        ({"minReplicas": 2}, 4, (0.0,) * 40, 2, "4 -> 2"),
        ({"metric": "QueueDepth", "target": 4}, 1, (13.0,), 4, "QueueDepth 6.50"),
    ],
)  # fmt: skip
def test_the_count_follows_the_load_within_bounds_and_delays(spec, current, totals, want, says):
    d = autoscale.decide(auto(**spec), current, readings(*totals), at(100))
    assert d.desired == want
    assert says in d.message


def test_no_replica_read_keeps_the_count():
    d = autoscale.decide(auto(), 3, readings(0.0, reporting=0), at(100))
    assert d.desired == 3 and "no Ready replica to read" in d.message


def test_steady_load_with_noise_never_flaps():
    rng = random.Random(7)
    a = auto(downscaleDelaySeconds=30)
    current, history, moves = 3, [], 0
    for step in range(600):  # 20 minutes of readings every 2 s, 6 +- 8 % in flight
        history.append(LoadSample(at(step * 2.0), 6.0 * (1 + rng.uniform(-0.08, 0.08)), current))
        d = autoscale.decide(a, current, history[-40:], at(step * 2.0))
        moves += d.desired != current
        current = d.desired
    assert current == 3 and moves == 0


def test_a_lull_shorter_than_the_down_delay_keeps_the_replicas():
    a = auto(downscaleDelaySeconds=20)
    totals = [6.0] * 10 + [0.0] * 9 + [6.0] * 10  # 18 s of nothing in flight
    current = 3
    for i in range(len(totals)):
        current = autoscale.decide(a, current, readings(*totals[: i + 1]), at(100)).desired
    assert current == 3


# --- the planner following it ------------------------------------------------------------------


class LoadedSim(Sim):
    """Every step, each Ready serving replica reports its share of `load(t)` in flight."""

    def __init__(self, job, nodes, load) -> None:
        super().__init__(job, nodes)
        self.load = load
        self.readings: list[LoadSample] = []

    def world(self):
        w = super().world()
        serving = [p for p in w.pods if p["metadata"]["labels"]["distml.io/serving"] == "true"
                   and p["status"].get("phase") == "Running"]  # fmt: skip
        self.readings.append(LoadSample(at(self.t), self.load(self.t) if serving else 0.0,
                                        len(serving)))  # fmt: skip
        w.load = tuple(r for r in self.readings if self.t - (r.time - at(0)).total_seconds() < 60)
        return w


def test_a_load_step_adds_replicas_and_its_end_drains_them_after_the_delay():
    spec = {"autoscaling": {"minReplicas": 1, "maxReplicas": 4, "target": 2,
                            "downscaleDelaySeconds": 10},
            "rollout": {"drainSeconds": 1}}  # fmt: skip
    sim = LoadedSim(serving_job(1, **spec), [make_node(f"n{i}", 8) for i in range(2)],
                    load=lambda t: 7.0 if 10 <= t < 30 else 1.0)  # fmt: skip
    plan = sim.run(lambda p: p.status["phase"] == "Available" and sim.t > 5)
    assert plan.status["autoscaling"]["desiredReplicas"] == 1
    plan = sim.run(lambda p: p.status["readyReplicas"] == 4)  # ceil(7 / 2)
    up = [m for r, m in sim.events if r == "ScaledUp"]
    assert up == ["InFlightRequests 7.00 per replica over 1 (target 2): 1 -> 4 replicas"]
    assert 10 <= sim.t < 14 and plan.status["readyText"] == "4/4"
    assert plan.signals.desired == 4
    # The load ends at t = 30; 10 s later the job goes back to 1, draining the others.
    plan = sim.run(lambda p: p.status["autoscaling"]["desiredReplicas"] == 1)
    assert 40 <= sim.t < 42 and plan.signals.autoscaled == "down"
    down = [m for r, m in sim.events if r == "ScaledDown"]
    assert down == ["InFlightRequests 0.25 per replica over 4 (target 2): 4 -> 1 replicas"]
    drains = [m for r, m in sim.events if r == "Draining"]
    plan = sim.run(lambda p: p.status["phase"] == "Available" and len(sim.pods) == 1)
    assert len(drains) == 3 and sim.min_ready_seen >= 1
    assert math.isclose(plan.status["autoscaling"]["target"], 2)
    # Steady at 1 from here: nothing moves.
    for _ in range(40):
        sim.step()
        sim.t += 0.5
    assert [r for r, _ in sim.events].count("ScaledDown") == 1 and len(sim.pods) == 1
