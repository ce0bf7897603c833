"""Pipeline and hybrid (dp x pp) training with torch.distributed.pipelining.

Every rank builds the whole model from the same seed, keeps the layers of its stages, and joins
two kinds of process groups: its pipeline (one rank per position) and its stage's data-parallel
replicas (the same position in every pipeline). A step runs the chosen schedule over the
micro-batches of this replica's shard of the global batch, then averages each stage's gradients
across its replicas and applies the optimiser.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.pipelining import (
    PipelineStage,
    Schedule1F1B,
    ScheduleGPipe,
    ScheduleInterleaved1F1B,
)
from torch.distributed.pipelining.stage import _PipelineStageBase

from distml_runtime.pipeline.planning import Range, RankLayout

SCHEDULES = ("gpipe", "1f1b", "interleaved")
FP16_LOSS_SCALE = 1024.0  # static: gradients of a small model stay far from fp16's range limits


class _Autocast(nn.Module):
    """Runs a stage in lower precision and hands fp32 on, so the p2p buffers keep one dtype."""

    def __init__(self, inner: nn.Module, device_type: str, dtype: torch.dtype) -> None:
        super().__init__()
        self.inner, self.device_type, self.dtype = inner, device_type, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            out = self.inner(x)
        return out.float()


class _NoInputGradient(torch.autograd.Function):
    """Ties a stage's output to its input without differentiating through the stage: backward
    passes the output's gradient on to the weights and hands the previous stage zeros."""

    @staticmethod
    def forward(ctx: Any, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return out.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        (x,) = ctx.saved_tensors
        return (grad if ctx.needs_input_grad[0] else None), torch.zeros_like(x)


class _SkipInputGradient(nn.Module):
    """For a stage after a fully frozen prefix: nobody uses the gradient of its input, so it is
    not computed (a frozen stage then does no backward work at all). torch's PipelineStage still
    expects a gradient message for the previous stage; it gets zeros."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _NoInputGradient.apply(self.inner(x.detach()), x)


@dataclass(frozen=True)
class PipelineConfig:
    schedule: str = "1f1b"
    microbatches: int = 4
    freeze_layers: int = 0  # the first k layers keep their weights
    precision: str = "fp32"  # fp32 | bf16 | fp16
    lr: float = 0.05
    momentum: float = 0.0

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {SCHEDULES}")
        if self.microbatches < 1:
            raise ValueError(f"microbatches must be >= 1; got {self.microbatches}")


def _amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "fp32":
        return None
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 needs a GPU; use bf16 on the CPU")
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


class PipelineTrainer:
    """One rank's share of a dp x pp job. Call `step(x, y)` on every rank with the same global
    batch; it returns this replica's mean loss on the rank holding the last stage, else None."""

    def __init__(
        self,
        layers: Sequence[nn.Module],
        ranges: Sequence[Range],
        layout: RankLayout,
        config: PipelineConfig,
        device: torch.device,
        loss_fn: nn.Module | None = None,
    ) -> None:
        if len(ranges) != layout.num_stages:
            raise ValueError(f"{len(ranges)} layer ranges for {layout.num_stages} stages")
        self.layout, self.config, self.device = layout, config, device
        rank = dist.get_rank()
        self.rank = rank
        for i, layer in enumerate(layers):
            layer.requires_grad_(i >= config.freeze_layers)
        # every rank creates every group, in the same order, as new_group requires
        pipe_groups = [dist.new_group(layout.pipeline_ranks(r)) for r in range(layout.dp)]
        dp_groups = [dist.new_group(layout.stage_replica_ranks(k)) for k in range(layout.pp)]
        self.pipe_group = pipe_groups[layout.replica(rank)]
        self.dp_group = dp_groups[layout.position(rank)]
        amp = _amp_dtype(config.precision, device)
        self.loss_scale = FP16_LOSS_SCALE if config.precision == "fp16" else 1.0
        self.modules: list[nn.Module] = []
        stages: list[_PipelineStageBase] = []
        for index in layout.stages_of(rank):
            start, end = ranges[index]
            module: nn.Module = nn.Sequential(*layers[start:end]).to(device)
            self.modules.append(module)
            if index > 0 and start <= config.freeze_layers:  # every earlier layer is frozen
                module = _SkipInputGradient(module)
            if amp is not None:
                module = _Autocast(module, device.type, amp)
            stages.append(
                PipelineStage(module, index, layout.num_stages, device, group=self.pipe_group)
            )
        self.holds_first = 0 in layout.stages_of(rank)
        self.holds_last = layout.num_stages - 1 in layout.stages_of(rank)
        criterion = loss_fn or nn.CrossEntropyLoss()
        scale = self.loss_scale

        def loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return criterion(out, target) * scale

        self.schedule: Any
        if config.schedule == "interleaved":
            self.schedule = ScheduleInterleaved1F1B(stages, config.microbatches, loss_fn=loss)
        elif len(stages) != 1:
            raise ValueError(f"schedule {config.schedule} runs one stage per rank")
        elif config.schedule == "gpipe":
            self.schedule = ScheduleGPipe(stages[0], config.microbatches, loss_fn=loss)
        else:
            self.schedule = Schedule1F1B(stages[0], config.microbatches, loss_fn=loss)
        self.trainable = [p for m in self.modules for p in m.parameters() if p.requires_grad]
        self.sync_seconds = 0.0  # the last step's gradient all-reduce
        self.optimizer = (
            torch.optim.SGD(self.trainable, lr=config.lr, momentum=config.momentum)
            if self.trainable
            else None
        )

    def shard(self, x: torch.Tensor) -> torch.Tensor:
        """This replica's contiguous part of the global batch."""
        dp, r = self.layout.dp, self.layout.replica(self.rank)
        if len(x) % dp:
            raise ValueError(f"global batch {len(x)} is not divisible by {dp} replicas")
        n = len(x) // dp
        return x[r * n : (r + 1) * n].to(self.device)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float | None:
        xs, ys = self.shard(x), self.shard(y)
        if len(xs) % self.config.microbatches:
            raise ValueError(
                f"a replica's batch of {len(xs)} does not split into "
                f"{self.config.microbatches} equal micro-batches"
            )
        losses: list[torch.Tensor] = []
        kwargs: dict[str, Any] = {}
        if self.holds_last:
            kwargs = {"target": ys, "losses": losses}
        if self.holds_first:
            self.schedule.step(xs, **kwargs)
        else:
            self.schedule.step(**kwargs)
        self._sync_gradients()
        if self.optimizer is not None:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        if not losses:
            return None
        return float(torch.stack([v.detach() for v in losses]).mean()) / self.loss_scale

    def _sync_gradients(self) -> None:
        """Averages the stage's gradients over its replicas in one flat all-reduce, and undoes
        the fp16 loss scale. A frozen stage has nothing to send and skips it."""
        grads = [p.grad for p in self.trainable if p.grad is not None]
        self.sync_seconds = 0.0
        if not grads:
            return
        t0 = time.perf_counter()
        flat = torch.cat([g.reshape(-1) for g in grads])
        if self.layout.dp > 1:
            dist.all_reduce(flat, group=self.dp_group)
        flat /= self.layout.dp * self.loss_scale
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()
        self.sync_seconds = time.perf_counter() - t0

    def parameters_by_layer(self, ranges: Sequence[Range]) -> dict[int, list[torch.Tensor]]:
        """This rank's parameters keyed by global layer index, for checks and checkpoints."""
        out: dict[int, list[torch.Tensor]] = {}
        for index, module in zip(self.layout.stages_of(self.rank), self.modules, strict=True):
            start, _end = ranges[index]
            for offset, layer in enumerate(module.children()):
                out[start + offset] = [p.detach().cpu() for p in layer.parameters()]
        return out


class PipelineInference:
    """Forward-only pipeline for serving: a batch of requests is cut into micro-batches that flow
    through the stages; the rank holding the last stage gets the outputs."""

    def __init__(
        self,
        layers: Sequence[nn.Module],
        ranges: Sequence[Range],
        microbatches: int,
        device: torch.device,
        group: dist.ProcessGroup | None = None,
    ) -> None:
        p = len(ranges)
        size = dist.get_world_size(group)
        if size != p:
            raise ValueError(f"{p} stages need {p} ranks in the group; it has {size}")
        self.index = dist.get_rank(group)
        start, end = ranges[self.index]
        module = nn.Sequential(*layers[start:end]).to(device).eval().requires_grad_(False)
        stage = PipelineStage(module, self.index, p, device, group=group)
        self.schedule = ScheduleGPipe(stage, microbatches)
        self.last = self.index == p - 1

    @torch.no_grad()
    def infer(self, x: torch.Tensor | None = None) -> torch.Tensor | None:
        out = self.schedule.step(x) if self.index == 0 else self.schedule.step()
        return out if self.last else None
