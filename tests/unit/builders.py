"""Small fluent builders for table-driven tests: jobs, pods and nodes as the API returns them."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

from distml import labels
from distml.rendering import pod_name

T0 = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def stamp(seconds: float) -> str:
    return at(seconds).strftime("%Y-%m-%dT%H:%M:%SZ")


class JobBuilder:
    def __init__(self, name: str = "llm") -> None:
        self.o: dict[str, Any] = {
            "apiVersion": "distml.io/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {
                "name": name,
                "namespace": "team",
                "uid": "uid-1",
                "generation": 1,
                "creationTimestamp": stamp(0),
            },
            "spec": {
                "replicas": 2,
                "gpusPerReplica": 8,
                "template": {"spec": {"containers": [{"name": "trainer", "image": "img"}]}},
            },
            "status": {},
        }

    def spec(self, **kw: Any) -> JobBuilder:
        self.o["spec"].update(kw)
        return self

    def replicas(self, n: int) -> JobBuilder:
        return self.spec(replicas=n)

    def gpus(self, n: int) -> JobBuilder:
        return self.spec(gpusPerReplica=n)

    def run_policy(self, **kw: Any) -> JobBuilder:
        self.o["spec"].setdefault("runPolicy", {}).update(kw)
        return self

    def status(self, **kw: Any) -> JobBuilder:
        self.o["status"].update(kw)
        return self

    def obj(self) -> dict[str, Any]:
        return copy.deepcopy(self.o)


def make_job(name: str = "llm") -> JobBuilder:
    return JobBuilder(name)


class PodBuilder:
    def __init__(self, job: str, rank: int, generation: int = 0, gpus: int = 8) -> None:
        self.o: dict[str, Any] = {
            "metadata": {
                "name": pod_name(job, rank, generation),
                "namespace": "team",
                "labels": {
                    labels.JOB_NAME: job,
                    labels.RANK: str(rank),
                    labels.GENERATION: str(generation),
                },
                "ownerReferences": [
                    {"kind": "TrainingJob", "name": job, "uid": "uid-1", "controller": True}
                ],
            },
            "spec": {
                "nodeName": f"n{rank}",
                "containers": [
                    {"name": "trainer", "resources": {"limits": {labels.GPU: str(gpus)}}}
                ],
            },
            "status": {"phase": "Pending"},
        }

    def on(self, node: str) -> PodBuilder:
        self.o["spec"]["nodeName"] = node
        return self

    def unscheduled(self) -> PodBuilder:
        self.o["spec"].pop("nodeName")
        return self

    def running(self) -> PodBuilder:
        self.o["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
        return self

    def exited(self, code: int, at: float | None = None) -> PodBuilder:
        """The container ended with `code` (at `at` seconds from T0, when given)."""
        self.o["status"] = {
            "phase": "Succeeded" if code == 0 else "Failed",
            "containerStatuses": [
                {
                    "name": "trainer",
                    "state": {
                        "terminated": {
                            "exitCode": code,
                            "reason": "Completed" if code == 0 else "Error",
                            **({"finishedAt": stamp(at)} if at is not None else {}),
                        }
                    },
                }
            ],
        }
        return self

    def preflight(self, code: int, message: str) -> PodBuilder:
        """The preflight init container ended with `code` and wrote `message`; the worker has not
        started (code != 0) or runs (code 0)."""
        if code:
            self.o["status"] = {"phase": "Failed"}
        else:
            self.running()
        self.o["status"]["initContainerStatuses"] = [
            {
                "name": "preflight",
                "state": {"terminated": {"exitCode": code, "message": message}},
            }
        ]
        return self

    def owned_by(self, uid: str) -> PodBuilder:
        self.o["metadata"]["ownerReferences"][0]["uid"] = uid
        return self

    def deleting(self) -> PodBuilder:
        self.o["metadata"]["deletionTimestamp"] = stamp(0)
        return self

    def obj(self) -> dict[str, Any]:
        return copy.deepcopy(self.o)


def make_pod(job: str, rank: int, generation: int = 0, gpus: int = 8) -> PodBuilder:
    return PodBuilder(job, rank, generation, gpus)


def make_node(
    name: str, gpus: int = 8, ready: bool = True, since: float = -60.0, **node_labels: str
) -> dict[str, Any]:
    """A GPU node; a NotReady one has been so since `since` (seconds from T0)."""
    ready_condition = {"type": "Ready", "status": "True" if ready else "Unknown"}
    if not ready:
        ready_condition["lastTransitionTime"] = stamp(since)
    return {
        "metadata": {"name": name, "labels": dict(node_labels)},
        "spec": {"taints": [{"key": labels.GPU_TAINT_KEY, "effect": "NoSchedule"}]},
        "status": {"allocatable": {labels.GPU: str(gpus)}, "conditions": [ready_condition]},
    }


def nodes(n: int, gpus: int = 8) -> list[dict[str, Any]]:
    return [make_node(f"n{i}", gpus) for i in range(n)]


def admitted_job(
    n: int = 2,
    gen: int = 0,
    nodes_: tuple[str, ...] = ("n0", "n1"),
    phase: str = "Creating",
    **status: Any,
) -> dict[str, Any]:
    """A job whose generation `gen` was admitted at T0 onto `nodes_`, in `phase`."""
    adm = {"restartGeneration": gen, "replicas": n, "gpusPerReplica": 8, "nodes": list(nodes_)}
    return (
        make_job()
        .replicas(n)
        .status(
            phase=phase,
            restartGeneration=gen,
            admittedTime=stamp(0),
            startTime=stamp(0),
            admission=adm,
            **status,
        )
        .obj()
    )
