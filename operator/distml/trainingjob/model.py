"""What the TrainingJob planner reads and returns: the settings and the outcome each policy
decides (the world and the plan are every kind's: distml.reconcile). Pure data and the status's
wire form."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from distml import reconcile
from distml.api.models import TrainingJobStatus
from distml.reconcile import Event, Plan, PodDeletion, Settings, World

Obj = dict[str, Any]


@dataclass(frozen=True)
class PhaseChange:
    phase: str  # a distml.api.models.Phase
    reason: str
    message: str
    event_type: str = "Normal"
    # Post the Event only when the phase or reason changes (the message counts something).
    announce_reason_once: bool = False


@dataclass(frozen=True)
class Signals:
    """What happened, for the metrics; set by the policy that saw it."""

    started_seconds: float | None = None  # admitted -> all Running
    queue_wait_seconds: float | None = None
    gang_timeout: bool = False
    restarted: bool = False
    resized: bool = False
    elastic_resizes: tuple[tuple[str, str], ...] = ()  # (shrink | grow, reason) of each
    refused: bool = False  # a create the API refused released the gang
    disrupted: bool = False  # pods on nodes NotReady in a disruption: no restart for them
    preflight_busbw_gbps: float | None = None  # measured by this generation's preflight


@dataclass(frozen=True)
class Outcome:
    """One policy's decision. `status` holds TrainingJobStatus fields (Python names) to set;
    a final outcome ends the planner's run, another lets the next policies decide on top of it."""

    phase: PhaseChange | None = None
    status: Mapping[str, Any] = field(default_factory=dict)
    create: tuple[Obj, ...] = ()
    delete: tuple[PodDeletion, ...] = ()
    events: tuple[Event, ...] = ()
    requeue_after: float | None = None
    delete_job: bool = False
    signals: Signals = Signals()
    final: bool = True


def dump_status(status: TrainingJobStatus) -> Obj:
    """The status as the API stores it; unset fields are null, which a merge patch removes."""
    return status.model_dump(by_alias=True, mode="json")


def read_status(job: Obj) -> TrainingJobStatus:
    return TrainingJobStatus.model_validate(job.get("status") or {})


# Status fields that only count what exists (they change with every pod a gang starts): a change
# to these alone may wait a moment and go out with the next, the phase never does.
COUNT_FIELDS = frozenset(
    {"replicas", "active", "ready", "succeeded", "failed", "readyText", "gpus", "ranks"}
)


def only_counts_changed(job: Obj, status: Obj) -> bool:
    old = dump_status(read_status(job))
    return old != status and all(
        old.get(k) == v for k, v in status.items() if k not in COUNT_FIELDS
    )


def status_changed(job: Obj, status: Obj) -> bool:
    """Whether `status` says something the job's stored status does not (reconcile's rule)."""
    return reconcile.status_changed(TrainingJobStatus, job, status)


__all__ = ["Event", "Plan", "PodDeletion", "Settings", "World"]
