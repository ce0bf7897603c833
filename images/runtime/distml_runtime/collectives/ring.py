"""Ring all-reduce: a reduce-scatter then an all-gather around the ring, 2(n-1) steps each moving
1/n of the data. Every link carries 2(n-1)/n of the message: bandwidth-optimal."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from distml_runtime.collectives.p2p import exchange, position


def ring_allreduce(t: torch.Tensor, ranks: Sequence[int]) -> None:
    n = len(ranks)
    if n == 1:
        return
    p = position(ranks)
    nxt, prv = ranks[(p + 1) % n], ranks[(p - 1) % n]
    chunks = list(t.view(-1).tensor_split(n))  # the first chunks are the largest
    scratch = torch.empty_like(chunks[0])
    # Reduce-scatter: after step s, chunk (p - s - 1) holds the sum of s + 2 ranks' parts.
    for s in range(n - 1):
        incoming = chunks[(p - s - 1) % n]
        buf = scratch[: incoming.numel()]
        exchange(chunks[(p - s) % n], nxt, buf, prv)
        incoming.add_(buf)
    # Now chunk (p + 1) is complete here; pass complete chunks around once more.
    for s in range(n - 1):
        exchange(chunks[(p + 1 - s) % n], nxt, chunks[(p - s) % n], prv)
