"""The operator under faults, each by the scenario that shows it: its status write refused, killed
between recording a decision and acting on it, the API server restarted under a job deleted and
created again, started while the API server is down, every node's heartbeat stopped at once, two
operators without peering, a namespace deleted under running jobs."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator

from kubernetes import client

from distml.localcluster import faults
from distml.localcluster.nodes import KWOK_ANNOTATION

from . import jobs
from .conftest import OperatorProcess
from .helpers import nodes_usable, settled, wait_for

GEN = "distml.io/restart-generation"


@contextlib.contextmanager
def status_writes_denied(cluster, custom, namespace: str, job: str) -> Iterator[None]:
    """A ValidatingAdmissionPolicy refuses every write to the namespace's TrainingJob statuses
    (as a webhook or RBAC might, for a few seconds), in force once the test's own write is
    refused."""
    name = f"deny-status-{namespace}"
    admission = client.AdmissionregistrationV1Api(custom.api_client)
    admission.create_validating_admission_policy({
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": ["distml.io"], "apiVersions": ["*"], "operations": ["UPDATE"],
                "resources": ["trainingjobs/status"]}]},
            "validations": [{"expression": "false", "message": "status writes are refused"}],
        },
    })  # fmt: skip
    admission.create_validating_admission_policy_binding({
        "metadata": {"name": name},
        "spec": {
            "policyName": name, "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {
                "matchLabels": {"kubernetes.io/metadata.name": namespace}}},
        },
    })  # fmt: skip

    def refused() -> bool:
        try:
            custom.patch_namespaced_custom_object_status(
                jobs.GROUP, jobs.VERSION, namespace, jobs.PLURAL, job,
                {"status": {"message": jobs.status(custom, namespace, job).get("message")}},
            )  # fmt: skip
        except client.ApiException as err:
            return "status writes are refused" in (err.body or "")
        return False

    try:
        wait_for("the policy to refuse status writes", refused, timeout=30, every=0.5)
        yield
    finally:
        admission.delete_validating_admission_policy_binding(name)
        admission.delete_validating_admission_policy(name)


def test_a_restart_is_recorded_before_the_failed_gang_is_touched(
    cluster, operator, core, custom, namespace, node_pool
):
    """With its status write refused, the operator deletes and creates nothing: the evidence of
    the failure stays until the restart is written down, and then the restart happens once."""
    sel, _ = node_pool(2)
    jobs.create(custom, namespace, jobs.training_job("llm", 2, 8, sel))
    first = jobs.running_pods(core, namespace, "llm", 2)
    jobs.wait_phase(custom, namespace, "llm", "Running")
    with status_writes_denied(cluster, custom, namespace, "llm"):
        errors = operator.value("distml_reconcile_errors_total")
        faults.exit_pod(cluster, namespace, first[0].metadata.name, 137)
        wait_for(
            "the operator to try to record the restart, twice",
            lambda: operator.value("distml_reconcile_errors_total") >= errors + 2,
            timeout=30,
        )
        pods = {p.metadata.name: p for p in jobs.pods(core, namespace, "llm")}
        assert sorted(pods) == sorted(p.metadata.name for p in first)  # none new, none gone
        assert all(p.metadata.deletion_timestamp is None for p in pods.values())
        assert pods[first[0].metadata.name].status.phase == "Failed"
        assert jobs.status(custom, namespace, "llm")["phase"] == "Running"
    second = jobs.running_pods(core, namespace, "llm", 2, gen=1)
    st = jobs.wait_phase(custom, namespace, "llm", "Running")
    assert st["restarts"] == 1 and st["restartGeneration"] == 1
    assert {p.metadata.name for p in second}.isdisjoint(pods)  # a new rendezvous, new names
    assert jobs.reasons_once(core, namespace, "llm", "WorkerFailed").count("WorkerFailed") == 1


def test_killed_right_after_recording_a_restart_the_next_operator_carries_it_out(
    cluster, operator, chart_kubeconfig, core, custom, namespace, node_pool
):
    sel, _ = node_pool(2)
    operator.stop()
    doomed = OperatorProcess(
        chart_kubeconfig, cluster.logs / "operator-failpoint.log",
        DISTML_FAILPOINTS="after-status-write:Restarting",
    )  # fmt: skip
    try:
        doomed.start()
        jobs.create(custom, namespace, jobs.training_job("llm", 2, 8, sel))
        first = jobs.running_pods(core, namespace, "llm", 2)
        faults.exit_pod(cluster, namespace, first[0].metadata.name, 137)
        wait_for("the operator to die after recording the restart", lambda: doomed.proc.poll())
        st = jobs.status(custom, namespace, "llm")
        assert (st["phase"], st["restarts"], st["restartGeneration"]) == ("Restarting", 1, 1)
        # It died before acting: the old generation is all there.
        live = jobs.live_pods(core, namespace, "llm")
        assert sorted(p.metadata.name for p in live) == sorted(p.metadata.name for p in first)
    finally:
        doomed.kill()
        operator.start()
    jobs.running_pods(core, namespace, "llm", 2, gen=1)
    st = jobs.wait_phase(custom, namespace, "llm", "Running")
    assert (st["restarts"], st["restartGeneration"]) == (1, 1)  # carried out, not counted twice
    assert all(p.metadata.labels[GEN] == "1" for p in jobs.live_pods(core, namespace, "llm"))


def test_a_job_recreated_across_an_api_server_restart_never_waits_on_its_predecessor(
    cluster, operator, core, custom, namespace, node_pool
):
    """The garbage collector misses the old incarnation's pods and Service (here: their owner
    references are gone, as when its graph lost the deletion); the operator deletes them itself
    and the job created again under the same name runs."""
    sel, _ = node_pool(2)
    jobs.create(custom, namespace, jobs.training_job("llm", 2, 8, sel))
    old = jobs.running_pods(core, namespace, "llm", 2)
    unowned = [{"op": "remove", "path": "/metadata/ownerReferences"}]
    for pod in old:
        core.patch_namespaced_pod(pod.metadata.name, namespace, unowned)
    core.patch_namespaced_service("llm", namespace, unowned)
    swept = operator.value("distml_orphans_deleted_total")
    cluster.start_process("kube-apiserver", cluster.stop_process("kube-apiserver"))
    jobs.delete(custom, namespace, "llm")
    t0 = time.monotonic()
    jobs.create(custom, namespace, jobs.training_job("llm", 2, 8, sel))
    uid = jobs.get(custom, namespace, "llm")["metadata"]["uid"]

    def ours(running: bool):
        pods = [p for p in jobs.live_pods(core, namespace, "llm")
                if (p.metadata.owner_references or [None])[0] and
                p.metadata.owner_references[0].uid == uid]  # fmt: skip
        return len(pods) == 2 and all(p.status.phase == "Running" or not running for p in pods)

    # The operator's part: the new job's pods created past the orphans. Scheduling them is the
    # scheduler's, which can take a minute to act again after an API server restart.
    jobs.wait_reporting(custom, namespace, "llm", "the new job's 2 pods created",
                        lambda: ours(running=False), timeout=45)  # fmt: skip
    took = time.monotonic() - t0
    wait_for("the new job's 2 pods Running", lambda: ours(running=True), timeout=180)
    assert {p.metadata.uid for p in old}.isdisjoint(p.metadata.uid for p in jobs.pods(
        core, namespace, "llm"))  # fmt: skip
    svc = wait_for(
        "the new job's Service",
        lambda: (
            (s := core.read_namespaced_service("llm", namespace)).metadata.owner_references and s
        ),
    )
    assert svc.metadata.owner_references[0].uid == uid
    assert operator.value("distml_orphans_deleted_total") >= swept + 3
    jobs.reasons_once(core, namespace, "llm", "WaitingForPredecessor")
    print(f"job recreated -> its pods created past its predecessor's orphans: {took:.1f}s")
    settled(core, namespace)


def test_after_an_api_outage_the_operator_is_not_ready_then_reconciles_within_seconds(
    cluster, operator, core, custom, namespace, node_pool
):
    """Both ways: an operator that lives through the outage, and one started while the API
    server is down. Measured: from the API server answering again to the operator ready, and
    to a job created then having its pods (what the scheduler and nodes do after that is theirs:
    their own clients back off after an outage)."""
    sel, _ = node_pool(2)
    figures = {}
    for how in ("lived through", "started during"):
        name = "lived" if how == "lived through" else "started"
        if how == "started during":
            operator.stop()
        argv = cluster.stop_process("kube-apiserver")
        try:
            if how == "started during":
                operator.start(wait_ready=False)
            wait_for(
                "the operator to say it is not ready",
                lambda: operator.probe()[0] == 503,
                timeout=30,
            )
            assert operator.probe("/healthz")[0] == 200  # alive, just not ready
            time.sleep(5)  # an outage of some seconds; the operator keeps asking
        finally:
            cluster.start_process("kube-apiserver", argv)
        back = time.monotonic()
        jobs.create(custom, namespace, jobs.training_job(name, 1, 8, sel))
        wait_for("the operator to be ready", lambda: operator.probe()[0] == 200, timeout=30)
        ready = time.monotonic() - back
        # The simulated nodes' heartbeats back off while the API server is away; after two
        # outages close together the node lifecycle controller can mark them NotReady, and the
        # job rightly waits for them. The operator's part is measured from when they are usable.
        wait_for("the pool's nodes usable again", lambda: nodes_usable(core, sel, 2), 120)
        usable = time.monotonic() - back
        jobs.wait_reporting(custom, namespace, name, f"{name}'s pod created",
                            lambda n=name: jobs.pods(core, namespace, n), timeout=30)  # fmt: skip
        figures[how] = (ready, usable, time.monotonic() - back)
        settled(core, namespace)
        jobs.wait_phase(custom, namespace, name, "Running", timeout=60)
    for how, (ready, usable, created) in figures.items():
        print(f"API back -> operator ready {ready:.1f}s, nodes usable {usable:.1f}s, a new job's"
              f" pods created {created:.1f}s ({how} the outage)")  # fmt: skip


def test_every_heartbeat_stopping_at_once_is_an_outage_not_node_loss(
    cluster, operator, core, custom, namespace, node_pool
):
    sel, _ = node_pool(2)
    jobs.create(custom, namespace, jobs.training_job("steady", 2, 8, sel))
    before = {p.metadata.name for p in jobs.running_pods(core, namespace, "steady", 2)}
    restarts = operator.value("distml_job_restarts_total")
    kwok = [
        n.metadata.name
        for n in core.list_node().items
        if (n.metadata.annotations or {}).get(KWOK_ANNOTATION) == "fake"
    ]
    try:
        for node in kwok:
            faults.node_down(cluster, node)
        st = jobs.wait_reporting(
            custom,
            namespace,
            "steady",
            "the job to report the disruption",
            lambda: (
                (s := jobs.status(custom, namespace, "steady")).get("reason") == "NodesDisrupted"
                and s
            ),
            timeout=60,
        )
        assert st["phase"] == "Running" and st.get("restarts", 0) == 0
        assert "NotReady together" in st["message"]
        assert operator.value("distml_nodes_disrupted") >= 2
        assert {p.metadata.name for p in jobs.live_pods(core, namespace, "steady")} == before
    finally:
        for node in kwok:
            faults.node_up(cluster, node)
    st = wait_for(
        "the job to say it runs again",
        lambda: (s := jobs.status(custom, namespace, "steady")).get("reason") == "Running" and s,
        timeout=60,
    )
    assert st.get("restarts", 0) == 0 and st["restartGeneration"] == 0
    assert {p.metadata.name for p in jobs.live_pods(core, namespace, "steady")} == before
    assert operator.value("distml_job_restarts_total") == restarts
    reasons = jobs.reasons_once(core, namespace, "steady", "NodesDisrupted")
    assert reasons.count("NodesDisrupted") == 1 and "WorkerFailed" not in reasons


def test_two_operators_without_peering_post_each_transition_once(
    cluster, operator, chart_kubeconfig, core, custom, namespace, node_pool
):
    """As in a Deployment rollout: both reconcile every job; a status write decided from an
    out-of-date job is refused, so each transition is made, and announced, once."""
    sel, _ = node_pool(2)
    second = OperatorProcess(chart_kubeconfig, cluster.logs / "operator-second.log")
    second.start()
    try:
        jobs.create(custom, namespace, jobs.training_job("twice", 2, 8, sel))
        first = jobs.running_pods(core, namespace, "twice", 2)
        faults.exit_pod(cluster, namespace, first[0].metadata.name, 137)
        for pod in jobs.running_pods(core, namespace, "twice", 2, gen=1):
            faults.exit_pod(cluster, namespace, pod.metadata.name, 0)
        st = jobs.wait_phase(custom, namespace, "twice", "Succeeded")
        # Both have reconciled the finished job (their phase gauges say so): any second post of
        # a transition would have gone out by now.
        wait_for(
            "both operators to see it Succeeded",
            lambda: all(
                op.value("distml_trainingjobs", phase="Succeeded") >= 1 for op in (operator, second)
            ),
        )
    finally:
        second.stop()
    assert st["restarts"] == 1
    reasons = jobs.reasons_once(core, namespace, "twice", "Succeeded")
    assert reasons.count("Succeeded") == 1 and reasons.count("WorkerFailed") == 1, reasons
    assert reasons.count("Admitted") == 2  # one per generation
    names = sorted(p.metadata.name for p in jobs.pods(core, namespace, "twice"))
    assert names == ["twice-worker-0-1", "twice-worker-1-1"]  # the finished generation's, once


def test_deleting_a_namespace_under_running_jobs_restarts_and_retries_nothing(
    cluster, operator, core, custom, node_pool
):
    sel, _ = node_pool(2)
    ns = f"t-doomed-{uuid.uuid4().hex[:5]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    for name in ("a", "b"):
        jobs.create(custom, ns, jobs.training_job(name, 1, 8, sel))
    for name in ("a", "b"):
        jobs.running_pods(core, ns, name, 1)
        jobs.wait_phase(custom, ns, name, "Running")
    names = ("distml_job_restarts_total", "distml_reconcile_errors_total",
             "distml_events_failed_total", "distml_pods_created_total")  # fmt: skip
    before = {m: operator.value(m) for m in names}
    log_start = operator.log.stat().st_size
    core.delete_namespace(ns)
    wait_for(
        f"namespace {ns} gone",
        lambda: ns not in {n.metadata.name for n in core.list_namespace().items},
        timeout=120,
    )
    assert {m: operator.value(m) for m in names} == before
    with open(operator.log, "rb") as f:
        f.seek(log_start)
        noise = [li for li in f.read().decode(errors="replace").splitlines() if ns in li]
    assert not noise, noise[:5]
