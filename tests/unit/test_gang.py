"""Gang admission counts whole-node fits of free GPUs, and says what it waits for."""

from __future__ import annotations

import pytest

from distml.gang import admit_gang, free_gpus

from .builders import make_node, make_pod, nodes


@pytest.mark.parametrize(
    ("replicas", "gpus", "busy", "admitted", "reason"),
    [
        (4, 8, [], True, "Admitted"),
        (5, 8, [], False, "InsufficientGPUs"),
        (4, 8, [("n0", 1)], False, "InsufficientGPUs"),  # 7 free on n0 cannot hold 8
        (8, 4, [], True, "Admitted"),
        (7, 4, [("n0", 4)], True, "Admitted"),
        (1, 16, [], False, "NoNodeFits"),
        (3, 0, [], True, "Admitted"),
    ],
)
def test_admission(replicas, gpus, busy, admitted, reason):
    pods = [
        make_pod("other", i, gpus=g).on(node).running().obj() for i, (node, g) in enumerate(busy)
    ]
    verdict = admit_gang(replicas, gpus, nodes(4), pods, job="llm")
    assert (verdict.admitted, verdict.reason) == (admitted, reason)


def test_refusal_says_what_it_needs_and_what_is_free():
    pods = [make_pod("other", 0, gpus=6).on("n0").running().obj()]
    verdict = admit_gang(2, 8, nodes(2), pods)
    assert verdict.message == (
        "waiting for 2 x 8 nvidia.com/gpu on whole nodes: room for 1 now; free GPUs: n0=2, n1=8"
    )


def test_no_node_fits_names_the_largest_node():
    assert "largest node has 8" in admit_gang(1, 9, nodes(2), []).message


def test_unscheduled_gpu_pods_of_other_gangs_are_counted_first():
    waiting = [make_pod("other", i).unscheduled().obj() for i in range(3)]
    assert free_gpus(nodes(4), waiting) == {"n0": 0, "n1": 0, "n2": 0, "n3": 8}


def test_not_ready_and_unselected_nodes_offer_nothing():
    cluster = [make_node("a", ready=False), make_node("b", zone="x"), make_node("c", zone="y")]
    assert free_gpus(cluster, [], {"zone": "y"}) == {"c": 8}


def test_finished_pods_hold_no_gpus():
    done = [make_pod("old", 0).on("n0").exited(0).obj()]
    assert free_gpus(nodes(1), done) == {"n0": 8}
