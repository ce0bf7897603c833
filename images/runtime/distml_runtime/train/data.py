"""A small real dataset that ships inside a package (scikit-learn's 8x8 handwritten digits, no
download), and the global sample order shared by every rank.

The order depends only on (seed, global position), never on the world size, so a job resumed with
a different number of ranks continues exactly where the global sample stream stopped.
"""

from __future__ import annotations

import torch


def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    return x, y


def batch_indices(step: int, rank: int, world: int, batch: int, n: int, seed: int) -> torch.Tensor:
    """Sample indices of `rank`'s micro-batch at global `step`: the global batch of that step is
    positions [step*world*batch, (step+1)*world*batch) of an endless stream of epoch shuffles."""
    start = step * world * batch + rank * batch
    positions = torch.arange(start, start + batch)
    epochs = positions // n
    out = torch.empty(batch, dtype=torch.int64)
    for epoch in epochs.unique().tolist():
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        mask = epochs == epoch
        out[mask] = perm[positions[mask] % n]
    return out
