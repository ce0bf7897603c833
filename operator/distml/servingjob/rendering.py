"""Renders what a ServingJob owns: one pod per replica (the runtime's Open Inference Protocol
server, probed on the protocol's own health endpoints) and a ClusterIP Service whose endpoints
are the Ready replicas that are not draining.

Pure: a parsed job in, Kubernetes objects out. A pod is named and labelled by the revision it
runs: a hash of everything in the spec that shapes the pods, so a change to any of it is a new
revision and a rolling update, and a change to anything else (replicas, rollout) is not.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from distml import labels, rendering
from distml.api import serving
from distml.api.serving import MODEL_MOUNT, ServingJobSpec

Obj = dict[str, Any]
SERVER_CONTAINER = "server"
SERVER_COMMAND = ("python", "-m", "distml_runtime.serve")
MODEL_VOLUME = "model"
# The server's own drain after SIGTERM: the operator drains a replica (out of the Service for
# drainSeconds) before it deletes it; this covers pods deleted by someone else (kubectl, an
# eviction), whose endpoint removal takes a moment to reach every client.
SERVER_DRAIN_SECONDS = 1.0


def revision(spec: ServingJobSpec) -> str:
    """What shapes the pods, hashed: the template, GPUs, model, batching, port and pipeline (the
    last two fields of the model and the pipeline only when set, so that jobs from before them
    keep their revision)."""
    shaped = spec.model_dump(
        by_alias=True,
        mode="json",
        include={"template", "gpus_per_replica", "model", "batching", "port", "pipeline"},
    )
    if shaped["model"]["widths"] == list(serving.DEFAULT_WIDTHS):
        del shaped["model"]["widths"]
    if shaped["pipeline"] is None:
        del shaped["pipeline"]
    digest = hashlib.sha256(json.dumps(shaped, sort_keys=True).encode()).hexdigest()
    return digest[:10]


def pod_name(job: str, rev: str, index: int) -> str:
    """A replica's name: its pod's, or, split into a pipeline, the prefix of its stage pods'."""
    return f"{job}-{rev}-{index}"


def stage_pod_name(replica: str, stage: int) -> str:
    return f"{replica}-s{stage}"


def stage_service_name(job: str) -> str:
    """The headless Service that names a pipeline's stage pods, for their rendezvous."""
    return f"{job}-stages"


def stages(spec: ServingJobSpec) -> int:
    """Pods per replica."""
    return spec.pipeline.stages if spec.pipeline else 1


def gpus_per_pod(spec: ServingJobSpec) -> int:
    return spec.gpus_per_replica // stages(spec)


def url(meta: Obj, spec: ServingJobSpec) -> str:
    return f"http://{meta['name']}.{meta['namespace']}.svc:{spec.port}"


def selector_labels(job: str) -> dict[str, str]:
    """Every replica of the job, serving or draining (the scale subresource's selector)."""
    return {labels.JOB_NAME: job, labels.OWNER_KIND: serving.KIND}


def service_selector(job: str) -> dict[str, str]:
    """The replicas in the Service: a draining one has its SERVING label set to false first."""
    return {**selector_labels(job), labels.SERVING: "true"}


def _model_source(spec: ServingJobSpec) -> tuple[str, Obj | None]:
    """(the checkpoint folder in the container, the volume to mount there, if any)."""
    uri = spec.model.storage_uri
    if uri.startswith("demo:"):
        return "", None
    if uri.startswith("file://"):
        return uri[len("file://") :], None
    if uri.startswith("host://"):
        return MODEL_MOUNT, {"name": MODEL_VOLUME, "hostPath": {"path": uri[len("host://") :]}}
    claim, _, sub = uri[len("pvc://") :].partition("/")
    folder = f"{MODEL_MOUNT}/{sub}".rstrip("/") if sub else MODEL_MOUNT
    return folder, {
        "name": MODEL_VOLUME,
        "persistentVolumeClaim": {"claimName": claim, "readOnly": True},
    }


def _probe(path: str, port: int, period: int, failures: int) -> Obj:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": max(1, period),
    }


def server_env(meta: Obj, spec: ServingJobSpec, checkpoint_dir: str) -> list[Obj]:
    env = {
        "DISTML_MODEL_NAME": spec.model.name,
        "DISTML_MODEL_VERSION": spec.model.version,
        "DISTML_CHECKPOINT_DIR": checkpoint_dir,
        "DISTML_MAX_BATCH_SIZE": str(spec.batching.max_batch_size),
        "DISTML_MAX_QUEUE_DELAY_MS": f"{spec.batching.max_queue_delay_ms:g}",
        "DISTML_SERVE_PORT": str(spec.port),
        "DISTML_DRAIN_SECONDS": f"{SERVER_DRAIN_SECONDS:g}",
        "DISTML_JOB_NAME": meta["name"],
        "DISTML_METRICS_PORT": str(labels.METRICS_PORT),
        "DISTML_MODEL_WIDTHS": ",".join(str(w) for w in spec.model.widths),
    }
    return [{"name": k, "value": v} for k, v in env.items()]


def template(spec: ServingJobSpec, image: str, stage: int = 0) -> Obj:
    """The pod template as the replicas get it (before the per-pod parts): the user's, or the
    runtime image running the server; the first container gets the server's contract. A stage
    after the first serves no HTTP: it has no probes (its stage 0 is Ready only once a warm-up
    went through it, and exits when it is lost)."""
    tpl = copy.deepcopy(spec.template) if spec.template.get("spec") else {"spec": {}}
    pod_spec = tpl.setdefault("spec", {})
    containers = pod_spec.setdefault("containers", [])
    if not containers:
        containers.append({"name": SERVER_CONTAINER, "image": image})
    server = containers[0]
    if not server.get("command") and not server.get("args"):
        # The command, not args: the runtime image's entrypoint is the training launcher.
        server["command"] = list(SERVER_COMMAND)
    ports = server.setdefault("ports", [])
    if not any(p.get("containerPort") == spec.port for p in ports):
        ports.append({"name": "http", "containerPort": spec.port, "protocol": "TCP"})
    # Liveness waits for the server to listen (loading torch takes a while): a startup probe
    # of up to 10 minutes. Readiness is the protocol's own: the model loaded and warmed up.
    server.setdefault("startupProbe", _probe("/v2/health/live", spec.port, 1, 600))
    server.setdefault("readinessProbe", _probe("/v2/health/ready", spec.port, 1, 2))
    server.setdefault("livenessProbe", _probe("/v2/health/live", spec.port, 5, 3))
    if stage:
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            server.pop(probe, None)
    _, volume = _model_source(spec)
    if volume is not None:
        pod_spec.setdefault("volumes", []).append(volume)
        server.setdefault("volumeMounts", []).append(
            {"name": MODEL_VOLUME, "mountPath": MODEL_MOUNT, "readOnly": True}
        )
    if gpus := gpus_per_pod(spec):
        resources = server.setdefault("resources", {})
        for kind in ("limits", "requests"):
            resources.setdefault(kind, {})[labels.GPU] = str(gpus)
        tolerations = pod_spec.setdefault("tolerations", [])
        if rendering.GPU_TOLERATION not in tolerations:
            tolerations.append(dict(rendering.GPU_TOLERATION))
    return tpl


def render_pod(
    meta: Obj,
    spec: ServingJobSpec,
    rev: str,
    name: str,
    batch: int,
    slot: int,
    node: str = "",
    image: str = serving.RUNTIME_IMAGE,
    stage: int | None = None,
    ranges: str = "",
) -> Obj:
    """One replica of revision `rev`, created in admission `batch` as its `slot`-th pod;
    `node`: where the admission placed it. Split into a pipeline, `name` is the replica's and
    the pod is its `stage`, holding the layers `ranges` gives it ("0:2,2:5": every stage's)."""
    replica = name
    if stage is not None:
        name = stage_pod_name(replica, stage)
    tpl = template(spec, image, stage or 0)
    tmeta = tpl.get("metadata") or {}
    pod_spec: Obj = tpl["spec"]
    folder, _ = _model_source(spec)
    env = [*server_env(meta, spec, folder), rendering.NODE_NAME_ENV]
    if spec.pipeline and stage is not None:
        env += _stage_env(meta, spec.pipeline, replica, stage, ranges)
    for container in pod_spec["containers"]:
        container["env"] = [*env, *(container.get("env") or [])]
    # A replica that dies is replaced by the operator (a new pod, another node if need be),
    # never restarted in place by kubelet behind the Service's back.
    pod_spec["restartPolicy"] = "Never"
    pod_spec.setdefault("enableServiceLinks", False)
    pod_spec.setdefault("automountServiceAccountToken", False)
    if node:
        rendering.pin_to_node(pod_spec, node)
    pod_labels = {
        **(tmeta.get("labels") or {}),
        # Stage 0 serves, and is the replica in the Service; the later stages only compute.
        **(service_selector(meta["name"]) if not stage else selector_labels(meta["name"])),
        labels.REVISION: rev,
        labels.RANK: str(slot),  # with GENERATION, how the ledger tells its reservation seen
        labels.GENERATION: str(batch),
        labels.REPLICA_TYPE: "server" if not stage else "stage",
        labels.MANAGED_BY: labels.OPERATOR,
        labels.OWNER_UID: meta["uid"],
    }
    if stage is not None:
        pod_labels[labels.REPLICA] = replica
        pod_labels[labels.STAGE] = str(stage)
        pod_labels[labels.STAGES] = str(stages(spec))
        # Named through the stages' headless Service: stage 0's name is the rendezvous address.
        pod_spec["hostname"] = name
        pod_spec["subdomain"] = stage_service_name(meta["name"])
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": pod_labels,
            "annotations": dict(tmeta.get("annotations") or {}),
            "ownerReferences": [rendering.owner_reference(meta, serving.KIND)],
        },
        "spec": pod_spec,
    }


def _stage_env(meta: Obj, pipeline: serving.Pipeline, replica: str, stage: int,
               ranges: str) -> list[Obj]:  # fmt: skip
    """Stage k listens on port + k for what stage k - 1 sends it (stage 0: for the last stage's
    outputs) and sends to the next stage by its name through the stages' Service."""
    k = pipeline.stages
    after = (stage + 1) % k
    names = f"{stage_service_name(meta['name'])}.{meta['namespace']}.svc.cluster.local"
    env = {
        "DISTML_STAGE": str(stage),
        "DISTML_STAGES": str(k),
        "DISTML_STAGE_RANGES": ranges,
        "DISTML_STAGE_LISTEN": str(pipeline.port + stage),
        "DISTML_STAGE_NEXT": f"{stage_pod_name(replica, after)}.{names}:{pipeline.port + after}",
        "DISTML_MICROBATCHES": str(pipeline.microbatches),
        "DISTML_PEER_TIMEOUT_SECONDS": f"{pipeline.peer_timeout_seconds:g}",
    }
    return [{"name": k, "value": v} for k, v in env.items()]


def render_stage_service(meta: Obj, spec: ServingJobSpec) -> Obj:
    """Names every stage pod (hostname.JOB-stages...), ready or not: stage 0's name is where
    the later stages of its replica meet it."""
    assert spec.pipeline is not None
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": rendering.owned_metadata(meta, stage_service_name(meta["name"]), serving.KIND),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": selector_labels(meta["name"]),
            "ports": [
                {"name": f"stage-{k}", "port": spec.pipeline.port + k, "protocol": "TCP"}
                for k in range(spec.pipeline.stages)
            ],
        },
    }


def render_service(meta: Obj, spec: ServingJobSpec) -> Obj:
    job = meta["name"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": rendering.owned_metadata(meta, job, serving.KIND),
        "spec": {
            "type": "ClusterIP",
            "selector": service_selector(job),
            "ports": [
                {"name": "http", "port": spec.port, "targetPort": spec.port, "protocol": "TCP"},
                {"name": "metrics", "port": labels.METRICS_PORT, "protocol": "TCP"},
            ],
        },
    }
