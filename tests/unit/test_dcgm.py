"""Simulated dcgm-exporter readings: one per GPU, pods hold consecutive GPUs in creation order,
and a GPU reads busy only while its pod runs."""

from __future__ import annotations

from distml.localcluster.dcgm import BUSY, IDLE, simulate_gpu_readings


def _node(name: str, gpus: int) -> dict:
    return {
        "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}},
        "status": {"capacity": {"nvidia.com/gpu": str(gpus)}},
    }


def _pod(name: str, node: str, gpus: int, phase: str, created: str) -> dict:
    return {
        "metadata": {"name": name, "namespace": "ml", "creationTimestamp": created},
        "spec": {
            "nodeName": node,
            "containers": [
                {"name": "trainer", "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}
            ],
        },
        "status": {"phase": phase},
    }


def test_pods_hold_consecutive_gpus_and_read_busy_only_while_running():
    readings = simulate_gpu_readings(
        [_node("n0", 4), _node("cpu", 0)],
        [
            _pod("late", "n0", 1, "Pending", "2026-01-01T00:00:02Z"),
            _pod("early", "n0", 2, "Running", "2026-01-01T00:00:01Z"),
            _pod("done", "n0", 1, "Succeeded", "2026-01-01T00:00:00Z"),
        ],
    )
    assert [r.labels["gpu"] for r in readings] == ["0", "1", "2", "3"]
    assert [r.labels.get("pod") for r in readings] == ["early", "early", "late", None]
    assert [r.values for r in readings] == [BUSY, BUSY, IDLE, IDLE]
    assert readings[0].labels["Hostname"] == "n0"
    assert readings[0].labels["modelName"] == "NVIDIA H100 80GB HBM3"
    assert readings[0].labels["container"] == "trainer" and readings[0].labels["namespace"] == "ml"
    assert len({r.labels["UUID"] for r in readings}) == 4
