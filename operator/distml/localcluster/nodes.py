"""Renders simulated GPU nodes as plain Node dicts: shape, GPU feature discovery labels, topology.

Pure: no I/O. The labels are the ones NVIDIA's GPU feature discovery and the cloud providers put
on real nodes, so scheduling and placement code sees what it would see on a real cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
SIMULATED_LABEL = "distml.io/simulated-node"
ZONE_LABEL = "topology.kubernetes.io/zone"
BLOCK_LABEL = "topology.distml.io/block"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}


@dataclass(frozen=True)
class NodeShape:
    """What one simulated server looks like; the defaults are an 8 x H100 80GB machine."""

    gpus: int = 8
    gpu_product: str = "NVIDIA-H100-80GB-HBM3"
    gpu_memory_mib: int = 81559
    cpu: str = "224"
    memory: str = "2Ti"
    ephemeral_storage: str = "30Ti"
    max_pods: int = 110
    instance_type: str = "gpu-8x-h100"


@dataclass(frozen=True)
class ClusterShape:
    """How many nodes, and how they group into network blocks and zones."""

    nodes: int = 4
    nodes_per_block: int = 2
    zones: int = 2
    name_prefix: str = "gpu-node"

    def __post_init__(self) -> None:
        if self.nodes < 0:
            raise ValueError(f"nodes must be >= 0, got {self.nodes}")
        if self.nodes_per_block < 1:
            raise ValueError(f"nodes_per_block must be >= 1, got {self.nodes_per_block}")
        if self.zones < 1:
            raise ValueError(f"zones must be >= 1, got {self.zones}")


def node_name(shape: ClusterShape, index: int) -> str:
    return f"{shape.name_prefix}-{index:03d}"


def node_topology(shape: ClusterShape, index: int) -> tuple[str, str]:
    """(zone, block) of node `index`: consecutive nodes share a block; blocks alternate zones."""
    block = index // shape.nodes_per_block
    zone = block % shape.zones
    return f"zone-{chr(ord('a') + zone)}", f"block-{block:02d}"


def render_gpu_node(cluster: ClusterShape, node: NodeShape, index: int) -> dict[str, Any]:
    """One simulated GPU node, as the Node object KWOK will keep alive."""
    name = node_name(cluster, index)
    zone, block = node_topology(cluster, index)
    resources = {
        "cpu": node.cpu,
        "memory": node.memory,
        "ephemeral-storage": node.ephemeral_storage,
        "pods": str(node.max_pods),
        GPU_RESOURCE: str(node.gpus),
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_ANNOTATION: "fake"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node.kubernetes.io/instance-type": node.instance_type,
                "type": "kwok",
                SIMULATED_LABEL: "kwok",
                ZONE_LABEL: zone,
                BLOCK_LABEL: block,
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.product": node.gpu_product,
                "nvidia.com/gpu.count": str(node.gpus),
                "nvidia.com/gpu.memory": str(node.gpu_memory_mib),
            },
        },
        "spec": {"taints": [dict(GPU_TAINT)] if node.gpus else []},
        "status": {"capacity": dict(resources), "allocatable": dict(resources)},
    }


def render_process_node(cluster: ClusterShape, node: NodeShape, index: int) -> dict[str, Any]:
    """A process node (`python -m distml.localnode`): the same labels as a KWOK node, but no KWOK
    annotation, since its own agent runs its pods as processes."""
    obj = render_gpu_node(cluster, node, index)
    del obj["metadata"]["annotations"][KWOK_ANNOTATION]
    obj["metadata"]["labels"].update({"type": "process", SIMULATED_LABEL: "process"})
    return obj


def render_gpu_nodes(cluster: ClusterShape, node: NodeShape) -> list[dict[str, Any]]:
    return [render_gpu_node(cluster, node, i) for i in range(cluster.nodes)]
