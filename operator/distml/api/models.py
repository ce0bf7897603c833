"""The TrainingJob API (distml.io/v1alpha1), as pydantic models: the one source of truth.

The CRD under crds/ is generated from these models (`make crds`); the operator parses objects
with them. Field names are the API's camelCase; Python attributes are snake_case.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "distml.io"
VERSION = "v1alpha1"
KIND = "TrainingJob"
PLURAL = "trainingjobs"
DEFAULT_RDZV_PORT = 29400
DEFAULT_MASTER_PORT = 29500


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", use_enum_values=True
    )


class RestartPolicy(StrEnum):
    NEVER = "Never"
    ON_FAILURE = "OnFailure"
    EXIT_CODE = "ExitCode"


class CleanPodPolicy(StrEnum):
    ALL = "All"
    RUNNING = "Running"
    NONE = "None"


class DNSNames(StrEnum):
    RANK0 = "Rank0"
    ALL_WORKERS = "AllWorkers"


class Phase(StrEnum):
    QUEUED = "Queued"
    CREATING = "Creating"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


FINISHED = (Phase.SUCCEEDED, Phase.FAILED)


class RunPolicy(_Model):
    """How long and how often the job may run, and what happens to its pods and itself after."""

    backoff_limit: int = Field(3, ge=0, description="Group restarts allowed before the job fails.")
    active_deadline_seconds: int | None = Field(
        None, gt=0, description="Fail the job once it has run this long (from its start)."
    )
    ttl_seconds_after_finished: int | None = Field(
        None, ge=0, description="Delete the finished job this long after it finished."
    )
    clean_pod_policy: CleanPodPolicy = Field(
        CleanPodPolicy.RUNNING,
        description="Pods deleted when the job finishes: All, Running (still running), None.",
    )
    suspend: bool = Field(False, description="Delete the pods and hold the job until unset.")


class ExitCodes(_Model):
    """For restartPolicy ExitCode: which container exit codes are worth a restart."""

    retryable: list[int] = Field(
        default_factory=lambda: [75],
        json_schema_extra={"items": {"type": "integer", "description": "An exit code, 1-127."}},
        description="Codes restarted besides signals (>= 128); 75 is the launcher's rendezvous "
        "failure. Any other code 1-127 is an application error and fails the job.",
    )


class Gang(_Model):
    """All-or-nothing start: the whole group is admitted and Running together, or not at all."""

    timeout_seconds: int = Field(
        300, gt=0, description="Release every pod and retry if not all are Running by then."
    )
    scheduler_name: str | None = Field(
        None, description="Pass pods to another scheduler (e.g. volcano) instead."
    )
    pod_group_annotations: dict[str, str] = Field(
        default_factory=dict, description="Annotations put on every pod, e.g. a pod group name."
    )


class Elastic(_Model):
    """Elastic training: the job runs with any number of pods between minReplicas and
    maxReplicas, aiming for spec.replicas. A pod lost (its node died, it was evicted, it was
    killed) does not restart the group: the others meet again without it in one rendezvous
    round and resume from the newest checkpoint, and the operator puts a replacement wherever
    the GPU ledger has room, growing the job back. kubectl scale (or an HPA) moves spec.replicas
    within the bounds. Resizes are not failures: they count in status.resizes, never against
    runPolicy.backoffLimit or maxRestarts."""

    min_replicas: int = Field(..., ge=1, description="The fewest pods the job runs with.")
    max_replicas: int = Field(..., ge=1, description="The most pods the job grows to.")
    max_restarts: int = Field(
        3,
        ge=0,
        description="Failures of a pod's own workers that torchrun restarts in place "
        "(PET_MAX_RESTARTS); a lost or departing peer is not one.",
    )


class Parallelism(_Model):
    """Model-parallel degrees; the world size must be divisible by pipeline x tensor."""

    pipeline: int = Field(1, ge=1, description="Pipeline stages the model is split into.")
    tensor: int = Field(1, ge=1, description="Ranks each layer is split across (tensor parallel).")


class PipelineStages(StrEnum):
    SAME_BLOCK = "SameBlock"
    PREFER_SAME_BLOCK = "PreferSameBlock"
    ANY = "Any"


class Placement(_Model):
    """How strictly the operator places a pipeline- or tensor-parallel job by network topology
    (the nodes' block label, topology.distml.io/block unless the chart says otherwise). Tensor
    groups always stay on one node. Only jobs with spec.parallelism are placed by topology."""

    pipeline_stages: PipelineStages = Field(
        PipelineStages.PREFER_SAME_BLOCK,
        description="SameBlock: every pair of consecutive pipeline stages inside one block, or "
        "the job waits Queued (WaitingForBlock) saying what it needs. PreferSameBlock: the "
        "fewest stage boundaries across blocks that the free GPUs allow. Any: no topology, "
        "each pod where the GPUs fit best.",
    )


class Preflight(_Model):
    """Before training, the job's pods run the all-reduce benchmark together (one process per
    pod, as an init container); the busbw lands in status and metrics, and a job below
    minBusBwGbps fails at once, naming its slowest link."""

    all_reduce_bytes: int = Field(
        32 * 2**20, ge=4, le=2**34, description="Message size of the all-reduce, in bytes."
    )
    min_bus_bw_gbps: float | None = Field(
        None,
        gt=0,
        description="Fail the job when busbw (gigabits per second, i.e. nccl-tests' GB/s x 8) "
        "is below this. Unset: measure and report only.",
    )
    timeout_seconds: int = Field(
        300, ge=10, description="How long a pod waits for the others to join the preflight."
    )


class TrainingJobSpec(_Model):
    """What to run: a group of identical pods started together as one torchrun job."""

    replicas: int = Field(..., ge=1, description="Pods (torchrun nodes).")
    gpus_per_replica: int = Field(0, ge=0, description="nvidia.com/gpu requested by each pod.")
    nproc_per_replica: int | None = Field(
        None, ge=1, description="Processes per pod; defaults to gpusPerReplica, or 1 without GPUs."
    )
    template: dict[str, Any] = Field(..., description="The pod template of every worker.")
    run_policy: RunPolicy = Field(default_factory=lambda: RunPolicy())
    restart_policy: RestartPolicy = Field(
        RestartPolicy.EXIT_CODE,
        description="Never: any failure fails the job. OnFailure: any failure restarts the group. "
        "ExitCode: signals and exitCodes.retryable restart, other codes fail the job.",
    )
    exit_codes: ExitCodes = Field(default_factory=lambda: ExitCodes())
    gang: Gang = Field(default_factory=lambda: Gang())
    elastic: Elastic | None = None
    parallelism: Parallelism | None = None
    placement: Placement = Field(default_factory=lambda: Placement())
    preflight: Preflight | None = None
    priority: int = Field(
        0,
        description="Queue order: a waiting gang with a higher priority is admitted before one "
        "with a lower, and gangs of one priority go in creation order. A gang that restarts "
        "keeps its place at the head.",
    )
    rendezvous_port: int = Field(
        DEFAULT_RDZV_PORT, ge=1, le=65535, description="Port of torchrun's c10d rendezvous."
    )
    peer_timeout_seconds: int = Field(
        60,
        ge=1,
        le=86400,
        description="How long a rank waits in a collective for a silent peer before it takes "
        "the peer for lost and exits to meet the group again (the process group's timeout; "
        "torch's own defaults are 30 minutes for gloo, 10 for NCCL). Longer than the slowest "
        "step or checkpoint any rank makes its peers wait for.",
    )
    dns_names: DNSNames = Field(
        DNSNames.RANK0,
        description="Which workers the job's headless Service names "
        "(<job>-<rank>.<job>.<namespace>.svc). Rank0: rank 0 only, the rendezvous and "
        "MASTER_ADDR address, all that torchrun and torch.distributed need; the Service's "
        "endpoints then change with rank 0 alone, not with every pod of a big gang. AllWorkers: "
        "every worker, for launchers that reach peers by name (MPI hostfiles, pdsh). Fixed once "
        "the job exists.",
    )

    @property
    def nproc(self) -> int:
        if self.nproc_per_replica:
            return self.nproc_per_replica
        return self.gpus_per_replica or 1


class Condition(_Model):
    """A Kubernetes-style condition: one per phase the job has been in."""

    type: str = Field(..., description="The phase it is about (Queued, Running, ...).")
    status: str = Field(..., description="True while the job is in that phase, else False.")
    reason: str = Field("", description="Why, in one word.")
    message: str = Field("", description="Why, in a sentence.")
    last_transition_time: str | None = Field(None, description="When status last changed.")


class RankPlacement(_Model):
    """Where one pod (torchrun node rank) runs and, for a parallel job, what it holds."""

    rank: int = Field(..., description="The torchrun node rank.")
    pod: str = Field(..., description="Its pod.")
    node: str = Field("", description="The node the pod is bound to (empty: not yet).")
    block: str = Field("", description="The node's network block.")
    zone: str = Field("", description="The node's zone.")
    global_ranks: str = Field("", description="The global ranks of its processes, first-last.")
    stages: str = Field("", description="Parallel jobs: the pipeline stages it holds.")
    data_parallel: str = Field("", description="Parallel jobs: its data-parallel indices.")
    tensor_groups: str = Field("", description="Parallel jobs: its tensor-parallel groups.")


class PlacementStatus(_Model):
    """How a parallel job's current generation is laid out over the network's blocks."""

    pipeline_stages: str = Field("", description="spec.placement.pipelineStages.")
    pipeline: int = Field(1, description="Pipeline stages.")
    tensor: int = Field(1, description="Tensor-parallel width.")
    data_parallel: int = Field(1, description="Data-parallel replicas of every stage.")
    blocks: int = Field(0, description="Blocks its pods are in.")
    cross_block_boundaries: int = Field(
        0, description="Stage boundaries whose activations cross blocks."
    )
    crossing: list[str] = Field(
        default_factory=list,
        description="Those boundaries, as stage -> stage.",
        json_schema_extra={"items": {"type": "string", "description": "e.g. 1->2."}},
    )
    message: str = Field("", description="The layout in a sentence.")


class Link(_Model):
    """One link of the ring of pods, as the preflight measured it."""

    a: str = Field(..., description="One end (a node).")
    b: str = Field(..., description="The other end.")
    gbps: float = Field(..., description="Point-to-point bandwidth, Gbit/s.")


class PreflightStatus(_Model):
    """What the preflight measured for the current restart generation."""

    passed: bool = Field(True, description="Whether busbw met minBusBwGbps (or none was set).")
    bus_bw_gbps: float = Field(0.0, description="All-reduce bus bandwidth, Gbit/s.")
    alg_bw_gbps: float = Field(0.0, description="All-reduce algorithm bandwidth, Gbit/s.")
    bytes: int = Field(0, description="Message size of the all-reduce.")
    world_size: int = Field(0, description="Pods that took part.")
    slowest_link: str = Field("", description="The slowest link of the ring, `a <-> b`.")
    slowest_link_gbps: float | None = Field(None, description="Its bandwidth, Gbit/s.")
    links: list[Link] = Field(default_factory=list, description="Every link measured.")
    message: str = Field("", description="The verdict in a sentence.")
    measured_at: str | None = Field(None, description="When it was measured.")
    restart_generation: int = Field(0, description="The restart generation it measured.")


class Admission(_Model):
    """The admission of one restart generation, written before any of its pods is created:
    the GPUs it reserved in the ledger and the node each rank is pinned to."""

    restart_generation: int = Field(0, description="The generation admitted.")
    replicas: int = Field(0, description="Pods admitted (spec.replicas at admission).")
    gpus_per_replica: int = Field(0, description="GPUs of each pod.")
    nodes: list[str] = Field(
        default_factory=list,
        description="The node of each rank, in rank order (empty: any).",
        json_schema_extra={"items": {"type": "string", "description": "A node name."}},
    )
    time: str | None = Field(None, description="When the gang was admitted.")


class SuspectNode(_Model):
    """A node a restart left because its pod went silent while its peers reported it lost."""

    node: str = Field(..., description="The node.")
    since: str = Field(..., description="When the operator took it for suspect.")
    reason: str = Field("", description="Why, in a sentence.")


class Resize(_Model):
    """One change of an elastic job's size."""

    time: str = Field(..., description="When the operator saw it.")
    from_replicas: int = Field(..., description="Workers before.")
    to_replicas: int = Field(..., description="Workers after.")
    reason: str = Field(
        ..., description="PodLost, NodeLost, LeftGroup, Replaced, ScaledUp, ScaledDown."
    )
    message: str = Field("", description="What happened, in a sentence.")


class TrainingJobStatus(_Model):
    """What the operator observed and decided, as of observedGeneration."""

    phase: Phase | None = Field(
        None, description="Queued, Creating, Running, Restarting, Succeeded, Failed, Suspended."
    )
    reason: str = Field("", description="The reason of the latest phase change, in one word.")
    message: str = Field("", description="What is happening, in a sentence.")
    conditions: list[Condition] = Field(
        default_factory=list, description="One per phase the job has been in."
    )
    replicas: int = Field(0, description="Pods of the current restart generation.")
    active: int = Field(0, description="Live pods of any generation.")
    ready: int = Field(0, description="Pods Running and Ready.")
    succeeded: int = Field(0, description="Pods of this generation that exited 0.")
    failed: int = Field(0, description="Pods of this generation that failed.")
    ready_text: str = Field("", description="ready/desired, for kubectl get.")
    gpus: int = Field(0, description="GPUs the job holds now.")
    restarts: int = Field(0, description="Group restarts after failures (against backoffLimit).")
    resizes: int = Field(
        0,
        description="Resizes: new generations started because spec.replicas changed, and an "
        "elastic job's shrinks and grows (never counted against backoffLimit).",
    )
    workers: int | None = Field(
        None,
        description="Elastic jobs: the workers in the group as last counted: as the ranks' "
        "latest rendezvous says where their launchers answer, else the running pods.",
    )
    worker_restarts: int = Field(
        0,
        description="Elastic jobs: worker restarts torchrun made inside the pods (spent from "
        "spec.elastic.maxRestarts, per pod), as their launchers report them now.",
    )
    elastic_range: str = Field("", description="Elastic jobs: min-max, for kubectl get.")
    suspect_nodes: list[SuspectNode] = Field(
        default_factory=list,
        description="Nodes the job's next generations avoid for a while: their pods went "
        "silent while their peers reported them lost (a node cut off, a hung worker).",
    )
    resize_history: list[Resize] = Field(
        default_factory=list, description="Elastic jobs: the latest resizes, oldest first."
    )
    restart_generation: int = Field(
        0, description="Bumped by every restart, resize or release; in pod names and labels."
    )
    gang_attempts: int = Field(0, description="Times the gang was admitted (for its backoff).")
    start_time: str | None = Field(None, description="When the job was first admitted.")
    completion_time: str | None = Field(None, description="When it succeeded or failed.")
    admitted_time: str | None = Field(None, description="When this generation was admitted.")
    queued_time: str | None = Field(None, description="Since when it waits for admission.")
    next_attempt_time: str | None = Field(
        None, description="When a backed-off gang is admitted again, at the earliest."
    )
    queue_position: int | None = Field(
        None, description="Place among the gangs waiting for GPUs (1 = next), while Queued."
    )
    admission: Admission | None = None
    observed_generation: int | None = Field(
        None, description="The metadata.generation this status was computed from."
    )
    selector: str = Field("", description="Label selector of the job's pods (scale).")
    ranks: list[RankPlacement] = Field(
        default_factory=list,
        description="Rank -> pod -> node -> block, for the current generation; for a parallel "
        "job also the stages, data-parallel indices and tensor groups each pod holds.",
    )
    placement: PlacementStatus | None = None
    preflight: PreflightStatus | None = None


# The CEL rules the API server enforces across fields (each names the field it is about).
SPEC_RULES: list[dict[str, str]] = [
    {
        "rule": "!has(self.elastic) || self.elastic.minReplicas <= self.elastic.maxReplicas",
        "message": "spec.elastic.minReplicas must be <= spec.elastic.maxReplicas",
        "fieldPath": ".elastic.minReplicas",
    },
    {
        "rule": "!has(self.elastic) || (self.elastic.minReplicas <= self.replicas && "
        "self.replicas <= self.elastic.maxReplicas)",
        "message": "spec.replicas must be between spec.elastic.minReplicas and maxReplicas",
        "fieldPath": ".replicas",
    },
    {
        "rule": "!has(self.parallelism) || (self.replicas * (has(self.nprocPerReplica) ? "
        "self.nprocPerReplica : (self.gpusPerReplica > 0 ? self.gpusPerReplica : 1))) % "
        "(self.parallelism.pipeline * self.parallelism.tensor) == 0",
        "message": "the world size (replicas x nprocPerReplica) must be divisible by "
        "spec.parallelism.pipeline x spec.parallelism.tensor",
        "fieldPath": ".parallelism",
    },
    {
        "rule": "!has(self.elastic) || !has(self.parallelism) || (has(self.nprocPerReplica) ? "
        "self.nprocPerReplica : (self.gpusPerReplica > 0 ? self.gpusPerReplica : 1)) % "
        "(self.parallelism.pipeline * self.parallelism.tensor) == 0",
        "message": "an elastic job with spec.parallelism needs nprocPerReplica (default "
        "gpusPerReplica) to be a multiple of pipeline x tensor: the group grows and shrinks a "
        "pod at a time, and every size must hold whole model replicas",
        "fieldPath": ".parallelism",
    },
    {
        "rule": "self.dnsNames == oldSelf.dnsNames",
        "message": "spec.dnsNames cannot change once the job exists",
        "fieldPath": ".dnsNames",
    },
    {
        "rule": "size(self.template.spec.containers) >= 1",
        "message": "spec.template.spec.containers needs at least one container",
        "fieldPath": ".template.spec.containers",
    },
]
NAME_RULE = {
    "rule": "size(self.metadata.name) <= 48",
    "message": "metadata.name must be at most 48 characters (pod hostnames add a suffix)",
}


class TrainingJob(_Model):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    api_version: str = f"{GROUP}/{VERSION}"
    kind: str = KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: TrainingJobSpec
    status: TrainingJobStatus = Field(default_factory=lambda: TrainingJobStatus())


def training_job_manifest(
    name: str, replicas: int, gpus_per_replica: int, pod_spec: dict[str, Any], **spec: Any
) -> dict[str, Any]:
    """A TrainingJob as a plain manifest, for programs that submit jobs (benchmarks, tests)."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "gpusPerReplica": gpus_per_replica,
            "template": {"spec": pod_spec},
            **spec,
        },
    }
