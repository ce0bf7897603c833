"""What the tests on process nodes share: the nodes (3 servers x 2 GPUs, each its own network
host), a hostPath folder they all see, a DDP TrainingJob of one pod per node, and reading what
its ranks printed and which processes they are."""

from __future__ import annotations

import collections
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3
from kubernetes import client

from distml import labels
from distml.localcluster import processes
from distml.localcluster.cluster import LocalCluster
from distml.localnode import network, proxy

from . import jobs

PROCESS = {"distml.io/simulated-node": "process"}
GPUS_PER_NODE = 2  # a pod of 2 GPUs takes a whole node


@pytest.fixture(scope="module")
def process_nodes(cluster: LocalCluster) -> Iterator[list[str]]:
    if why := network.available() or proxy.available(str(cluster.bin_dir / "kube-proxy")):
        pytest.skip(why)
    cluster.sync_process_nodes(3, gpus=GPUS_PER_NODE)
    yield [f"proc-node-{i:03d}" for i in range(3)]
    cluster.sync_process_nodes(0)


@pytest.fixture
def checkpoints(cluster: LocalCluster, namespace: str) -> Iterator[tuple[str, Path]]:
    """A hostPath every process node shares: (path in the pod spec, folder on this machine)."""
    path = f"/mnt/distml-e2e/{namespace}"
    folder = cluster.root / "shared" / "hostpath" / path.lstrip("/")
    yield path, folder
    shutil.rmtree(folder, ignore_errors=True)


def ddp_job(
    name: str, ckpt: str, steps: int, delay: float, replicas: int = 2, **spec: object
) -> dict:
    """`replicas` pods x 2 GPUs: one pod per process node, one training process per pod."""
    pod_spec = {
        "nodeSelector": PROCESS,
        "terminationGracePeriodSeconds": 5,
        "containers": [
            {
                "name": "trainer",
                "image": "distml-runtime:0.1.0",
                "args": ["python", "-m", "distml_runtime.train.ddp", "--steps", str(steps),
                         "--step-delay", str(delay), "--log-every", "5",
                         "--checkpoint-dir", "/ckpt", "--checkpoint-every", "10"],
                "volumeMounts": [{"name": "ckpt", "mountPath": "/ckpt"}],
            }
        ],
        "volumes": [{"name": "ckpt", "hostPath": {"path": ckpt, "type": "DirectoryOrCreate"}}],
    }  # fmt: skip
    body = jobs.training_job(name, replicas, GPUS_PER_NODE, nprocPerReplica=1, **spec)
    body["spec"]["template"] = {"spec": pod_spec}
    return body


def events_of(core: client.CoreV1Api, ns: str, pod: str) -> list[dict]:
    """The JSON events rank 0 printed, read through `kubectl logs`' path (API server -> node);
    none from a pod whose node does not answer (cut off) within a few seconds."""
    try:
        text = core.read_namespaced_pod_log(pod, ns, container="trainer", _request_timeout=(3, 8))
        text = text or ""
    except (client.ApiException, urllib3.exceptions.HTTPError):
        return []
    return [json.loads(li) for li in text.splitlines() if li.startswith("{")]


def training_pids(folder: Path) -> list[int]:
    """The training processes (not their launchers) that write to `folder`."""
    return processes.matching(
        lambda argv: "distml_runtime.train.ddp" in argv[:3] and str(folder) in argv
    )


def training_pid(folder: Path) -> int:
    pids = training_pids(folder)
    if not pids:
        raise LookupError(f"no training process writes to {folder}")
    return pids[0]


class Census:
    """Reads a job's pods over and over in the background, for as long as it is entered: the most
    that were alive at once (not finished, not being deleted), in all and in one rank's slot.
    A pod duplicated by a recovery (a replacement made while the pod it replaces still runs)
    shows as two in a slot."""

    def __init__(self, core: client.CoreV1Api, ns: str, job: str, every: float = 0.25) -> None:
        self.core, self.ns, self.job, self.every = core, ns, job, every
        self.most = self.most_in_a_slot = self.reads = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            alive = [
                p for p in jobs.live_pods(self.core, self.ns, self.job)
                if p.status.phase not in ("Succeeded", "Failed")
            ]  # fmt: skip
            slots = collections.Counter(p.metadata.labels.get(labels.RANK) for p in alive)
            self.most = max(self.most, len(alive))
            self.most_in_a_slot = max(self.most_in_a_slot, *slots.values(), 0)
            self.reads += 1

    def __enter__(self) -> Census:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
