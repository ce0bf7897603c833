"""The point-to-point steps every algorithm is built from."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist


def exchange(send: torch.Tensor, to: int, recv: torch.Tensor, frm: int) -> None:
    """Sends `send` to rank `to` while receiving `recv` from rank `frm`; both posted before either
    is waited on, so a ring of exchanges cannot deadlock. Empty tensors are not sent: both sides
    know the sizes, so they skip together."""
    works: list[dist.Work | None] = []
    if send.numel():
        works.append(dist.isend(send, to))
    if recv.numel():
        works.append(dist.irecv(recv, frm))
    wait_all(works)


def wait_all(works: Sequence[dist.Work | None]) -> None:
    for w in works:
        if w is not None:
            w.wait()


def position(ranks: Sequence[int]) -> int:
    me = dist.get_rank()
    try:
        return list(ranks).index(me)
    except ValueError:
        raise ValueError(f"rank {me} is not among the ranks {list(ranks)}") from None
