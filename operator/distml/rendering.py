"""Renders what a TrainingJob owns — one pod per replica and a headless Service — as plain dicts.

Pure: a parsed job in, Kubernetes objects out. Every pod carries torchrun's contract (PET_*) and,
for programs that do not use torchrun, MASTER_ADDR/MASTER_PORT/WORLD_SIZE/RANK.
"""

from __future__ import annotations

import copy
from typing import Any

from distml import labels
from distml.api.models import (
    DEFAULT_MASTER_PORT,
    GROUP,
    KIND,
    VERSION,
    DNSNames,
    TrainingJobSpec,
)
from distml.nodefit import NodeFilter

PREFLIGHT_CONTAINER = "preflight"
TERMINATION_LOG = "/dev/termination-log"
# torchrun's c10d rendezvous, tuned for recovery in seconds: a round waits 2 s for more nodes
# once it has its minimum, and a node whose agent stops heartbeating (1 s apart) is dropped
# after 3 missed beats (torch's defaults: 30 s and 15 s).
RDZV_CONF = "last_call_timeout=2,keep_alive_interval=1,keep_alive_max_attempt=3"
NODE_NAME_ENV = {
    "name": "DISTML_NODE_NAME",
    "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}},
}

# Kubernetes' usual taint on GPU nodes; GPU workers tolerate it.
GPU_TOLERATION = {"key": labels.GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}


def node_filter(template: dict[str, Any], gpus: int) -> NodeFilter:
    """Where a job's pods may go: the template's selector, affinity and tolerations, and the
    GPU taint tolerated when they ask for GPUs (as both kinds' pods do)."""
    nodes = NodeFilter.of(template.get("spec") or {})
    return nodes.tolerating(GPU_TOLERATION) if gpus else nodes


def pod_name(job: str, rank: int, generation: int) -> str:
    return f"{job}-worker-{rank}-{generation}"


def pod_hostname(job: str, rank: int) -> str:
    return f"{job}-{rank}"


def rank0_address(job: str, namespace: str) -> str:
    """Rank 0's stable DNS name through the headless Service, the same in every generation."""
    return f"{pod_hostname(job, 0)}.{job}.{namespace}.svc.cluster.local"


def owner_reference(meta: dict[str, Any], kind: str = KIND) -> dict[str, Any]:
    """The controller reference a job of `kind` puts on what it creates."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": kind,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def selector_labels(job: str) -> dict[str, str]:
    return {labels.JOB_NAME: job}


def worker_env(
    meta: dict[str, Any], spec: TrainingJobSpec, rank: int, generation: int
) -> list[dict[str, str]]:
    job, ns = meta["name"], meta["namespace"]
    nproc = spec.nproc
    nnodes = (
        f"{spec.elastic.min_replicas}:{spec.elastic.max_replicas}"
        if spec.elastic
        else str(spec.replicas)
    )
    master = rank0_address(job, ns)
    env = {
        "PET_NNODES": nnodes,
        "PET_NPROC_PER_NODE": str(nproc),
        "PET_NODE_RANK": str(rank),
        "PET_RDZV_BACKEND": "c10d",
        "PET_RDZV_ENDPOINT": f"{master}:{spec.rendezvous_port}",
        # A new id per restart generation, so torchrun's rendezvous starts clean.
        "PET_RDZV_ID": f"{meta['uid']}-{generation}",
        "PET_MAX_RESTARTS": str(spec.elastic.max_restarts if spec.elastic else 0),
        # Slot 0's pod hosts the rendezvous store, said outright: a pod that guesses from its
        # address guesses wrong where pods share one (host networking, process nodes), and in
        # an elastic group the others wait for the store's new host when slot 0 is replaced.
        "PET_RDZV_CONF": f"{RDZV_CONF},is_host={'true' if rank == 0 else 'false'}",
        "MASTER_ADDR": master,
        "MASTER_PORT": str(DEFAULT_MASTER_PORT),
        "WORLD_SIZE": str(spec.replicas * nproc),
        "RANK": str(rank * nproc),
        "DISTML_JOB_NAME": job,
        "DISTML_RESTART_GENERATION": str(generation),
        "DISTML_METRICS_PORT": str(labels.METRICS_PORT),
        "DISTML_PEER_TIMEOUT_SECONDS": str(spec.peer_timeout_seconds),
        "DISTML_TERMINATION_LOG": TERMINATION_LOG,
    }
    if spec.parallelism:
        env["DISTML_PIPELINE_PARALLEL"] = str(spec.parallelism.pipeline)
        env["DISTML_TENSOR_PARALLEL"] = str(spec.parallelism.tensor)
    return [{"name": k, "value": v} for k, v in env.items()]


def preflight_container(
    spec: TrainingJobSpec, worker: dict[str, Any], env: list[dict[str, Any]], rank: int
) -> dict[str, Any]:
    """An init container that runs the all-reduce preflight with one process per pod: the same
    image and resources as the worker, rank = the pod's rank, world = the pods."""
    assert spec.preflight is not None
    pf = spec.preflight
    own = {"RANK": str(rank), "WORLD_SIZE": str(spec.replicas), "LOCAL_RANK": "0"}
    args = ["--bytes", str(pf.all_reduce_bytes), "--timeout", str(pf.timeout_seconds)]
    if pf.min_bus_bw_gbps is not None:
        args += ["--min-busbw-gbps", f"{pf.min_bus_bw_gbps:g}"]
    container = {
        "name": PREFLIGHT_CONTAINER,
        "image": worker.get("image", ""),
        "command": ["python", "-m", "distml_runtime.preflight"],
        "args": [*args, "--termination-log", TERMINATION_LOG],
        "env": [e for e in env if e["name"] not in own]
        + [{"name": k, "value": v} for k, v in own.items()],
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    for key in ("imagePullPolicy", "resources", "securityContext"):
        if key in worker:
            container[key] = copy.deepcopy(worker[key])
    return container


def owner_labels(meta: dict[str, Any], kind: str = KIND) -> dict[str, str]:
    return {labels.OWNER_KIND: kind, labels.OWNER_UID: meta["uid"]}


def owned_metadata(meta: dict[str, Any], name: str, kind: str = KIND) -> dict[str, Any]:
    """Metadata of an object a job of `kind` owns: its name, the job's namespace, the labels
    that say whose it is (the orphan sweep reads them) and the controller reference."""
    return {
        "name": name,
        "namespace": meta["namespace"],
        "labels": {
            labels.JOB_NAME: meta["name"],
            labels.MANAGED_BY: labels.OPERATOR,
            **owner_labels(meta, kind),
        },
        "ownerReferences": [owner_reference(meta, kind)],
    }


def pin_to_node(pod_spec: dict[str, Any], node: str) -> None:
    """Adds a required node affinity for `node` (by metadata.name) to every node selector term
    the template has: the scheduler still binds and checks resources, but only there, where the
    admission reserved the pod's GPUs."""
    pin = {"key": "metadata.name", "operator": "In", "values": [node]}
    node_affinity = pod_spec.setdefault("affinity", {}).setdefault("nodeAffinity", {})
    required = node_affinity.setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
    terms = required.get("nodeSelectorTerms") or [{}]
    required["nodeSelectorTerms"] = [
        {**t, "matchFields": [*(t.get("matchFields") or []), pin]} for t in terms
    ]


def render_worker_pod(
    meta: dict[str, Any], spec: TrainingJobSpec, rank: int, generation: int, node: str = ""
) -> dict[str, Any]:
    """Rank `rank` of restart generation `generation`; `node`: where its admission placed it."""
    job, ns = meta["name"], meta["namespace"]
    template = copy.deepcopy(spec.template)
    tmeta = template.get("metadata") or {}
    pod_spec: dict[str, Any] = template.get("spec") or {}
    pod_labels = {
        **(tmeta.get("labels") or {}),
        **selector_labels(job),
        labels.RANK: str(rank),
        labels.GENERATION: str(generation),
        labels.REPLICA_TYPE: "worker",
        labels.MANAGED_BY: labels.OPERATOR,
        **owner_labels(meta),
    }
    annotations = {**(tmeta.get("annotations") or {}), **spec.gang.pod_group_annotations}
    env: list[dict[str, Any]] = [*worker_env(meta, spec, rank, generation), NODE_NAME_ENV]
    for container in pod_spec.get("containers", []):
        container["env"] = [*env, *(container.get("env") or [])]
    if spec.gpus_per_replica and pod_spec.get("containers"):
        resources = pod_spec["containers"][0].setdefault("resources", {})
        for kind in ("limits", "requests"):
            resources.setdefault(kind, {})[labels.GPU] = str(spec.gpus_per_replica)
        tolerations = pod_spec.setdefault("tolerations", [])
        if GPU_TOLERATION not in tolerations:
            tolerations.append(dict(GPU_TOLERATION))
    if spec.preflight and pod_spec.get("containers"):
        pod_spec["initContainers"] = [
            preflight_container(spec, pod_spec["containers"][0], env, rank),
            *(pod_spec.get("initContainers") or []),
        ]
    pod_spec["restartPolicy"] = "Never"  # the operator restarts the whole group, never kubelet
    pod_spec["hostname"] = pod_hostname(job, rank)
    pod_spec["subdomain"] = job
    pod_spec.setdefault("enableServiceLinks", False)
    # Workers do not talk to the API: no token unless the template asks for one.
    pod_spec.setdefault("automountServiceAccountToken", False)
    if node:
        pin_to_node(pod_spec, node)
    if spec.gang.scheduler_name:
        pod_spec["schedulerName"] = spec.gang.scheduler_name
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(job, rank, generation),
            "namespace": ns,
            "labels": pod_labels,
            "annotations": annotations,
            "ownerReferences": [owner_reference(meta)],
        },
        "spec": pod_spec,
    }


def render_headless_service(meta: dict[str, Any], spec: TrainingJobSpec) -> dict[str, Any]:
    """Gives rank 0 (or, with dnsNames AllWorkers, every worker) a stable DNS name, published
    before pods are Ready, so the rendezvous address resolves while the group is still starting.
    Selecting rank 0 alone spares the control plane an endpoint update for every pod that starts:
    other ranks need no name, as peers reach them at the addresses they publish in the store."""
    job = meta["name"]
    # The kind too: a ServingJob may share the job's name in its namespace.
    selector = {**selector_labels(job), labels.OWNER_KIND: KIND}
    if spec.dns_names != DNSNames.ALL_WORKERS:
        selector[labels.RANK] = "0"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": owned_metadata(meta, job),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": selector,
            "ports": [
                {"name": "rendezvous", "port": spec.rendezvous_port, "protocol": "TCP"},
                {"name": "master", "port": DEFAULT_MASTER_PORT, "protocol": "TCP"},
                {"name": "metrics", "port": labels.METRICS_PORT, "protocol": "TCP"},
            ],
        },
    }
