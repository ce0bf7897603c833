"""What every kind's planner reads and returns: the world a reconcile gathered and the plan it
decided (objects to create, patch and delete; the new status; Events). Pure data."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from distml import admission, placement, podpolicy
from distml.api.serving import RUNTIME_IMAGE
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
    runtime_image: str = RUNTIME_IMAGE  # what a ServingJob without a template runs
    topology: placement.Keys = field(default_factory=placement.Keys)  # node labels placement reads


@dataclass(frozen=True)
class LoadSample:
    """One reading of a ServingJob's replicas' load signal (the autoscaler's input)."""

    time: dt.datetime
    total: float  # the signal summed over the replicas read
    reporting: int  # replicas whose metrics were read


@dataclass(frozen=True)
class MemberReading:
    """What a training pod's launcher last said of its group (distml_launch_* on /metrics)."""

    time: dt.datetime  # the read pass it came from
    group_size: int  # pods in its latest rendezvous round
    worker_restarts: int  # worker restarts it spent from torchrun's max restarts


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
    # The names of the nodes that are not Ready, when the caller keeps them (from node events).
    not_ready: frozenset[str] | None = None
    # The nodes by name, when the caller keeps them so (the same nodes as `nodes`).
    node_map: dict[str, Obj] | None = None
    # An autoscaled ServingJob's recent load readings, oldest first (the operator keeps them).
    load: tuple[LoadSample, ...] = ()
    # An elastic TrainingJob's pods' latest readings by pod name, and when the last pass read
    # them (a pod not answering in that pass keeps its older reading).
    members: dict[str, MemberReading] = field(default_factory=dict)
    members_at: dt.datetime | None = None


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
class PodPatch:
    """A merge patch of one pod's metadata (a serving replica taken out of its Service)."""

    name: str
    labels: dict[str, str | None] = field(default_factory=dict)
    annotations: dict[str, str | None] = field(default_factory=dict)


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
    signals: Any = None  # what the kind's metrics count (TrainingJob: its Signals)
    patch: list[PodPatch] = field(default_factory=list)


def status_changed(model: type[BaseModel], job: Obj, status: Obj) -> bool:
    """Whether `status` (as a planner dumps it) says something the job's stored status does
    not. The stored one has no nulls (a merge patch removes them), so both are compared as the
    kind's status `model` reads them."""
    stored = model.model_validate(job.get("status") or {})
    return status != stored.model_dump(by_alias=True, mode="json")
