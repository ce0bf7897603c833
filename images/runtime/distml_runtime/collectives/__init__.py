"""All-reduce algorithms written on point-to-point send/recv, so each one's cost model is visible.

Every algorithm reduces a flat, contiguous tensor in place, summing it across `ranks` (global ranks
of the default process group, in ring/tree order); the rank calling it must be one of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist

from distml_runtime.collectives.hierarchical import hierarchical_allreduce
from distml_runtime.collectives.param_server import param_server_allreduce
from distml_runtime.collectives.ring import ring_allreduce
from distml_runtime.collectives.tree import tree_allreduce

AllReduce = Callable[[torch.Tensor, Sequence[int]], None]


def native_allreduce(t: torch.Tensor, ranks: Sequence[int]) -> None:
    """torch.distributed.all_reduce over the default group: the baseline."""
    if len(ranks) != dist.get_world_size():
        raise ValueError("native all-reduce runs over the whole default group")
    dist.all_reduce(t)


__all__ = [
    "AllReduce",
    "hierarchical_allreduce",
    "native_allreduce",
    "param_server_allreduce",
    "ring_allreduce",
    "tree_allreduce",
]
