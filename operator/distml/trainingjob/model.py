"""What the TrainingJob planner reads and returns: the world the handler gathered, the settings,
the plan, and the outcome each policy decides. Pure data and the status's wire form."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from distml import admission, podpolicy
from distml.api.models import TrainingJobStatus
from distml.policies import disruption

Obj = dict[str, Any]


@dataclass(frozen=True)
class Settings:
    backoff_base_seconds: float = 10.0
    backoff_cap_seconds: float = 300.0
    queued_recheck_seconds: float = 15.0
    backfill_seconds: float = 300.0  # see distml.admission: how long a head lets others pass
    node_loss_seconds: float = disruption.NODE_LOSS_SECONDS  # see distml.policies.disruption
    pod_rules: podpolicy.PodRules = field(default_factory=podpolicy.PodRules)


@dataclass
class World:
    """What the handler gathered for one reconcile."""

    job: Obj
    pods: list[Obj]  # the job's pods, every generation
    nodes: list[Obj]
    cluster_pods: list[Obj]  # every live GPU pod in the cluster, for the ledger
    now: dt.datetime
    gangs: list[admission.Gang] = field(default_factory=list)  # every other job's demand
    namespace: Obj | None = None  # the job's namespace (its Pod Security level)
    # What the API refused when this generation's objects were last created (quoted messages).
    refused: list[str] = field(default_factory=list)
    # NotReady nodes still held after a disruption ended (see distml.policies.disruption.hold).
    held_nodes: frozenset[str] = frozenset()
    # disruption.find(nodes), when the caller keeps it (it changes only when a node does).
    disruption: disruption.Disruption | None = None


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class PodDeletion:
    name: str
    force: bool = False  # grace period 0: the pod's node is gone or dead


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


@dataclass
class Plan:
    """The reconcile's result: objects to create and delete, the new status (as the API stores
    it), Events, when to look again, and what the metrics should count."""

    create: list[Obj] = field(default_factory=list)
    delete: list[PodDeletion] = field(default_factory=list)
    status: Obj = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    delete_job: bool = False
    signals: Signals = Signals()


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
    """Whether `status` says something the job's stored status does not. The stored one has no
    nulls (a merge patch removes them), so both are compared as the model reads them."""
    return status != dump_status(read_status(job))
