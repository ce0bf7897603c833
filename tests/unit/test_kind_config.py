"""kind-config.yaml is a kind v1alpha4 cluster whose workers get the host's GPUs the way NVIDIA's
kind tooling exposes them (a /dev/null mount the NVIDIA runtime reads as a device request)."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
NODE_KEYS = {
    "role",
    "image",
    "labels",
    "extraMounts",
    "extraPortMappings",
    "kubeadmConfigPatches",
    "kubeadmConfigPatchesJSON6902",
}


def test_kind_config_is_a_cluster_with_gpu_workers():
    cfg = yaml.safe_load((REPO / "kind-config.yaml").read_text())
    assert (cfg["kind"], cfg["apiVersion"]) == ("Cluster", "kind.x-k8s.io/v1alpha4")
    roles = [n["role"] for n in cfg["nodes"]]
    assert roles.count("control-plane") == 1 and "worker" in roles
    for node in cfg["nodes"]:
        assert set(node) <= NODE_KEYS, set(node) - NODE_KEYS
        assert all(isinstance(v, str) for v in (node.get("labels") or {}).values())
    workers = [n for n in cfg["nodes"] if n["role"] == "worker"]
    for w in workers:
        mounts = {m["containerPath"]: m["hostPath"] for m in w["extraMounts"]}
        assert mounts["/var/run/nvidia-container-devices/all"] == "/dev/null"
