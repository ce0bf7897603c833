"""TrainingJob end to end on the real control plane, with the operator as a real process: gang
start, restarts by policy, lost nodes, deadlines, TTL, suspend, and operator restarts."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from distml.localcluster import faults

from . import jobs
from .helpers import wait_for

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("operator")


running_pods = jobs.running_pods


def test_job_starts_as_a_gang_reports_truthfully_and_succeeds(
    cluster, core, custom, namespace, node_pool
):
    sel, _ = node_pool(2)
    jobs.create(custom, namespace, jobs.training_job("ddp", 2, 8, sel))
    pods = running_pods(core, namespace, "ddp", 2)
    st = jobs.wait_phase(custom, namespace, "ddp", "Running")
    assert st["readyText"] == "2/2" and st["gpus"] == 16
    assert sorted(r["node"] for r in st["ranks"]) == sorted(p.spec.node_name for p in pods)
    svc = core.read_namespaced_service("ddp", namespace)
    assert svc.spec.cluster_ip == "None"
    env = {e.name: e.value for e in pods[0].spec.containers[0].env}
    assert env["PET_RDZV_ENDPOINT"] == f"ddp-0.ddp.{namespace}.svc.cluster.local:29400"
    # Cluster DNS names rank 0, the rendezvous host, and no other rank (dnsNames: Rank0): the
    # Service selects rank 0 alone, so no other pod can become one of its endpoints.
    assert svc.spec.selector["distml.io/rank"] == "0"
    assert dns_hostnames(core, namespace, "ddp", 1) == ["ddp-0"]

    faults.exit_pod(cluster, namespace, pods[0].metadata.name, 0)
    st = wait_for(  # the operator has seen the first worker finish...
        "one worker counted as finished",
        lambda: (s := jobs.status(custom, namespace, "ddp")).get("succeeded") == 1 and s,
    )
    assert st["phase"] == "Running"  # ...and the job goes on: the other worker still runs
    faults.exit_pod(cluster, namespace, pods[1].metadata.name, 0)
    st = jobs.wait_phase(custom, namespace, "ddp", "Succeeded")
    assert st["succeeded"] == 2 and st["completionTime"]
    assert {c["type"]: c["status"] for c in st["conditions"]}["Succeeded"] == "True"
    assert jobs.reasons_once(core, namespace, "ddp", "Succeeded")[-1] == "Succeeded"


def dns_hostnames(core, ns: str, service: str, n: int) -> list[str]:
    """The hostnames in the Service's EndpointSlices (what cluster DNS serves), once there are n."""
    discovery = client.DiscoveryV1Api(core.api_client)

    def names():
        slices = discovery.list_namespaced_endpoint_slice(
            ns, label_selector=f"kubernetes.io/service-name={service}"
        ).items
        found = sorted(e.hostname for s in slices for e in s.endpoints or [])
        return found if len(found) >= n else None

    return wait_for(f"{n} DNS names for Service {service}", names, timeout=30)


def test_all_workers_get_dns_names_when_asked_and_the_choice_is_fixed(
    core, custom, namespace, node_pool
):
    sel, _ = node_pool(2)
    jobs.create(custom, namespace, jobs.training_job("mpi", 2, 8, sel, dnsNames="AllWorkers"))
    running_pods(core, namespace, "mpi", 2)
    assert dns_hostnames(core, namespace, "mpi", 2) == ["mpi-0", "mpi-1"]
    with pytest.raises(client.ApiException) as err:
        jobs.patch_spec(custom, namespace, "mpi", {"dnsNames": "Rank0"})
    assert err.value.status == 422
    message = json.loads(err.value.body)["message"]
    assert "spec.dnsNames cannot change once the job exists" in message


def test_gang_waits_queued_without_creating_a_pod_until_it_fits(
    cluster, core, custom, namespace, node_pool
):
    sel, _ = node_pool(2)
    jobs.create(custom, namespace, jobs.training_job("big", 3, 8, sel))
    wait_for(
        "Queued with room for 2 of 3",
        lambda: "room for 2 now" in jobs.status(custom, namespace, "big").get("message", ""),
    )
    assert jobs.status(custom, namespace, "big")["phase"] == "Queued"
    # The decision is posted as an Event after it is recorded, and pods would only follow an
    # Admitted one: once the Event is there, no pod can be on its way.
    jobs.reasons_once(core, namespace, "big", "InsufficientGPUs")
    assert jobs.pods(core, namespace, "big") == []

    # A third node joins the pool: the whole gang is admitted at once.
    from distml.localcluster.nodes import ClusterShape, NodeShape, render_gpu_node

    extra = render_gpu_node(ClusterShape(name_prefix=f"extra-{namespace[-5:]}"), NodeShape(), 0)
    extra["metadata"]["labels"].update(sel)
    core.create_node(extra)
    try:
        running_pods(core, namespace, "big", 3)
        jobs.wait_phase(custom, namespace, "big", "Running")
    finally:
        core.delete_node(extra["metadata"]["name"])


def test_impossible_request_is_explained_not_crash_looped(core, custom, namespace):
    jobs.create(custom, namespace, jobs.training_job("huge", 1, 64))
    st = jobs.wait_phase(custom, namespace, "huge", "Queued")
    assert "asks for 64 nvidia.com/gpu but the largest node has 8" in st["message"]
    jobs.reasons_once(core, namespace, "huge", "NoNodeFits")


def test_retryable_exit_restarts_the_group_and_application_error_fails(
    cluster, core, custom, namespace, node_pool
):
    sel, _ = node_pool(2)
    jobs.create(custom, namespace, jobs.training_job("flaky", 2, 8, sel))
    first = running_pods(core, namespace, "flaky", 2)
    faults.exit_pod(cluster, namespace, first[1].metadata.name, 137)
    second = running_pods(core, namespace, "flaky", 2, gen=1)
    st = jobs.wait_phase(custom, namespace, "flaky", "Running")
    assert st["restarts"] == 1 and st["restartGeneration"] == 1
    assert {p.metadata.name for p in second}.isdisjoint({p.metadata.name for p in first})

    faults.exit_pod(cluster, namespace, second[0].metadata.name, 3)
    st = jobs.wait_phase(custom, namespace, "flaky", "Failed")
    assert "exited with code 3" in st["message"] and "application error" in st["message"]
    reasons = jobs.reasons_once(core, namespace, "flaky", "ApplicationError")
    assert "WorkerFailed" in reasons and reasons[-1] == "ApplicationError"
    # cleanPodPolicy Running: the other worker is stopped, the failed one kept for its logs.
    wait_for(
        "only the failed pod left",
        lambda: (
            [p.metadata.name for p in jobs.live_pods(core, namespace, "flaky")]
            == [second[0].metadata.name]
        ),
        timeout=30,
    )


def test_lost_node_restarts_the_group_elsewhere(cluster, core, custom, namespace, node_pool):
    sel, _ = node_pool(3)
    jobs.create(custom, namespace, jobs.training_job("resilient", 2, 8, sel))
    first = running_pods(core, namespace, "resilient", 2)
    victim = first[0].spec.node_name
    t0 = time.monotonic()
    faults.node_down(cluster, victim)
    second = running_pods(core, namespace, "resilient", 2, gen=1)
    took = time.monotonic() - t0
    assert victim not in {p.spec.node_name for p in second}
    st = jobs.status(custom, namespace, "resilient")
    assert st["restarts"] == 1
    # The pod on the dead node cannot be stopped by a kubelet: it was removed, not left behind.
    wait_for(
        "the lost pod gone",
        lambda: (
            first[0].metadata.name
            not in {p.metadata.name for p in jobs.pods(core, namespace, "resilient")}
        ),
        timeout=30,
    )
    print(f"node down -> group Running again elsewhere: {took:.1f}s")


def test_operator_killed_mid_creation_makes_no_duplicate(
    cluster, operator, core, custom, namespace, node_pool
):
    sel, _ = node_pool(4)
    jobs.create(custom, namespace, jobs.training_job("wide", 32, 1, sel))
    wait_for("some pods created", lambda: jobs.pods(core, namespace, "wide"), every=0.02)
    operator.kill()
    operator.start()
    running_pods(core, namespace, "wide", 32)
    names = [p.metadata.name for p in jobs.pods(core, namespace, "wide")]
    assert sorted(names) == sorted(f"wide-worker-{r}-0" for r in range(32))
    assert jobs.wait_phase(custom, namespace, "wide", "Running")["restarts"] == 0


def test_active_deadline_fails_a_running_job(core, custom, namespace, node_pool):
    sel, _ = node_pool(1)
    jobs.create(
        custom,
        namespace,
        jobs.training_job("slow", 1, 8, sel, runPolicy={"activeDeadlineSeconds": 3}),
    )
    st = jobs.wait_phase(custom, namespace, "slow", "Failed", timeout=30)
    assert st["conditions"][-1]["reason"] == "DeadlineExceeded"
    wait_for("pods stopped", lambda: not jobs.live_pods(core, namespace, "slow"), timeout=30)


def test_finished_job_is_deleted_after_its_ttl_and_stays_deleted(
    cluster, core, custom, namespace, node_pool
):
    sel, _ = node_pool(1)
    jobs.create(
        custom,
        namespace,
        jobs.training_job("brief", 1, 8, sel, runPolicy={"ttlSecondsAfterFinished": 2}),
    )
    (pod,) = running_pods(core, namespace, "brief", 1)
    faults.exit_pod(cluster, namespace, pod.metadata.name, 0)
    jobs.wait_phase(custom, namespace, "brief", "Succeeded")

    def gone():
        try:
            jobs.get(custom, namespace, "brief")
            return False
        except client.ApiException as err:
            return err.status == 404

    wait_for("the job deleted", gone, timeout=30)
    wait_for("its pods gone", lambda: not jobs.live_pods(core, namespace, "brief"), timeout=30)
    # The operator has reconciled since (its deletion was the operator's own act, and the
    # namespace's next job is handled): the deleted job does not come back.
    jobs.create(custom, namespace, jobs.training_job("after", 1, 8, sel))
    jobs.wait_phase(custom, namespace, "after", "Running")
    assert gone()


def test_suspend_releases_gpus_and_resume_starts_again(core, custom, namespace, node_pool):
    sel, _ = node_pool(1)
    jobs.create(custom, namespace, jobs.training_job("pausable", 1, 8, sel))
    running_pods(core, namespace, "pausable", 1)
    jobs.patch_spec(custom, namespace, "pausable", {"runPolicy": {"suspend": True}})
    jobs.wait_phase(custom, namespace, "pausable", "Suspended")
    wait_for("pods gone", lambda: not jobs.live_pods(core, namespace, "pausable"), timeout=30)
    jobs.patch_spec(custom, namespace, "pausable", {"runPolicy": {"suspend": False}})
    running_pods(core, namespace, "pausable", 1, gen=1)
    assert jobs.wait_phase(custom, namespace, "pausable", "Running")["restarts"] == 0


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"replicas": 0}, "spec.replicas"),
        ({"restartPolicy": "Sometimes"}, 'spec.restartPolicy: Unsupported value: "Sometimes"'),
        (
            {"elastic": {"minReplicas": 3, "maxReplicas": 4}},
            "spec.replicas must be between spec.elastic.minReplicas and maxReplicas",
        ),
        ({"parallelism": {"pipeline": 3}}, "must be divisible by spec.parallelism.pipeline"),
        (
            {
                "elastic": {"minReplicas": 2, "maxReplicas": 4},
                "nprocPerReplica": 1,
                "parallelism": {"pipeline": 2},
            },
            "an elastic job with spec.parallelism needs nprocPerReplica",
        ),
        ({"runPolicy": {"cleanPodPolicy": "Some"}}, "spec.runPolicy.cleanPodPolicy"),
        ({"dnsNames": "Everyone"}, 'spec.dnsNames: Unsupported value: "Everyone"'),
    ],
)
def test_api_server_refuses_bad_specs_naming_the_field(custom, namespace, spec, message):
    body = jobs.training_job("bad", 2, 8)
    body["spec"].update(spec)
    with pytest.raises(client.ApiException) as err:
        jobs.create(custom, namespace, body)
    assert err.value.status == 422 and message in json.loads(err.value.body)["message"]


def test_pod_template_is_validated_by_the_kubernetes_schema(custom, namespace):
    body = jobs.training_job("bad", 1, 0)
    body["spec"]["template"]["spec"]["containers"][0]["ports"] = [{"containerPort": "http"}]
    with pytest.raises(client.ApiException) as err:
        jobs.create(custom, namespace, body)
    assert (
        "spec.template.spec.containers[0].ports[0].containerPort"
        in json.loads(err.value.body)["message"]
    )


@pytest.mark.parametrize(
    "example", sorted((REPO / "examples").glob("*.yaml")), ids=lambda p: p.name
)
def test_examples_are_accepted_and_run(cluster, custom, namespace, example):
    doc = yaml.safe_load(example.read_text())
    name, kind = doc["metadata"]["name"], doc["kind"]
    plural = {"TrainingJob": "trainingjobs", "ServingJob": "servingjobs"}[kind]
    out = cluster.kubectl("apply", "-n", namespace, "-f", str(example))
    assert f"{kind.lower()}.distml.io/{name} created" in out

    def status() -> dict:
        obj = custom.get_namespaced_custom_object(jobs.GROUP, jobs.VERSION, namespace, plural,
                                                  name)  # fmt: skip
        return obj.get("status") or {}

    st = wait_for(f"{name} taken up by the operator", lambda: status().get("phase"), timeout=30)
    started = {"TrainingJob": ("Queued", "Creating", "Running"),
               "ServingJob": ("Pending", "Progressing", "Degraded", "Available")}  # fmt: skip
    assert st in started[kind]
    assert status().get("reason") != "PodPolicyViolation", status()["message"]


def test_operator_metrics_count_what_a_reconcile_did(operator, core, custom, namespace, node_pool):
    sel, _ = node_pool(1)
    names = (
        "distml_pods_created_total",
        "distml_reconcile_duration_seconds_count",
        "distml_job_time_to_running_seconds_count",
        "distml_job_queue_wait_seconds_count",
    )
    before = {n: operator.value(n) for n in names}  # fmt: skip
    jobs.create(custom, namespace, jobs.training_job("counted", 2, 4, sel))
    jobs.wait_phase(custom, namespace, "counted", "Running")
    after = wait_for(
        "the operator to count the start",
        lambda: (a := {n: operator.value(n) for n in names})[names[2]] > before[names[2]] and a,
    )
    assert after["distml_pods_created_total"] - before["distml_pods_created_total"] == 2
    assert after["distml_reconcile_duration_seconds_count"] > before[names[1]]
    assert after["distml_job_queue_wait_seconds_count"] == before[names[3]] + 1
    assert operator.value("distml_trainingjobs", phase="Running") >= 1
    assert operator.value("distml_gpus_admitted") >= 8


def test_kubectl_explain_describes_the_fields(cluster, crds):
    spec = cluster.kubectl("explain", "trainingjobs.spec")
    assert "What to run" in spec and "<empty>" not in spec
    assert "The fewest pods" in cluster.kubectl("explain", "trainingjobs.spec.elastic.minReplicas")
