"""Hierarchical all-reduce: reduce inside each node to its leader over the fast local path, ring
all-reduce among the node leaders over the network, then broadcast inside each node. Only one
rank per node crosses the slow links."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from distml_runtime.collectives.p2p import position
from distml_runtime.collectives.ring import ring_allreduce
from distml_runtime.collectives.tree import tree_broadcast, tree_reduce


def node_groups(ranks: Sequence[int], ranks_per_node: int) -> list[list[int]]:
    """Consecutive ranks share a node, as torchrun numbers them (node rank x nproc + local rank)."""
    if ranks_per_node < 1:
        raise ValueError(f"ranks_per_node must be >= 1, got {ranks_per_node}")
    return [list(ranks[i : i + ranks_per_node]) for i in range(0, len(ranks), ranks_per_node)]


def hierarchical_allreduce(t: torch.Tensor, ranks: Sequence[int], ranks_per_node: int = 1) -> None:
    groups = node_groups(ranks, ranks_per_node)
    p = position(ranks)
    mine = groups[p // ranks_per_node]
    flat = t.view(-1)
    tree_reduce(flat, mine)
    if mine[0] == ranks[p]:
        ring_allreduce(flat, [g[0] for g in groups])
    tree_broadcast(flat, mine)
