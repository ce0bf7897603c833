"""Many nodes NotReady together is an outage, not node loss: the rule in tables."""

from __future__ import annotations

import pytest

from distml.policies.disruption import ZONE_LABEL, find, hold, loss_pending

from .builders import at, make_node


def cluster(zones: dict[str, tuple[int, int]]):
    """{zone: (ready, not ready)} -> nodes."""
    out = []
    for zone, (up, down) in zones.items():
        for i in range(up + down):
            out.append(make_node(f"{zone or 'n'}-{i}", ready=i >= down, **{ZONE_LABEL: zone}))
    return out


@pytest.mark.parametrize(
    ("zones", "disrupted", "scope"),
    [
        ({"a": (8, 0)}, 0, None),
        ({"a": (7, 1)}, 0, None),  # one node lost: node loss, handled as before
        ({"a": (2, 2)}, 0, None),  # two of four: could be two dead nodes
        ({"a": (0, 8)}, 8, "the cluster"),  # every heartbeat stopped: the control plane
        ({"a": (0, 1)}, 1, "the cluster"),  # a one-node cluster: nothing to restart onto anyway
        ({"a": (3, 5)}, 5, "the cluster"),  # 5 of 8 >= 55%
        ({"a": (3, 5), "b": (8, 0)}, 5, "zone a"),  # most of a zone, a third of the cluster
        ({"a": (4, 4), "b": (8, 0)}, 0, None),  # half a zone: below the threshold
        ({"a": (1, 3), "b": (8, 0)}, 3, "zone a"),  # 3 of 4 in a zone, 3 of 12 overall
        ({"a": (0, 4), "b": (8, 0)}, 0, None),  # a whole zone gone while the rest answers
        ({"a": (1, 2), "b": (8, 0)}, 0, None),  # two nodes are never a disruption by share
    ],
)
def test_which_not_ready_nodes_are_taken_for_an_outage(zones, disrupted, scope):
    found = find(cluster(zones))
    assert len(found.not_ready) == disrupted
    assert bool(found) is (scope is not None)
    if scope:
        assert scope in found.message and f"{disrupted} of" in found.message


def test_it_covers_only_the_not_ready_nodes_of_the_disrupted_zone():
    nodes = cluster({"a": (1, 3), "b": (6, 2)})
    found = find(nodes)
    assert found.scopes == ("zone a",)
    assert [found.covers(n["metadata"]["name"]) for n in nodes[:4]] == [True] * 3 + [False]
    assert not any(found.covers(n["metadata"]["name"]) for n in nodes[4:])


def test_nodes_still_silent_when_the_disruption_ends_are_held_for_a_grace_then_lost():
    nodes = cluster({"a": (0, 4)})
    held = hold({}, find(nodes), nodes, now=0.0, grace=60)
    assert held == dict.fromkeys(["a-0", "a-1", "a-2", "a-3"])  # while it lasts: no end
    # Two report back: 2 of 4 NotReady is no disruption any more; the two silent ones get 60s.
    for n in nodes[:2]:
        n["status"]["conditions"][0]["status"] = "True"
    assert not find(nodes)
    held = hold(held, find(nodes), nodes, now=10.0, grace=60)
    assert held == {"a-2": 70.0, "a-3": 70.0}
    nodes[2]["status"]["conditions"][0]["status"] = "True"
    held = hold(held, find(nodes), nodes, now=20.0, grace=60)
    assert held == {"a-3": 70.0}  # a-2 reported back; the end does not move
    assert hold(held, find(nodes), nodes, now=71.0, grace=60) == {}  # a-3 is lost now


@pytest.mark.parametrize(
    ("ready", "since", "now", "left"),
    [
        (True, 0, 0, 0.0),  # Ready: nothing pending
        (False, 0, 0, 15.0),  # just went NotReady: the whole window
        (False, 0, 6, 9.0),
        (False, 0, 15, 0.0),  # the window passed: lost now
        (False, 0, 40, 0.0),
    ],
)
def test_a_not_ready_node_is_lost_only_after_the_window(ready, since, now, left):
    assert loss_pending(make_node("n", ready=ready, since=since), at(now), after=15) == left


def test_a_node_that_never_reported_counts_from_its_creation():
    node = {"metadata": {"name": "n", "creationTimestamp": "2026-01-01T12:00:00Z"}}
    assert loss_pending(node, at(5), after=15) == 10.0
