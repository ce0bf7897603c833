"""Models as lists of layers, the unit the planner splits: a real MLP with per-layer widths (uneven
widths give uneven costs) and a layer with simulated compute time for schedule measurements."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

DIGITS_FEATURES, DIGITS_CLASSES = 64, 10


def mlp_layers(
    widths: Sequence[int], n_in: int = DIGITS_FEATURES, n_out: int = DIGITS_CLASSES, seed: int = 0
) -> list[nn.Module]:
    """Linear+ReLU blocks of the given widths, then a classifier: len(widths) + 1 layers. The
    same seed gives the same weights on every rank, so each rank can build the whole model and
    keep only its stages."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    prev = n_in
    for width in widths:
        layers.append(nn.Sequential(nn.Linear(prev, width), nn.ReLU()))
        prev = width
    layers.append(nn.Linear(prev, n_out))
    return layers


_busy = [0.0]
_calls = {"forward": 0, "backward": 0}


def simulated_busy_seconds() -> float:
    """Seconds this process spent in simulated compute since it started (sleeps overshoot a
    little; what they really took is counted)."""
    return _busy[0]


def simulated_calls() -> dict[str, int]:
    """How many simulated forwards and backwards this process has run since it started."""
    return dict(_calls)


def _compute(seconds: float) -> None:
    t0 = time.perf_counter()
    time.sleep(seconds)
    _busy[0] += time.perf_counter() - t0


class _Sleep(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, seconds: float) -> torch.Tensor:
        ctx.seconds = seconds
        _calls["forward"] += 1
        _compute(seconds)
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        _calls["backward"] += 1
        _compute(2 * ctx.seconds)  # backward costs about twice the forward, as on a GPU
        return grad, None


class SimulatedLayer(nn.Module):
    """A small linear layer whose forward takes `seconds` and backward twice that, sleeping the
    way a host thread waits on a GPU kernel. Ranks that share a few CPU cores then do not slow
    each other down, so a schedule's bubbles can be measured on a laptop."""

    def __init__(self, width: int, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.linear = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Sleep.apply(self.linear(x), self.seconds)


def simulated_layers(seconds: Sequence[float], width: int = 16, seed: int = 0) -> list[nn.Module]:
    torch.manual_seed(seed)
    return [SimulatedLayer(width, s) for s in seconds]
