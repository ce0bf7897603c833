"""The local cluster is a real Kubernetes control plane: the scheduler counts GPUs, the garbage
collector follows owner references, injected exits end pods with their code, dead nodes go
NotReady, and the cluster's own lifecycle is idempotent and leaves nothing behind."""

from __future__ import annotations

import pytest
from kubernetes import client

from distml.localcluster import faults, processes
from distml.localcluster.cluster import STOP_ORDER, LocalCluster
from distml.localcluster.nodes import ClusterShape, NodeShape

from .helpers import gpu_pod, wait_for


def _phase(core: client.CoreV1Api, ns: str, name: str) -> str:
    return core.read_namespaced_pod(name, ns).status.phase


def test_scheduler_fits_gpu_pods_to_free_gpus(core, namespace, node_pool):
    selector, _ = node_pool(4)
    for i in range(5):
        core.create_namespaced_pod(namespace, gpu_pod(f"w{i}", 8, selector))

    def settled():
        pods = core.list_namespaced_pod(namespace).items
        phases = sorted(p.status.phase for p in pods)
        return phases if phases == ["Pending"] + ["Running"] * 4 else None

    wait_for("4 Running and 1 Pending", settled, timeout=60)
    pending = next(
        p for p in core.list_namespaced_pod(namespace).items if p.status.phase == "Pending"
    )

    def failed_scheduling():
        events = core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={pending.metadata.name}"
        ).items
        return [
            e for e in events if e.reason == "FailedScheduling" and "nvidia.com/gpu" in e.message
        ]

    events = wait_for(
        "a FailedScheduling event naming nvidia.com/gpu", failed_scheduling, timeout=30
    )
    assert "Insufficient nvidia.com/gpu" in events[-1].message


def test_deleting_an_owner_garbage_collects_its_pods(core, namespace, node_pool):
    selector, _ = node_pool(1)
    owner = core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "owner"}, "data": {}}
    )
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    core.create_namespaced_pod(namespace, gpu_pod("child", 1, selector, ownerReferences=[ref]))
    wait_for("child Running", lambda: _phase(core, namespace, "child") == "Running")

    core.delete_namespaced_config_map("owner", namespace, propagation_policy="Background")
    wait_for(
        "child garbage-collected", lambda: not core.list_namespaced_pod(namespace).items, timeout=60
    )


@pytest.mark.parametrize(("code", "phase"), [(137, "Failed"), (3, "Failed"), (0, "Succeeded")])
def test_injected_exit_ends_pod_with_that_code(cluster, core, namespace, node_pool, code, phase):
    selector, _ = node_pool(1)
    core.create_namespaced_pod(namespace, gpu_pod("worker", 8, selector))
    wait_for("worker Running", lambda: _phase(core, namespace, "worker") == "Running")

    faults.exit_pod(cluster, namespace, "worker", code)

    wait_for(f"worker {phase}", lambda: _phase(core, namespace, "worker") == phase)
    status = core.read_namespaced_pod("worker", namespace).status
    terminated = status.container_statuses[0].state.terminated
    assert terminated.exit_code == code


def test_node_taken_down_goes_not_ready_and_its_pods_hang_terminating(
    cluster, core, namespace, node_pool
):
    selector, (name,) = node_pool(1)
    core.create_namespaced_pod(namespace, gpu_pod("stuck", 1, selector))
    wait_for("stuck Running", lambda: _phase(core, namespace, "stuck") == "Running")

    faults.node_down(cluster, name)
    core.delete_namespaced_pod("stuck", namespace)

    def ready_status():
        node = core.read_node(name)
        return next(c.status for c in node.status.conditions if c.type == "Ready") != "True"

    wait_for(f"{name} NotReady", ready_status, timeout=90, every=1)
    taints = {t.key for t in core.read_node(name).spec.taints or []}
    assert "node.kubernetes.io/unreachable" in taints
    # No kubelet answers for a dead node: the deleted pod stays, Terminating.
    assert core.read_namespaced_pod("stuck", namespace).metadata.deletion_timestamp is not None

    faults.node_up(cluster, name)
    wait_for(
        "the node Ready again and the pod gone",
        lambda: not core.list_namespaced_pod(namespace).items,
        timeout=60,
    )


def test_up_again_while_up_changes_nothing(cluster: LocalCluster):
    before = processes.running(cluster.root / "pids")
    cluster.up(
        ClusterShape(
            nodes=len(
                cluster.kubectl(
                    "get", "nodes", "-l", "distml.io/simulated-node=kwok", "-o", "name"
                ).split()
            )
        ),
        NodeShape(),
    )
    assert processes.running(cluster.root / "pids") == before


def test_down_stops_every_process_it_started(cluster: LocalCluster, tmp_path):
    second = LocalCluster(root=tmp_path / "cluster", bin_dir=cluster.bin_dir)
    second.up(ClusterShape(nodes=1), NodeShape(), timeout=120)
    pids = processes.running(tmp_path / "cluster" / "pids")
    assert sorted(pids) == sorted(STOP_ORDER)

    second.down()

    assert processes.running(tmp_path / "cluster" / "pids") == {}
    for name, pid in pids.items():
        assert not processes.alive(pid), f"{name} (pid {pid}) still alive after down"
