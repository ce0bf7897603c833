"""Training metrics a pod exposes on /metrics. Workers are separate processes under torchrun, so
they write through prometheus_client's multiprocess mode (the launcher sets
PROMETHEUS_MULTIPROC_DIR) and the launcher serves the merged view."""

from __future__ import annotations

import os
from typing import Final

from prometheus_client import Counter, Gauge

# not "job": Prometheus owns that label (the scrape job) and would rename ours to exported_job
_LABELS = ["trainingjob", "rank"]
_MODE: Final = "liveall"  # one series per live worker process


class TrainingMetrics:
    def __init__(self, rank: int, job: str | None = None) -> None:
        job = job or os.environ.get("DISTML_JOB_NAME", "local")
        key = {"trainingjob": job, "rank": str(rank)}
        self.samples_per_second = Gauge(
            "distml_train_samples_per_second",
            "Training samples per second, this rank",
            _LABELS,
            multiprocess_mode=_MODE,
        ).labels(**key)
        self.step_seconds = Gauge(
            "distml_train_step_duration_seconds",
            "Wall time of the last training step",
            _LABELS,
            multiprocess_mode=_MODE,
        ).labels(**key)
        self.loss = Gauge(
            "distml_train_loss", "Training loss of the last step", _LABELS, multiprocess_mode=_MODE
        ).labels(**key)
        self.allreduce_seconds = Gauge(
            "distml_train_allreduce_duration_seconds",
            "Time gradient all-reduce took in the last step (summed over buckets)",
            _LABELS,
            multiprocess_mode=_MODE,
        ).labels(**key)
        self.step = Gauge(
            "distml_train_step", "Global step reached", _LABELS, multiprocess_mode=_MODE
        ).labels(**key)
        self.steps = Counter(
            "distml_train_steps", "Training steps completed by this process", _LABELS
        ).labels(**key)
        self.checkpoints = Counter(
            "distml_train_checkpoints", "Checkpoints written", _LABELS
        ).labels(**key)
