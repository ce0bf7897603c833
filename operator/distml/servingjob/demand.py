"""A ServingJob's demand on the GPU ledger it shares with TrainingJobs: the replicas its last
admission decided to create and whose pods are not seen yet (reserved on their nodes), or,
while a replica waits for GPUs, a waiting gang of the replicas it lacks, so that the queue
order (priority, then creation) holds across kinds. Its live pods the ledger counts itself."""

from __future__ import annotations

import dataclasses
from typing import Any

from distml import admission, rendering
from distml.podstate import parse_time

Obj = dict[str, Any]


def gang(job: Obj) -> admission.Gang:
    """One replica of the job as a gang of one, not admitted."""
    meta, spec = job["metadata"], job.get("spec") or {}
    gpus = int(spec.get("gpusPerReplica", 0))
    nodes = rendering.node_filter(spec.get("template") or {}, gpus)
    return admission.Gang(
        uid=str(meta.get("uid", "")),
        namespace=str(meta.get("namespace", "")),
        name=str(meta["name"]),
        replicas=1,
        gpus_per_replica=gpus,
        nodes=nodes,
        priority=int(spec.get("priority", 0)),
        created=str(meta.get("creationTimestamp", "")),
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
            replicas=len(adm["pods"]),
            generation=int(adm.get("batch", 0)),
            gpus_per_replica=int(adm.get("gpusPerReplica", base.gpus_per_replica)),
            admitted=tuple(adm.get("nodes") or ()) or ("",) * len(adm["pods"]),
        )
    if status.get("queuedTime"):
        lacking = int(spec.get("replicas", 1)) - int(status.get("updatedReplicas") or 0)
        return dataclasses.replace(
            base, replicas=max(lacking, 1), waiting_since=parse_time(status.get("queuedTime"))
        )
    return None
