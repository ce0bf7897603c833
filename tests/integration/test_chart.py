"""The Helm chart on the local cluster: `helm install` creates what it renders and `helm
uninstall` removes it; the chart's RBAC lets the operator do its work (every other integration
test runs the operator with it) and refuses what it should not do."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml
from kubernetes import client, config

from .conftest import CHART_NAMESPACE, OperatorProcess, render_chart
from .helpers import wait_for
from .jobs import create, live_pods, status, training_job, wait_phase

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


def _created(op) -> float:
    line = next(
        li for li in op.metrics().splitlines() if li.startswith("distml_pods_created_total")
    )
    return float(line.split()[1])


def test_two_peering_replicas_keep_exactly_one_active_and_hand_over(
    cluster, operator, chart_kubeconfig, custom, core, namespace, node_pool
):
    """The chart's default: 2 replicas with kopf peering. One works, one waits; when the active
    one leaves (a rolling update, a drained node), the other takes over."""
    selector, _ = node_pool(3)  # room for both jobs
    logs = [cluster.logs / f"operator-peer-{i}.log" for i in range(2)]
    for log in logs:
        log.write_text("")
    operator.stop()  # the suite's standalone operator would act on these jobs too
    peers = [OperatorProcess(chart_kubeconfig, log, "--peering", "rbac-distml") for log in logs]
    try:
        for peer in peers:
            peer.start()

        def priority(log) -> int:
            text = wait_for(
                f"{log.name} to join",
                lambda: "with priority" in log.read_text() and log.read_text(),
            )
            return int(text.split("with priority ")[1].split()[0])

        def last_peering_word(log) -> str:
            lines = [
                li for li in log.read_text().splitlines() if "kopf._core.engines.peering" in li
            ]
            return "Resuming" if lines and "Resuming operations" in lines[-1] else "paused"

        # the highest priority works; the other never resumed, or paused once it saw the first
        prios = [priority(log) for log in logs]
        top = prios.index(max(prios))
        wait_for(
            "exactly one replica active",
            lambda: (
                [last_peering_word(log) for log in logs]
                == ["Resuming" if i == top else "paused" for i in range(2)]
            ),
            timeout=90,
        )
        waiting, active = peers[1 - top], peers[top]
        create(custom, namespace, training_job("first", replicas=2, gpus=8, node_selector=selector))
        wait_phase(custom, namespace, "first", "Running")
        assert len(live_pods(core, namespace, "first")) == 2
        assert (_created(active), _created(waiting)) == (2, 0)

        active.stop()  # SIGTERM: kopf leaves the peering on its way out
        wait_for(
            "the waiting replica to resume",
            lambda: last_peering_word(logs[1 - top]) == "Resuming",
            timeout=90,
        )
        create(
            custom, namespace, training_job("second", replicas=1, gpus=8, node_selector=selector)
        )
        wait_phase(custom, namespace, "second", "Running")
        assert _created(waiting) == 1
        assert len(live_pods(core, namespace, "first")) == 2, "the first job's pods were kept"
        for log in logs:
            denied = [li for li in log.read_text().splitlines() if "is forbidden: User" in li]
            assert not denied, denied[:3]
    finally:
        for peer in peers:
            peer.stop()
        operator.start()


def test_watch_namespaces_mode_runs_jobs_there_with_roles_and_ignores_other_namespaces(
    cluster, operator, custom, core, namespace, node_pool
):
    """`--set watchNamespaces={ns}`: the operator, holding only that namespace's Role and the
    read-only ClusterRole, runs a job there; a job elsewhere is left alone, and its identity
    cannot create pods elsewhere."""
    selector, _ = node_pool(1)
    release = f"ns{uuid.uuid4().hex[:5]}"
    docs = [
        d
        for d in yaml.safe_load_all(
            render_chart(f"watchNamespaces={{{namespace}}}", "replicas=1", release=release)
        )
        if d
        and d["kind"]
        in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
    ]
    assert {d["kind"] for d in docs} >= {"Role", "RoleBinding"}
    other = f"{namespace[:50]}-other"
    cluster.kubectl("create", "namespace", other)
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    kubeconfig = cluster.token_kubeconfig(f"{release}-distml", CHART_NAMESPACE)
    operator.stop()
    scoped = OperatorProcess(
        kubeconfig, cluster.logs / "operator-namespaced.log", "--namespace", namespace
    )
    try:
        scoped.start()
        # The job elsewhere comes first: by the time the one inside runs, an operator watching
        # both (one stream, in resourceVersion order) would have handled it.
        create(custom, other, training_job("outside", replicas=1, gpus=8, node_selector=selector))
        create(
            custom, namespace, training_job("inside", replicas=1, gpus=8, node_selector=selector)
        )
        wait_phase(custom, namespace, "inside", "Running")
        assert len(live_pods(core, namespace, "inside")) == 1
        assert not status(custom, other, "outside"), "a namespace it does not watch is left alone"
        api = config.new_client_from_config(config_file=str(kubeconfig))
        with pytest.raises(client.ApiException) as refused:
            client.CoreV1Api(api).create_namespaced_pod(
                other, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"},
                        "spec": {"containers": [{"name": "x", "image": "x"}]}}
            )  # fmt: skip
        assert refused.value.status == 403
        assert not live_pods(core, other, "outside")
        # Its orphan sweep keeps to its namespace: a pod elsewhere that claims a job this
        # operator cannot list is not its to delete; an orphan in its own namespace is.
        outside_uid = custom.get_namespaced_custom_object(
            "distml.io", "v1alpha1", other, "trainingjobs", "outside"
        )["metadata"]["uid"]
        for ns, name, uid in ((other, "outside-claimed", outside_uid),
                              (namespace, "orphan", "no-such-job")):  # fmt: skip
            core.create_namespaced_pod(ns, _claimed_pod(name, uid))
        wait_for(
            "the orphan in its namespace deleted",
            lambda: (
                not core.list_namespaced_pod(namespace, field_selector="metadata.name=orphan").items
            ),
            timeout=30,
        )
        assert (
            core.read_namespaced_pod("outside-claimed", other).metadata.deletion_timestamp is None
        )
        denied = [li for li in scoped.log.read_text().splitlines() if "is forbidden: User" in li]
        assert not denied, denied[:3]
    finally:
        scoped.stop()
        operator.start()
        cluster.kubectl("delete", "namespace", other, "--wait=false", check=False)
        for d in docs:
            if d["kind"] in ("ClusterRole", "ClusterRoleBinding"):
                cluster.kubectl("delete", d["kind"].lower(), d["metadata"]["name"], check=False)


def _claimed_pod(name: str, owner_uid: str) -> dict:
    """A pod labelled as the operator's, for the TrainingJob with `owner_uid`; never scheduled."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {
            "distml.io/job-name": name, "distml.io/rank": "0",
            "distml.io/restart-generation": "0", "app.kubernetes.io/managed-by": "distml-operator",
            "distml.io/owner-kind": "TrainingJob", "distml.io/owner-uid": owner_uid}},
        "spec": {"nodeSelector": {"no-such-label": "x"},
                 "containers": [{"name": "c", "image": "x"}]},
    }  # fmt: skip
