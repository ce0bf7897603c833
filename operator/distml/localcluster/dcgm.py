"""GPU telemetry for the local cluster's simulated GPUs, under the metric and label names NVIDIA's
dcgm-exporter uses (DCGM_FI_DEV_GPU_UTIL, DCGM_FI_DEV_FB_USED, DCGM_FI_DEV_POWER_USAGE; gpu, UUID,
Hostname, modelName, and namespace/pod/container for a GPU allocated to a pod), so dashboards
built for real clusters show data here too.

The GPUs are simulated, and so are their readings: a GPU held by a Running pod reads busy, any
other idle. Which GPU a pod holds follows the device plugin's rule of thumb: a node's GPU-holding
pods take consecutive indices in creation order.

    python -m distml.localcluster dcgm --port 9401
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from distml.localcluster.nodes import GPU_RESOURCE
from distml.podstate import gpu_request

BUSY = {
    "DCGM_FI_DEV_GPU_UTIL": 97.0,
    "DCGM_FI_DEV_FB_USED": 61440.0,
    "DCGM_FI_DEV_POWER_USAGE": 640.0,
}
IDLE = {"DCGM_FI_DEV_GPU_UTIL": 0.0, "DCGM_FI_DEV_FB_USED": 0.0, "DCGM_FI_DEV_POWER_USAGE": 72.0}
HELP = {
    "DCGM_FI_DEV_GPU_UTIL": "GPU utilization (in %).",
    "DCGM_FI_DEV_FB_USED": "Framebuffer memory used (in MiB).",
    "DCGM_FI_DEV_POWER_USAGE": "Power draw (in W).",
}


@dataclass(frozen=True)
class GpuReading:
    labels: dict[str, str]
    values: dict[str, float]


def simulate_gpu_readings(
    nodes: Iterable[dict[str, Any]], pods: Iterable[dict[str, Any]]
) -> list[GpuReading]:
    """One reading per GPU of every node that has GPUs."""
    holding: dict[str, list[dict[str, Any]]] = {}
    for pod in pods:
        node = pod.get("spec", {}).get("nodeName")
        phase = pod.get("status", {}).get("phase")
        if node and phase in ("Pending", "Running") and gpu_request(pod):
            holding.setdefault(node, []).append(pod)
    readings = []
    for node in nodes:
        name = node["metadata"]["name"]
        count = int(node.get("status", {}).get("capacity", {}).get(GPU_RESOURCE, 0))
        model = node["metadata"].get("labels", {}).get("nvidia.com/gpu.product", "unknown")
        owners: list[dict[str, Any] | None] = []
        ordered = sorted(
            holding.get(name, []),
            key=lambda p: (p["metadata"].get("creationTimestamp", ""), p["metadata"]["name"]),
        )
        for pod in ordered:
            owners += [pod] * gpu_request(pod)
        owners = (owners + [None] * count)[:count]
        for index, owner in enumerate(owners):
            uuid = hashlib.sha1(f"{name}/{index}".encode()).hexdigest()
            labels = {
                "gpu": str(index),
                "UUID": f"GPU-{uuid[:8]}-{uuid[8:12]}-{uuid[12:16]}-{uuid[16:20]}-{uuid[20:32]}",
                "device": f"nvidia{index}",
                "modelName": model.replace("-", " "),
                "Hostname": name,
            }
            busy = owner is not None and owner.get("status", {}).get("phase") == "Running"
            if owner is not None:
                labels |= {
                    "namespace": owner["metadata"]["namespace"],
                    "pod": owner["metadata"]["name"],
                    "container": owner["spec"]["containers"][0]["name"],
                }
            readings.append(GpuReading(labels, BUSY if busy else IDLE))
    return readings


class DcgmCollector:
    """A prometheus_client collector reading nodes and pods from the API at each scrape."""

    def __init__(self, core: Any) -> None:
        self.core = core

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        # the raw JSON, in the API's own field names, which is what the readings read
        nodes = json.loads(self.core.list_node(_preload_content=False).data)["items"]
        pods = json.loads(self.core.list_pod_for_all_namespaces(_preload_content=False).data)
        readings = simulate_gpu_readings(nodes, pods["items"])
        for metric, help_text in HELP.items():
            family = GaugeMetricFamily(metric, help_text, labels=None)
            for r in readings:
                family.add_sample(metric, r.labels, r.values[metric])
            yield family


def serve(kubeconfig: str, port: int) -> None:
    """Serves the readings on :port/metrics until the process is stopped."""
    import time

    from kubernetes import client, config
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    registry.register(DcgmCollector(client.CoreV1Api(config.new_client_from_config(kubeconfig))))
    start_http_server(port, registry=registry)
    print(f"simulated dcgm-exporter on :{port}/metrics", flush=True)
    while True:
        time.sleep(3600)
