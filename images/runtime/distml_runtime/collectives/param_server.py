"""Parameter-server all-reduce: K server ranks (the first K, colocated with workers as in BytePS)
each own one shard; every rank pushes each shard to its server, the server sums, and every rank
pulls the sum back. A server's link carries (n-1)/K of the message each way, so with few servers
it is the bottleneck the ring avoids."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

from distml_runtime.collectives.p2p import position, wait_all


def param_server_allreduce(t: torch.Tensor, ranks: Sequence[int], servers: int = 1) -> None:
    n = len(ranks)
    if not 1 <= servers <= n:
        raise ValueError(f"servers must be between 1 and the world size {n}, got {servers}")
    if n == 1:
        return
    p = position(ranks)
    shards = list(t.view(-1).tensor_split(servers))
    mine = shards[p] if p < servers else None
    # Push: every rank sends each shard it does not own to that shard's server.
    works = [
        dist.isend(shard, ranks[s]) for s, shard in enumerate(shards) if s != p and shard.numel()
    ]
    inbox = []
    if mine is not None and mine.numel():
        inbox = [torch.empty_like(mine) for _ in range(n - 1)]
        others = [r for i, r in enumerate(ranks) if i != p]
        works += [dist.irecv(buf, src) for buf, src in zip(inbox, others, strict=True)]
    wait_all(works)
    if mine is not None:
        for buf in inbox:  # a fixed order, so the sum is the same on every run
            mine.add_(buf)
    # Pull: each server sends its summed shard back to every other rank.
    works = []
    for s, shard in enumerate(shards):
        if not shard.numel():
            continue
        if s == p:
            works += [dist.isend(shard, r) for i, r in enumerate(ranks) if i != p]
        else:
            works.append(dist.irecv(shard, ranks[s]))
    wait_all(works)
