"""Simulated GPU nodes look like real 8-GPU servers to the scheduler and to placement code."""

from __future__ import annotations

import pytest

from distml.localcluster.nodes import (
    BLOCK_LABEL,
    ZONE_LABEL,
    ClusterShape,
    NodeShape,
    render_gpu_node,
    render_gpu_nodes,
)


def test_node_offers_gpus_in_capacity_and_allocatable_with_feature_labels():
    node = render_gpu_node(ClusterShape(), NodeShape(gpus=8), 0)
    for field in ("capacity", "allocatable"):
        assert node["status"][field]["nvidia.com/gpu"] == "8"
    labels = node["metadata"]["labels"]
    assert labels["nvidia.com/gpu.count"] == "8"
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert labels["nvidia.com/gpu.memory"] == "81559"
    assert node["metadata"]["annotations"] == {"kwok.x-k8s.io/node": "fake"}
    assert node["spec"]["taints"] == [
        {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
    ]


def test_cpu_only_node_has_no_gpu_taint():
    node = render_gpu_node(ClusterShape(), NodeShape(gpus=0), 0)
    assert node["spec"]["taints"] == []


@pytest.mark.parametrize(
    ("nodes", "per_block", "zones", "expected"),
    [
        (4, 2, 2, [("zone-a", "block-00")] * 2 + [("zone-b", "block-01")] * 2),
        (3, 1, 2, [("zone-a", "block-00"), ("zone-b", "block-01"), ("zone-a", "block-02")]),
        (2, 4, 1, [("zone-a", "block-00")] * 2),
    ],
)
def test_consecutive_nodes_share_a_block_and_blocks_alternate_zones(
    nodes, per_block, zones, expected
):
    rendered = render_gpu_nodes(ClusterShape(nodes, per_block, zones), NodeShape())
    got = [
        (n["metadata"]["labels"][ZONE_LABEL], n["metadata"]["labels"][BLOCK_LABEL])
        for n in rendered
    ]
    assert got == expected


def test_names_are_unique_and_sortable_at_scale():
    names = [n["metadata"]["name"] for n in render_gpu_nodes(ClusterShape(nodes=300), NodeShape())]
    assert len(set(names)) == 300
    assert names == sorted(names)


@pytest.mark.parametrize("kwargs", [{"nodes": -1}, {"nodes_per_block": 0}, {"zones": 0}])
def test_impossible_shapes_are_refused(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        ClusterShape(**kwargs)
