"""Gang admission without an external gang scheduler: is there room for the whole group now?

Pure: nodes and pods in, a verdict with a message a user can act on out. Each replica needs its
GPUs on one node, so the question is how many replicas fit into each node's free GPUs. GPU pods
already created but not yet scheduled (other gangs on their way) are placed first, first-fit, so
two jobs are not both admitted into the same free GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from distml import labels, podstate

Obj = dict[str, Any]
_BLOCKING_TAINTS = ("NoSchedule", "NoExecute")


@dataclass(frozen=True)
class Admission:
    admitted: bool
    reason: str  # Admitted | InsufficientGPUs | NoNodeFits
    message: str
    free: dict[str, int]


def _tolerated(node: Obj) -> bool:
    for taint in (node.get("spec") or {}).get("taints") or []:
        if taint.get("effect") in _BLOCKING_TAINTS and taint.get("key") != labels.GPU_TAINT_KEY:
            return False
    return not (node.get("spec") or {}).get("unschedulable")


def _selected(node: Obj, node_selector: dict[str, str]) -> bool:
    node_labels = node["metadata"].get("labels") or {}
    return all(node_labels.get(k) == v for k, v in node_selector.items())


def free_gpus(
    nodes: list[Obj],
    pods: list[Obj],
    node_selector: dict[str, str] | None = None,
    exclude_job: str = "",
) -> dict[str, int]:
    """Free GPUs per usable node (Ready, schedulable, matching the selector), after the GPUs of
    every live pod bound there and of unscheduled GPU pods placed first-fit."""
    usable = {
        n["metadata"]["name"]: podstate.node_gpus(n)
        for n in nodes
        if podstate.node_ready(n) and _tolerated(n) and _selected(n, node_selector or {})
    }
    all_nodes = {n["metadata"]["name"] for n in nodes}
    waiting = []
    for pod in pods:
        if podstate.is_terminal(pod):
            continue
        gpus = podstate.gpu_request(pod)
        if not gpus:
            continue
        if (pod["metadata"].get("labels") or {}).get(
            labels.JOB_NAME
        ) == exclude_job and exclude_job:
            continue
        node = podstate.node_name(pod)
        if node in usable:
            usable[node] -= gpus
        elif not node or node not in all_nodes:
            waiting.append(gpus)
    for gpus in sorted(waiting, reverse=True):
        for name in sorted(usable, key=lambda n: usable[n]):
            if usable[name] >= gpus:
                usable[name] -= gpus
                break
    return {name: max(free, 0) for name, free in usable.items()}


def admit_gang(
    replicas: int,
    gpus_per_replica: int,
    nodes: list[Obj],
    pods: list[Obj],
    node_selector: dict[str, str] | None = None,
    job: str = "",
) -> Admission:
    free = free_gpus(nodes, pods, node_selector, exclude_job=job)
    if gpus_per_replica == 0:
        return Admission(True, "Admitted", f"{replicas} CPU-only replicas", free)
    largest = max((podstate.node_gpus(n) for n in nodes), default=0)
    if gpus_per_replica > largest:
        return Admission(
            False,
            "NoNodeFits",
            f"each replica asks for {gpus_per_replica} {labels.GPU} but the largest "
            f"node has {largest}; no node can ever run it",
            free,
        )
    fits = sum(f // gpus_per_replica for f in free.values())
    need = f"{replicas} x {gpus_per_replica} {labels.GPU}"
    if fits >= replicas:
        return Admission(True, "Admitted", f"room for {need}", free)
    shown = ", ".join(f"{n}={f}" for n, f in sorted(free.items()) if f) or "none"
    return Admission(
        False,
        "InsufficientGPUs",
        f"waiting for {need} on whole nodes: room for {fits} now; free GPUs: {shown}",
        free,
    )
