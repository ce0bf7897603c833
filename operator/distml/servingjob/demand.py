"""A ServingJob's demand on the GPU ledger it shares with TrainingJobs: the replicas its last
admission decided to create and whose pods are not seen yet (reserved on their nodes), or,
while a replica waits for GPUs, a waiting gang of the replicas it lacks, so that the queue
order (priority, then creation) holds across kinds. Its live pods the ledger counts itself."""

from __future__ import annotations

import dataclasses
from typing import Any

from distml import admission, placement, rendering
from distml.podstate import parse_time

Obj = dict[str, Any]


def stages(job: Obj) -> int:
    """Pods per replica: its pipeline's stages, or 1."""
    return int(((job.get("spec") or {}).get("pipeline") or {}).get("stages") or 1)


def layout(job: Obj, replicas: int) -> placement.Layout | None:
    """A pipeline-split job's `replicas` replicas as the placement planner's grid: pod i is
    stage i // replicas of replica i % replicas (stage-major, as it orders ranks)."""
    pipeline = (job.get("spec") or {}).get("pipeline")
    if not pipeline:
        return None
    k = int(pipeline["stages"])
    mode = str(pipeline.get("placement") or placement.PREFER_SAME_BLOCK)
    return placement.Layout(replicas * k, 1, pipeline=k, mode=mode)


def gang(job: Obj, replicas: int = 1) -> admission.Gang:
    """`replicas` replicas of the job (their pods: a pipeline's stages each) as one gang, not
    admitted."""
    meta, spec = job["metadata"], job.get("spec") or {}
    k = stages(job)
    gpus = int(spec.get("gpusPerReplica", 0)) // k
    nodes = rendering.node_filter(spec.get("template") or {}, gpus)
    return admission.Gang(
        uid=str(meta.get("uid", "")),
        namespace=str(meta.get("namespace", "")),
        name=str(meta["name"]),
        replicas=replicas * k,
        gpus_per_replica=gpus,
        nodes=nodes,
        priority=int(spec.get("priority", 0)),
        created=str(meta.get("creationTimestamp", "")),
        layout=layout(job, replicas),
    )


def demand(job: Obj) -> admission.Gang | None:
    meta, spec, status = job["metadata"], job.get("spec") or {}, job.get("status") or {}
    if meta.get("deletionTimestamp"):
        return None
    base = gang(job)
    adm = status.get("admission") or {}
    if adm.get("pods"):
        return dataclasses.replace(
            base,
            layout=None,  # placed: its reservation is per pod
            replicas=len(adm["pods"]),
            generation=int(adm.get("batch", 0)),
            gpus_per_replica=int(adm.get("gpusPerReplica", base.gpus_per_replica)),
            admitted=tuple(adm.get("nodes") or ()) or ("",) * len(adm["pods"]),
        )
    if status.get("queuedTime"):
        lacking = int(spec.get("replicas", 1)) - int(status.get("updatedReplicas") or 0)
        return dataclasses.replace(
            gang(job, max(lacking, 1)), waiting_since=parse_time(status.get("queuedTime"))
        )
    return None
