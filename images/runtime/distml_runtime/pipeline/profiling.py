"""Measures a real model layer by layer on the current device, to feed the planner: forward +
backward time per micro-batch, parameter bytes, and the bytes autograd keeps for the backward."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import nn

from distml_runtime.pipeline.planning import LayerProfile


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _saved_bytes(layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Runs one forward and adds up the tensors autograd saves for backward, plus the output
    the next layer reads: what one micro-batch keeps alive in this layer until its backward."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = layer(x)
    return out, total + out.numel() * out.element_size()


def profile_layers(
    layers: Sequence[nn.Module],
    sample: torch.Tensor,
    device: torch.device,
    repeats: int = 5,
    warmup: int = 2,
) -> list[LayerProfile]:
    """Profiles each layer on `sample` (one micro-batch), feeding each its predecessor's output.
    Reports the median of `repeats` timed forward+backward runs after `warmup` untimed ones."""
    profiles: list[LayerProfile] = []
    x = sample.to(device)
    for index, layer in enumerate(layers):
        layer = layer.to(device)
        x = x.detach().requires_grad_(x.is_floating_point())
        times = []
        for attempt in range(warmup + repeats):
            _sync(device)
            t0 = time.perf_counter()
            out = layer(x)
            out.backward(torch.ones_like(out))
            _sync(device)
            if attempt >= warmup:
                times.append(time.perf_counter() - t0)
        layer.zero_grad(set_to_none=True)
        out, act_bytes = _saved_bytes(layer, x)
        params = sum(p.numel() * p.element_size() for p in layer.parameters())
        name = f"{index}:{type(layer).__name__}"
        if isinstance(layer, nn.Sequential) and len(layer):
            name = f"{index}:{type(layer[0]).__name__}"
        profiles.append(LayerProfile(name, sorted(times)[len(times) // 2], params, act_bytes))
        x = out
    return profiles
