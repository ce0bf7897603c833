"""Tree all-reduce: a binomial-tree reduce to the first rank, then a binomial-tree broadcast back.
2*ceil(log2 n) steps each moving the whole message: fewer steps than the ring, so it wins when a
message is small enough that per-step latency, not bandwidth, dominates."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

from distml_runtime.collectives.p2p import position


def tree_reduce(t: torch.Tensor, ranks: Sequence[int]) -> None:
    """Sums `t` over `ranks` into ranks[0]'s copy; the others' copies are left partly reduced."""
    n, p = len(ranks), position(ranks)
    if n == 1 or not t.numel():
        return
    scratch = torch.empty_like(t)
    mask = 1
    while mask < n:
        if p & mask:
            dist.send(t, ranks[p - mask])
            return
        if p | mask < n:
            dist.recv(scratch, ranks[p | mask])
            t.add_(scratch)
        mask <<= 1


def tree_broadcast(t: torch.Tensor, ranks: Sequence[int]) -> None:
    """Copies ranks[0]'s `t` to every rank in `ranks`."""
    n, p = len(ranks), position(ranks)
    if n == 1 or not t.numel():
        return
    mask = 1
    while mask < n:
        if p & mask:
            dist.recv(t, ranks[p - mask])
            break
        mask <<= 1
    mask >>= 1
    while mask:
        if p + mask < n:
            dist.send(t, ranks[p + mask])
        mask >>= 1


def tree_allreduce(t: torch.Tensor, ranks: Sequence[int]) -> None:
    flat = t.view(-1)
    tree_reduce(flat, ranks)
    tree_broadcast(flat, ranks)
