"""Pipeline parallelism: the planner (pure, importable without torch) is re-exported here; the
stages and schedules live in `distml_runtime.pipeline.stages`, the profiler in `.profiling`."""

from distml_runtime.pipeline.planning import (
    LayerProfile,
    MemoryModel,
    PipelinePlan,
    StagePlan,
    plan_pipeline,
    split_evenly,
    split_layers,
    theoretical_bubble,
)

__all__ = [
    "LayerProfile",
    "MemoryModel",
    "PipelinePlan",
    "StagePlan",
    "plan_pipeline",
    "split_evenly",
    "split_layers",
    "theoretical_bubble",
]
