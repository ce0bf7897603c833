"""The ServingJob API (distml.io/v1alpha1), as pydantic models: a model served by N replicas of
the runtime's Open Inference Protocol server behind one ClusterIP Service, updated by rolling
revisions. The CRD is generated from these models like TrainingJob's (`make crds`)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import ConfigDict, Field
from pydantic.alias_generators import to_camel

from distml.api.models import GROUP, VERSION, Condition, PipelineStages, _Model

KIND = "ServingJob"
DEFAULT_WIDTHS = (128, 128)  # the built-in model's hidden layers (as train.ddp builds it)
MAX_STAGES = 16
PLURAL = "servingjobs"
DEFAULT_PORT = 8000
# The image a ServingJob without a template runs (the operator's --runtime-image overrides it).
RUNTIME_IMAGE = "distml-runtime:0.1.0"
# Where a model from a PVC or a host folder is mounted, read-only, in the server's container.
MODEL_MOUNT = "/mnt/models"
# What `model.storageUri` may say: the built-in demo model, a folder on a PersistentVolumeClaim
# (pvc://CLAIM/sub/folder), a folder on the node (host:///abs/folder), or a folder the template
# itself mounts into the container (file:///abs/folder).
STORAGE_URI_PATTERN = r"^(demo:|pvc://[a-z0-9]([-a-z0-9.]*[a-z0-9])?(/.*)?|host:///.*|file:///.*)$"


# An object field the API server fills in when it is left out, so that its own fields' defaults
# apply (and the CEL rules can read them).
_DEFAULTED: dict[str, Any] = {"default": {}}


class ServingPhase(StrEnum):
    PENDING = "Pending"  # no replica Ready yet
    PROGRESSING = "Progressing"  # a rollout or a scale is under way
    AVAILABLE = "Available"  # every replica of the current revision Ready
    DEGRADED = "Degraded"  # fewer Ready replicas than replicas - maxUnavailable


class Model(_Model):
    """The model every replica loads."""

    name: str = Field(
        "digits",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$",
        description="Its name in the protocol: /v2/models/NAME/infer.",
    )
    version: str = Field("1", max_length=32, description="Its version in the protocol.")
    storage_uri: str = Field(
        "demo:",
        pattern=STORAGE_URI_PATTERN,
        description="Where its checkpoint folder (as train.ddp writes it) is: demo: (the "
        "built-in model), pvc://CLAIM/folder, host:///folder on the node, or file:///folder "
        "the template mounts itself. The newest step-*.pt there is loaded.",
    )
    widths: list[int] = Field(
        default_factory=lambda: list(DEFAULT_WIDTHS),
        min_length=1,
        max_length=63,
        description="The hidden layers of the served MLP (64 features in, 10 classes out): "
        "len(widths) + 1 layers, the units a pipeline is split into. A checkpoint must have "
        "these shapes.",
        json_schema_extra={
            "default": list(DEFAULT_WIDTHS),
            "items": {"type": "integer", "minimum": 1, "maximum": 65536},
        },
    )


class Batching(_Model):
    """Dynamic batching: concurrent requests are stacked into one forward pass."""

    max_batch_size: int = Field(
        32, ge=1, le=4096, description="Rows per forward pass (and per request) at most."
    )
    max_queue_delay_ms: float = Field(
        5.0, ge=0, le=10000, description="How long a request waits for others to share a batch."
    )


class Rollout(_Model):
    """How a new revision replaces the old, counted in replicas."""

    max_surge: int = Field(
        1, ge=0, description="Replicas above spec.replicas while rolling (more GPUs, briefly)."
    )
    max_unavailable: int = Field(
        0, ge=0, description="Replicas below spec.replicas that may be not Ready while rolling."
    )
    drain_seconds: float = Field(
        5.0,
        ge=0,
        le=3600,
        description="How long a replica taken out of the Service keeps answering the requests "
        "already on their way to it before it is stopped.",
    )


class PipelineSplit(StrEnum):
    BALANCED = "Balanced"  # the slowest stage as fast as any split allows (FLOPs per layer)
    EVEN = "Even"  # the same number of layers per stage


class Pipeline(_Model):
    """A replica too large for one GPU: `stages` pods, one per stage, started as a gang and
    placed by the network topology. Stage 0 serves the protocol; the batches it forms stream
    through the stages over TCP (stage k listens on port + k), up to one per stage in flight,
    and the last stage's output returns to stage 0. The replica is Ready only when every stage
    is up and a warm-up inference went through all of them; a stage lost takes its replica out
    of the Service and the whole group is replaced. spec.gpusPerReplica is split evenly over
    the stages."""

    stages: int = Field(..., ge=2, le=MAX_STAGES, description="Stage pods per replica.")
    split: PipelineSplit = Field(
        PipelineSplit.BALANCED,
        description="Where the layers are cut when boundaries is empty: Balanced (the slowest "
        "stage, by each layer's multiply-adds, as fast as any split allows) or Even (the same "
        "number of layers per stage).",
    )
    boundaries: list[int] = Field(
        default_factory=list,
        max_length=MAX_STAGES - 1,
        description="Explicit cuts: the first layer of stages 1 .. stages-1, increasing.",
        json_schema_extra={
            "default": [],
            "items": {"type": "integer", "minimum": 1},
            "x-kubernetes-list-type": "set",
        },
    )
    microbatches: int = Field(
        1,
        ge=1,
        le=64,
        description="Pieces each batch is cut into. The batcher's batches already stream through "
        "the stages, up to one per stage at once, each stage working on a different one; more "
        "pieces shorten a large batch's trip when a layer's cost grows with its rows, and cost "
        "a pass per piece when it does not (make bench-serving measures both).",
    )
    placement: PipelineStages = Field(
        PipelineStages.PREFER_SAME_BLOCK,
        description="SameBlock: a replica's stages inside one network block or it waits; "
        "PreferSameBlock: the fewest block crossings the free GPUs allow; Any: no topology.",
    )
    gpu_memory: str | None = Field(
        None,
        pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|K|M|G|T)?$",
        description="The memory one stage may use on its GPU (e.g. 80Gi). Given, every stage "
        "must hold its fp32 weights and a batch of batching.maxBatchSize rows within it: "
        "Balanced finds the most even split that does, and a split that cannot is refused in "
        "status (InvalidPipeline) before any pod starts.",
    )
    port: int = Field(29600, ge=1, le=65000, description="Stage k takes activations on port + k.")
    peer_timeout_seconds: float = Field(
        5.0,
        ge=1,
        le=600,
        description="A stage that hears nothing from its neighbour this long (idle stages "
        "exchange a heartbeat every second) exits, and its replica is replaced.",
    )


class LoadMetric(StrEnum):
    IN_FLIGHT = "InFlightRequests"  # requests being answered now, per replica
    QUEUE_DEPTH = "QueueDepth"  # requests waiting for the batcher, per replica


class Autoscaling(_Model):
    """The operator sets the number of replicas from their own load: it reads every Ready
    replica's metrics (distml_serve_inflight_requests or distml_serve_queue_depth) every few
    seconds, asks for ceil(total / target) replicas within the bounds, and moves only when that
    has held for upscaleDelaySeconds (up) or downscaleDelaySeconds (down), and never for a change
    within 10 % of the target. Scale-down drains: a replica leaves the Service, answers what it
    has, then stops. With autoscaling, spec.replicas is only the starting count; without it, an
    HPA may drive spec.replicas through the scale subresource instead."""

    min_replicas: int = Field(1, ge=1, description="The fewest replicas, whatever the load.")
    max_replicas: int = Field(..., ge=1, description="The most replicas, whatever the load.")
    metric: LoadMetric = Field(
        LoadMetric.IN_FLIGHT,
        description="The load signal the servers export: InFlightRequests (being answered) or "
        "QueueDepth (waiting for a batch).",
    )
    target: float = Field(
        ..., gt=0, description="The signal's value one replica should carry (per replica)."
    )
    upscale_delay_seconds: float = Field(
        0,
        ge=0,
        le=3600,
        description="How long the load must ask for more replicas before they are added.",
    )
    downscale_delay_seconds: float = Field(
        60,
        ge=0,
        le=3600,
        description="How long the load must ask for fewer replicas before they are removed.",
    )


class ServingJobSpec(_Model):
    """What to serve: `replicas` copies of the model behind one Service."""

    replicas: int = Field(1, ge=0, description="Server replicas (kubectl scale sj/NAME).")
    gpus_per_replica: int = Field(0, ge=0, description="nvidia.com/gpu of each replica.")
    template: dict[str, Any] = Field(
        default_factory=dict,
        json_schema_extra=_DEFAULTED,
        description="The pod template of every replica; its first container runs the server. "
        "Empty: the runtime image running `python -m distml_runtime.serve`.",
    )
    model: Model = Field(default_factory=lambda: Model(), json_schema_extra=_DEFAULTED)
    batching: Batching = Field(default_factory=lambda: Batching(), json_schema_extra=_DEFAULTED)
    rollout: Rollout = Field(default_factory=lambda: Rollout(), json_schema_extra=_DEFAULTED)
    port: int = Field(DEFAULT_PORT, ge=1, le=65535, description="The server's HTTP port.")
    autoscaling: Autoscaling | None = None
    pipeline: Pipeline | None = None
    priority: int = Field(
        0, description="Queue order on the GPU ledger it shares with TrainingJobs."
    )


class ReplicaStatus(_Model):
    """One replica as the operator sees it."""

    pod: str = Field(..., description="Its pod.")
    node: str = Field("", description="The node it is bound to (empty: not yet).")
    revision: str = Field(..., description="The revision it runs.")
    state: str = Field(
        ...,
        description="Starting, Ready, NotReady (was Ready, probe failing), Draining (out of the "
        "Service, finishing its requests), Failed.",
    )
    stage_nodes: list[str] | None = Field(
        None,
        description="A pipeline replica: the node of each stage pod, in stage order.",
        json_schema_extra={"items": {"type": "string", "description": "A node name."}},
    )


class ServingAdmission(_Model):
    """The replicas a reconcile decided to create, written before they are: their GPUs stay
    reserved on the ledger (on these nodes) until the pods are seen."""

    batch: int = Field(0, description="Bumped for every set of creates; on their pods.")
    replicas: int = Field(0, description="Pods created in this batch.")
    gpus_per_replica: int = Field(0, description="GPUs of each.")
    nodes: list[str] = Field(
        default_factory=list,
        description="The node of each, in order (empty: any).",
        json_schema_extra={"items": {"type": "string", "description": "A node name."}},
    )
    pods: list[str] = Field(
        default_factory=list,
        description="Their names, in order.",
        json_schema_extra={"items": {"type": "string", "description": "A pod name."}},
    )


class AutoscalingStatus(_Model):
    """The autoscaler's latest reading and decision."""

    desired_replicas: int = Field(0, description="The replicas it asks for now.")
    metric: str = Field("", description="The signal it reads.")
    value: float | None = Field(None, description="The signal per Ready replica, last read.")
    target: float = Field(0, description="spec.autoscaling.target.")
    reporting: int = Field(0, description="Replicas whose metrics were read last time.")
    last_scale_time: str | None = Field(None, description="When it last changed the count.")
    message: str = Field("", description="Its latest decision, in a sentence.")


class StageSplit(_Model):
    """One stage of the split: its layers and its share of the multiply-adds."""

    stage: int = Field(..., description="Its index (0 serves the protocol).")
    first_layer: int = Field(..., description="Its first layer.")
    last_layer: int = Field(..., description="Its last layer (inclusive).")
    share: float = Field(..., description="Its fraction of the model's multiply-adds.")
    memory_bytes: int = Field(
        0, description="What it holds on its GPU: fp32 weights and a full batch in and out."
    )


class PipelineStatus(_Model):
    """The split every replica runs, decided before any pod starts."""

    stages: int = Field(0, description="Stage pods per replica.")
    layers: int = Field(0, description="Layers in the model.")
    split: str = Field("", description="Balanced, Even or Explicit.")
    text: str = Field("", description="The split in one line, e.g. 0-1 | 2-4.")
    slowest_share: float = Field(0, description="The largest stage's share of the work.")
    per_stage: list[StageSplit] = Field(default_factory=list, description="Every stage.")


class ServingJobStatus(_Model):
    """What the operator observed and decided, as of observedGeneration."""

    phase: ServingPhase | None = Field(
        None, description="Pending, Progressing, Available or Degraded."
    )
    reason: str = Field("", description="Why, in one word.")
    message: str = Field("", description="What is happening, in a sentence.")
    conditions: list[Condition] = Field(
        default_factory=list, description="Available, Progressing and Degraded."
    )
    replicas: int = Field(0, description="Replicas in the Service or starting (not draining).")
    ready_replicas: int = Field(0, description="Replicas Ready (model loaded, warm-up passed).")
    updated_replicas: int = Field(0, description="Replicas of the update revision.")
    available_replicas: int = Field(0, description="Ready replicas in the Service.")
    ready_text: str = Field("", description="ready/desired, for kubectl get.")
    current_revision: str = Field("", description="The revision every replica ran last.")
    update_revision: str = Field("", description="The revision the spec asks for now.")
    gpus: int = Field(0, description="GPUs its replicas hold now.")
    replaced: int = Field(0, description="Replicas replaced after they failed.")
    url: str = Field("", description="The in-cluster URL of its Service.")
    selector: str = Field("", description="Label selector of its replicas (scale).")
    observed_generation: int | None = Field(
        None, description="The metadata.generation this status was computed from."
    )
    rollout_start_time: str | None = Field(None, description="When the rollout began.")
    queued_time: str | None = Field(None, description="Since when a replica waits for GPUs.")
    admission: ServingAdmission | None = None
    autoscaling: AutoscalingStatus | None = None
    pipeline: PipelineStatus | None = None
    replica_status: list[ReplicaStatus] = Field(
        default_factory=list, description="Every replica, with its revision and state."
    )


SPEC_RULES: list[dict[str, str]] = [
    {
        "rule": "self.rollout.maxSurge + self.rollout.maxUnavailable >= 1",
        "message": "spec.rollout.maxSurge and spec.rollout.maxUnavailable cannot both be 0: "
        "no rollout could make progress",
        "fieldPath": ".rollout",
    },
    {
        "rule": "!has(self.autoscaling) || self.autoscaling.minReplicas <= "
        "self.autoscaling.maxReplicas",
        "message": "spec.autoscaling.minReplicas must be <= spec.autoscaling.maxReplicas",
        "fieldPath": ".autoscaling.minReplicas",
    },
    {
        "rule": "!has(self.pipeline) || self.pipeline.stages <= size(self.model.widths) + 1",
        "message": "spec.pipeline.stages must be at most the model's layers "
        "(size(spec.model.widths) + 1): every stage needs a layer",
        "fieldPath": ".pipeline.stages",
    },
    {
        "rule": "!has(self.pipeline) || size(self.pipeline.boundaries) == 0 || "
        "size(self.pipeline.boundaries) == self.pipeline.stages - 1",
        "message": "spec.pipeline.boundaries needs one cut per stage after the first "
        "(stages - 1 of them), or none",
        "fieldPath": ".pipeline.boundaries",
    },
    {
        "rule": "!has(self.pipeline) || (self.pipeline.boundaries.isSorted() && "
        "self.pipeline.boundaries.all(b, b <= size(self.model.widths)))",
        "message": "spec.pipeline.boundaries must increase, each a layer after the first and "
        "before the end (1 .. size(spec.model.widths))",
        "fieldPath": ".pipeline.boundaries",
    },
    {
        "rule": "!has(self.pipeline) || self.gpusPerReplica % self.pipeline.stages == 0",
        "message": "spec.gpusPerReplica must be a multiple of spec.pipeline.stages: each stage "
        "pod gets gpusPerReplica / stages",
        "fieldPath": ".gpusPerReplica",
    },
    {
        "rule": "!has(self.template.spec) || size(self.template.spec.containers) >= 1",
        "message": "spec.template.spec.containers needs at least one container (the server)",
        "fieldPath": ".template.spec.containers",
    },
]
NAME_RULE = {
    "rule": "size(self.metadata.name) <= 40",
    "message": "metadata.name must be at most 40 characters (pod names add a revision, an index "
    "and a stage)",
}


class ServingJob(_Model):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    api_version: str = f"{GROUP}/{VERSION}"
    kind: str = KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: ServingJobSpec = Field(default_factory=lambda: ServingJobSpec())
    status: ServingJobStatus = Field(default_factory=lambda: ServingJobStatus())


def serving_job_manifest(name: str, replicas: int, **spec: Any) -> dict[str, Any]:
    """A ServingJob as a plain manifest, for programs that submit them (benchmarks, tests)."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name},
        "spec": {"replicas": replicas, **spec},
    }
