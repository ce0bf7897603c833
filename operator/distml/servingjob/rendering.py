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
    """What shapes the pods, hashed: the template, GPUs, model, batching and port."""
    shaped = spec.model_dump(
        by_alias=True,
        mode="json",
        include={"template", "gpus_per_replica", "model", "batching", "port"},
    )
    digest = hashlib.sha256(json.dumps(shaped, sort_keys=True).encode()).hexdigest()
    return digest[:10]


def pod_name(job: str, rev: str, index: int) -> str:
    return f"{job}-{rev}-{index}"


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
    }
    return [{"name": k, "value": v} for k, v in env.items()]


def template(spec: ServingJobSpec, image: str) -> Obj:
    """The pod template as the replicas get it (before the per-pod parts): the user's, or the
    runtime image running the server; the first container gets the server's contract."""
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
    _, volume = _model_source(spec)
    if volume is not None:
        pod_spec.setdefault("volumes", []).append(volume)
        server.setdefault("volumeMounts", []).append(
            {"name": MODEL_VOLUME, "mountPath": MODEL_MOUNT, "readOnly": True}
        )
    if spec.gpus_per_replica:
        resources = server.setdefault("resources", {})
        for kind in ("limits", "requests"):
            resources.setdefault(kind, {})[labels.GPU] = str(spec.gpus_per_replica)
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
) -> Obj:
    """One replica of revision `rev`, created in admission `batch` as its `slot`-th pod;
    `node`: where the admission placed it."""
    tpl = template(spec, image)
    tmeta = tpl.get("metadata") or {}
    pod_spec: Obj = tpl["spec"]
    folder, _ = _model_source(spec)
    env = [*server_env(meta, spec, folder), rendering.NODE_NAME_ENV]
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
        **service_selector(meta["name"]),
        labels.REVISION: rev,
        labels.RANK: str(slot),  # with GENERATION, how the ledger tells its reservation seen
        labels.GENERATION: str(batch),
        labels.REPLICA_TYPE: "server",
        labels.MANAGED_BY: labels.OPERATOR,
        labels.OWNER_UID: meta["uid"],
    }
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
