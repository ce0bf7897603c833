"""The Helm chart on the local cluster: `helm install` creates what it renders and `helm
uninstall` removes it; the chart's RBAC lets the operator do its work (every other integration
test runs the operator with it) and refuses what it should not do."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest
from kubernetes import client, config

REPO = Path(__file__).resolve().parents[2]


def test_operator_identity_is_refused_secrets_and_foreign_writes(chart_kubeconfig, namespace):
    api = config.new_client_from_config(config_file=str(chart_kubeconfig))
    core = client.CoreV1Api(api)
    assert core.list_node().items, "reading nodes is part of the operator's job"
    core.list_namespaced_pod(namespace)
    for attempt in (
        lambda: core.list_namespaced_secret(namespace),
        lambda: core.read_namespaced_config_map("kube-root-ca.crt", namespace),
        lambda: core.delete_namespace(namespace),
        lambda: client.AppsV1Api(api).list_namespaced_deployment(namespace),
    ):
        with pytest.raises(client.ApiException) as refused:
            attempt()
        assert refused.value.status == 403


def _helm(cluster, *args: str) -> str:
    done = subprocess.run(
        [str(REPO / "bin" / "helm"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)},
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_helm_install_creates_the_release_and_uninstall_removes_it(cluster, crds, namespace):
    release = f"it-{uuid.uuid4().hex[:5]}"
    _helm(cluster, "install", release, str(REPO / "charts" / "distml"), "-n", namespace)
    full = f"{release}-distml"
    made = {
        ("deployment", full, namespace),
        ("serviceaccount", full, namespace),
        ("service", f"{full}-metrics", namespace),
        ("clusterrole", full, None),
        ("clusterrolebinding", full, None),
        ("clusterkopfpeering", full, None),
    }

    def exists(kind: str, name: str, ns: str | None) -> bool:
        args = ["get", kind, name, "--ignore-not-found", "-o", "name"]
        return bool(cluster.kubectl(*args, *(["-n", ns] if ns else [])).strip())

    assert all(exists(*m) for m in made), [m for m in made if not exists(*m)]
    status = _helm(cluster, "status", release, "-n", namespace)
    assert "STATUS: deployed" in status
    _helm(cluster, "uninstall", release, "-n", namespace, "--wait")
    assert not [m for m in made if exists(*m)]
    # Helm leaves CRDs in place on uninstall (so no one's jobs vanish): they are still served
    assert exists("crd", "trainingjobs.distml.io", None)
