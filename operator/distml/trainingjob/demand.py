"""A TrainingJob's demand on the GPU ledger, read from its raw spec and status (the handler
calls it for every job event, so it skips the models)."""

from __future__ import annotations

import dataclasses
from typing import Any

from distml import admission, placement, rendering
from distml.api.models import FINISHED, Phase
from distml.podstate import parse_time

Obj = dict[str, Any]


def demand(job: Obj) -> admission.Gang | None:
    """None when it wants no GPUs: finished, suspended, being deleted."""
    meta, spec, status = job["metadata"], job.get("spec") or {}, job.get("status") or {}
    phase = status.get("phase")
    if meta.get("deletionTimestamp") or phase in FINISHED:
        return None
    if (spec.get("runPolicy") or {}).get("suspend"):
        return None
    generation = int(status.get("restartGeneration") or 0)
    adm = status.get("admission") or {}
    admitted: tuple[str, ...] | None = None
    replicas, gpus = int(spec.get("replicas", 1)), int(spec.get("gpusPerReplica", 0))
    if adm and int(adm.get("restartGeneration", -1)) == generation:
        replicas, gpus = int(adm.get("replicas", replicas)), int(adm.get("gpusPerReplica", gpus))
        admitted = tuple(adm.get("nodes") or ()) or ("",) * replicas
    elif phase in (Phase.CREATING, Phase.RUNNING) and status.get("admittedTime"):
        admitted = ("",) * replicas  # admitted by an operator that kept no admission record
    prefer: tuple[str, ...] = ()
    if admitted is None and adm and int(adm.get("replicas", -1)) == replicas:
        prefer = tuple(adm.get("nodes") or ())  # the previous generation's nodes
    nodes = rendering.node_filter(spec.get("template") or {}, gpus)
    suspects = frozenset(s["node"] for s in status.get("suspectNodes") or [])
    if suspects:
        nodes = dataclasses.replace(nodes, avoid=suspects)
    return admission.Gang(
        uid=str(meta.get("uid", "")),
        namespace=str(meta.get("namespace", "")),
        name=str(meta["name"]),
        replicas=replicas,
        gpus_per_replica=gpus,
        generation=generation,
        nodes=nodes,
        priority=int(spec.get("priority", 0)),
        created=str(meta.get("creationTimestamp", "")),
        restarting=phase == Phase.RESTARTING,
        waiting_since=parse_time(status.get("queuedTime")),
        admitted=admitted,
        layout=layout(spec, replicas) if gpus else None,
        prefer=prefer,
    )


def layout(spec: Obj, replicas: int) -> placement.Layout | None:
    """The rank layout of a pipeline- or tensor-parallel job of `replicas` pods (None: the job
    is not placed by topology)."""
    par = spec.get("parallelism")
    if not par:
        return None
    gpus = int(spec.get("gpusPerReplica", 0))
    nproc = int(spec.get("nprocPerReplica") or gpus or 1)
    mode = str((spec.get("placement") or {}).get("pipelineStages") or placement.PREFER_SAME_BLOCK)
    try:
        return placement.Layout(
            replicas, nproc, int(par.get("pipeline", 1)), int(par.get("tensor", 1)), mode
        )
    except ValueError:
        return None  # the API refuses such a spec (CEL); an old object is placed as any other
