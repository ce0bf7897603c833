"""Gang admission on the real control plane, with the operator as a real process under the chart's
ServiceAccount: one GPU ledger under a burst, namespaces apart, refused creates released, resizes,
and pod policy for namespace users."""

from __future__ import annotations

import threading
import time

import pytest
from kubernetes import client, config

from distml.localcluster import faults

from . import jobs
from .helpers import gpu_pod, wait_for

pytestmark = pytest.mark.usefixtures("operator")


def _job_pods(core, ns):
    return [
        p
        for p in core.list_namespaced_pod(ns, label_selector="distml.io/job-name").items
        if p.status.phase not in ("Succeeded", "Failed")
    ]


def _gpus(pod) -> int:
    return int((pod.spec.containers[0].resources.limits or {}).get("nvidia.com/gpu", 0))


def test_a_burst_three_times_the_cluster_never_double_books_and_drains_in_order(
    cluster, core, custom, namespace, node_pool
):
    sel, _ = node_pool(4)  # 32 GPUs
    shapes = [[(1, 4), (2, 4), (1, 8), (2, 2), (1, 2)][i % 5] for i in range(20)]
    total = sum(r * g for r, g in shapes)
    assert total == 104  # about 3x the pool
    names = [f"burst-{i:02d}" for i in range(20)]
    threads = [
        threading.Thread(
            target=jobs.create,
            args=(custom, namespace, jobs.training_job(n, r, g, sel)),
        )
        for n, (r, g) in zip(names, shapes, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    worst_bound = worst_admitted = 0
    finished: set[str] = set()
    deadline = time.monotonic() + 300
    while len(finished) < len(names):
        assert time.monotonic() < deadline, f"only {sorted(finished)} finished"
        items = {
            j["metadata"]["name"]: j
            for j in custom.list_namespaced_custom_object(
                jobs.GROUP, jobs.VERSION, namespace, jobs.PLURAL
            )["items"]
        }
        live = _job_pods(core, namespace)
        bound = sum(_gpus(p) for p in live if p.spec.node_name)
        admitted = 0
        for j in items.values():
            st = j.get("status") or {}
            adm = st.get("admission") or {}
            if st.get("phase") in ("Creating", "Running") and adm.get(
                "restartGeneration"
            ) == st.get("restartGeneration"):
                admitted += adm["replicas"] * adm["gpusPerReplica"]
            if st.get("phase") == "Queued":
                mine = [
                    p
                    for p in live
                    if p.metadata.labels["distml.io/job-name"] == j["metadata"]["name"]
                ]
                assert mine == [], f"{j['metadata']['name']} is Queued with pods"
            assert st.get("reason") != "GangTimeout", st
            assert int(st.get("gangAttempts") or 0) <= 1, st
        worst_bound, worst_admitted = max(worst_bound, bound), max(worst_admitted, admitted)
        assert bound <= 32 and admitted <= 32, (bound, admitted)
        # Let every gang that runs finish; the next ones start on what they free.
        for name, j in items.items():
            st = j.get("status") or {}
            if st.get("phase") == "Succeeded":
                finished.add(name)
            elif st.get("phase") == "Running":
                for p in live:
                    if p.metadata.labels["distml.io/job-name"] == name:
                        faults.exit_pod(cluster, namespace, p.metadata.name, 0)
        time.sleep(0.5)
    assert worst_admitted > 16  # the pool was really shared, not run one job at a time
    print(f"burst: peak {worst_bound}/32 GPUs bound, {worst_admitted}/32 admitted")


def test_same_name_in_two_namespaces_is_accounted_apart(core, custom, namespace, node_pool):
    sel, _ = node_pool(2)
    other = f"{namespace[:50]}-b"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=other)))
    try:
        jobs.create(custom, namespace, jobs.training_job("llm", 2, 8, sel))
        jobs.wait_phase(custom, namespace, "llm", "Running")
        jobs.create(custom, other, jobs.training_job("llm", 2, 8, sel))
        st = wait_for(
            "the second llm Queued",
            lambda: (s := jobs.status(custom, other, "llm")).get("phase") == "Queued" and s,
        )
        assert st["reason"] == "InsufficientGPUs" and st["queuePosition"] == 1
        assert jobs.pods(core, other, "llm") == []
    finally:
        core.delete_namespace(other, propagation_policy="Background")


def test_a_quota_below_the_gang_is_reported_released_and_retried(
    core, custom, namespace, node_pool
):
    sel, _ = node_pool(2)
    core.create_namespaced_resource_quota(
        namespace,
        client.V1ResourceQuota(
            metadata=client.V1ObjectMeta(name="two-pods"),
            spec=client.V1ResourceQuotaSpec(hard={"pods": "1"}),
        ),
    )
    wait_for(
        "the quota counted",
        lambda: core.read_namespaced_resource_quota("two-pods", namespace).status.hard or {},
    )
    jobs.create(custom, namespace, jobs.training_job("llm", 2, 8, sel))
    st = wait_for(
        "CreateRefused",
        lambda: (s := jobs.status(custom, namespace, "llm")).get("reason") == "CreateRefused" and s,
    )
    assert st["phase"] == "Queued" and "exceeded quota" in st["message"]
    assert "released" in st["message"]
    wait_for("the half gang released", lambda: jobs.live_pods(core, namespace, "llm") == [])
    # It backs off and tries again (the operator under test backs off 1 s, then 2 s, ...).
    wait_for(
        "a second refusal",
        lambda: (
            jobs.event_reasons(core, namespace, "llm").count("CreateRefused") >= 2
            or jobs.status(custom, namespace, "llm").get("gangAttempts", 0) >= 2
        ),
        timeout=30,
    )
    jobs.reasons_once(core, namespace, "llm", "CreateRefused")
    events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=llm").items
    refused = [e for e in events if e.reason == "CreateRefused"]
    assert refused and refused[0].type == "Warning" and "exceeded quota" in refused[0].message
    # With room in the quota it starts.
    core.delete_namespaced_resource_quota("two-pods", namespace)
    jobs.wait_phase(custom, namespace, "llm", "Running", timeout=60)


def test_a_pod_name_taken_by_someone_else_is_reported_not_adopted(
    core, custom, namespace, node_pool
):
    sel, _ = node_pool(2)
    core.create_namespaced_pod(namespace, gpu_pod("llm-worker-1-0", 0))
    jobs.create(custom, namespace, jobs.training_job("llm", 2, 8, sel))
    st = wait_for(
        "CreateRefused",
        lambda: (s := jobs.status(custom, namespace, "llm")).get("reason") == "CreateRefused" and s,
    )
    assert "llm-worker-1-0 already exists and is not owned by this job" in st["message"]
    assert core.read_namespaced_pod("llm-worker-1-0", namespace).metadata.owner_references is None


def test_a_service_named_like_the_job_but_not_its_own_is_reported_not_adopted(
    core, custom, namespace, node_pool
):
    sel, _ = node_pool(1)
    theirs = {
        "metadata": {"name": "llm"},
        "spec": {"ports": [{"port": 80}], "selector": {"a": "b"}},
    }
    core.create_namespaced_service(namespace, theirs)
    jobs.create(custom, namespace, jobs.training_job("llm", 1, 8, sel))
    st = wait_for(
        "CreateRefused",
        lambda: (s := jobs.status(custom, namespace, "llm")).get("reason") == "CreateRefused" and s,
    )
    assert "Service llm already exists and is not owned by this job" in st["message"]
    svc = core.read_namespaced_service("llm", namespace)
    assert svc.metadata.owner_references is None and svc.spec.selector == {"a": "b"}
    jobs.reasons_once(core, namespace, "llm", "CreateRefused")


def test_restricted_namespace_gets_no_pod_from_a_template_that_breaks_it(
    core, custom, namespace, node_pool
):
    sel, _ = node_pool(1)
    core.patch_namespace(
        namespace, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}
    )
    jobs.create(custom, namespace, jobs.training_job("plain", 1, 8, sel))
    st = wait_for(
        "PodPolicyViolation",
        lambda: (
            (s := jobs.status(custom, namespace, "plain")).get("reason") == "PodPolicyViolation"
            and s
        ),
    )
    assert "'restricted'" in st["message"]
    assert (
        "spec.template.spec.containers[0].securityContext.allowPrivilegeEscalation" in st["message"]
    )
    jobs.reasons_once(core, namespace, "plain", "PodPolicyViolation")
    events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=plain").items
    assert any(e.reason == "PodPolicyViolation" and e.type == "Warning" for e in events)
    assert jobs.pods(core, namespace, "plain") == []


def test_a_namespace_editor_can_run_jobs_but_gets_no_privileged_pod(
    cluster, core, custom, namespace, node_pool
):
    sel, _ = node_pool(1)
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="alice"))
    )
    rbac = client.RbacAuthorizationV1Api(core.api_client)
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "alice-edit"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "edit",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "alice", "namespace": namespace}],
        },
    )
    alice = client.CustomObjectsApi(
        config.new_client_from_config(str(cluster.token_kubeconfig("alice", namespace)))
    )

    def create_as_alice(body):
        try:
            return jobs.create(alice, namespace, body)
        except client.ApiException as err:
            return None if err.status == 403 else err  # the edit role's aggregation lags a moment

    wait_for("alice may create a job", lambda: create_as_alice(jobs.training_job("ok", 1, 8, sel)))
    jobs.wait_phase(custom, namespace, "ok", "Running")
    root = jobs.training_job("root", 1, 8, sel)
    container = root["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"] = {"privileged": True}
    root["spec"]["template"]["spec"]["hostPID"] = True
    jobs.create(alice, namespace, root)
    st = wait_for(
        "PodPolicyViolation",
        lambda: (
            (s := jobs.status(alice, namespace, "root")).get("reason") == "PodPolicyViolation" and s
        ),
    )
    assert "'baseline'" in st["message"] and "spec.template.spec.hostPID" in st["message"]
    assert jobs.pods(core, namespace, "root") == []
    (pod,) = jobs.pods(core, namespace, "ok")
    assert pod.spec.automount_service_account_token is False


def test_kubectl_scale_is_a_resize_not_a_failure(cluster, core, custom, namespace, node_pool):
    sel, _ = node_pool(3)
    jobs.create(custom, namespace, jobs.training_job("llm", 2, 8, sel))
    jobs.wait_phase(custom, namespace, "llm", "Running")
    for size in (3, 1):
        cluster.kubectl("scale", "-n", namespace, "tj/llm", f"--replicas={size}")
        st = wait_for(
            f"{size} pods Running",
            lambda size=size: (
                (s := jobs.status(custom, namespace, "llm")).get("phase") == "Running"
                and s.get("replicas") == size
                and s
            ),
        )
        assert st["readyText"] == f"{size}/{size}" and st["restarts"] == 0
        assert len(jobs.live_pods(core, namespace, "llm")) == size
    assert st["resizes"] == 2 and st["admission"]["replicas"] == 1
    reasons = jobs.reasons_once(core, namespace, "llm", "Resized", count=2)
    assert (
        reasons.count("Resized") == 2 and "WorkerFailed" not in reasons and "PodLost" not in reasons
    )
