"""ServingJob on the real control plane, with the operator as a real process and KWOK nodes:
replicas behind a Service of Ready replicas, kubectl scale, rolling updates within their bounds,
failed replicas replaced, one GPU ledger with TrainingJobs, and bad specs refused by the API."""

from __future__ import annotations

import threading
import time

import pytest
from kubernetes import client

from distml.api.serving import serving_job_manifest
from distml.localcluster import faults

from . import jobs
from .helpers import wait_for

pytestmark = pytest.mark.usefixtures("operator")
GROUP, VERSION, PLURAL, KIND = jobs.GROUP, jobs.VERSION, jobs.SERVING, "ServingJob"
create, status = jobs.create_serving, jobs.serving_status


def serving_job(name: str, replicas: int, sel: dict, gpus: int = 1, image: str = "v1",
                **spec) -> dict:  # fmt: skip
    template = {
        "spec": {
            "nodeSelector": sel,
            "containers": [{"name": "server", "image": f"distml-runtime:{image}"}],
        }
    }
    return serving_job_manifest(name, replicas, gpusPerReplica=gpus, template=template, **spec)


def wait_status(custom, ns: str, name: str, what: str, ok, timeout: float = 60) -> dict:
    return wait_for(what, lambda: (s := status(custom, ns, name)) and ok(s) and s, timeout)


def available(n: int):
    return lambda s: s.get("phase") == "Available" and s.get("readyReplicas") == n


def replicas(core, ns: str, name: str) -> list:
    sel = f"distml.io/job-name={name},distml.io/owner-kind=ServingJob"
    return [p for p in core.list_namespaced_pod(ns, label_selector=sel).items
            if p.metadata.deletion_timestamp is None]  # fmt: skip


def endpoints(api, ns: str, name: str) -> set[str]:
    """The addresses the Service sends traffic to: ready endpoints of its EndpointSlices."""
    slices = client.DiscoveryV1Api(api).list_namespaced_endpoint_slice(
        ns, label_selector=f"kubernetes.io/service-name={name}"
    )
    return {
        a
        for s in slices.items
        for e in s.endpoints or []
        if e.conditions is None or e.conditions.ready is not False
        for a in e.addresses
    }


def test_replicas_serve_behind_a_service_of_their_ready_pods(api, core, custom, namespace,
                                                             node_pool):  # fmt: skip
    sel, _ = node_pool(2)
    create(custom, namespace, serving_job("digits", 3, sel))
    st = wait_status(custom, namespace, "digits", "3 replicas Available", available(3))
    assert st["readyText"] == "3/3" and st["updatedReplicas"] == 3 and st["gpus"] == 3
    assert st["url"] == f"http://digits.{namespace}.svc:8000"
    conds = {c["type"]: (c["status"], c["reason"]) for c in st["conditions"]}
    assert conds["Available"] == ("True", "MinimumReplicasAvailable")
    assert conds["Degraded"][0] == "False"
    pods = replicas(core, namespace, "digits")
    assert len(pods) == 3 and {r["pod"] for r in st["replicaStatus"]} == {
        p.metadata.name for p in pods
    }
    svc = core.read_namespaced_service("digits", namespace)
    assert svc.spec.type == "ClusterIP" and svc.spec.cluster_ip not in (None, "None")
    assert svc.metadata.owner_references[0].kind == "ServingJob"
    wait_for(
        "the 3 replicas as the Service's endpoints",
        lambda: endpoints(api, namespace, "digits") == {p.status.pod_ip for p in pods},
    )
    probe = pods[0].spec.containers[0].readiness_probe
    assert probe.http_get.path == "/v2/health/ready"
    jobs.reasons_once(core, namespace, "digits", "ReplicaCreated", kind=KIND)


def test_kubectl_scale_grows_and_shrinks_it_through_the_scale_subresource(
    cluster, api, core, custom, namespace, node_pool
):
    sel, _ = node_pool(1)
    create(custom, namespace, serving_job("digits", 1, sel, rollout={"drainSeconds": 1}))
    wait_status(custom, namespace, "digits", "1 replica Available", available(1))
    cluster.kubectl("scale", "-n", namespace, "sj/digits", "--replicas=3")
    wait_status(custom, namespace, "digits", "3 replicas Available", available(3))
    scale = custom.get_namespaced_custom_object_scale(GROUP, VERSION, namespace, PLURAL, "digits")
    assert scale["status"]["replicas"] == 3 and "distml.io/job-name=digits" in scale["status"][
        "selector"]  # fmt: skip
    cluster.kubectl("scale", "-n", namespace, "sj/digits", "--replicas=1")
    wait_for("1 replica left", lambda: len(replicas(core, namespace, "digits")) == 1, 30)
    wait_for("1 endpoint left", lambda: len(endpoints(api, namespace, "digits")) == 1, 30)
    got = jobs.reasons_once(core, namespace, "digits", "ReplicaStopped", count=2, kind=KIND)
    assert got.count("Draining") == 2
    table = cluster.kubectl("get", "sj", "-n", namespace)
    header = table.splitlines()[0].split()
    assert header[:5] == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "PHASE"], table


class Watch:
    """Samples the job's pods and endpoints while something happens to it: the most pods that
    held GPUs at once, and the fewest Ready endpoints."""

    def __init__(self, api, core, ns: str, name: str) -> None:
        self.api, self.core, self.ns, self.name = api, core, ns, name
        self.most_pods, self.fewest_endpoints, self.samples = 0, 10**6, 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        sel = f"distml.io/job-name={self.name},distml.io/owner-kind=ServingJob"
        try:
            while not self._stop.is_set():
                pods = self.core.list_namespaced_pod(self.ns, label_selector=sel).items
                holding = [p for p in pods if p.status.phase not in ("Succeeded", "Failed")
                           and p.metadata.deletion_timestamp is None]  # fmt: skip
                ready = len(endpoints(self.api, self.ns, self.name))
                self.most_pods = max(self.most_pods, len(holding))
                self.fewest_endpoints = min(self.fewest_endpoints, ready)
                self.samples += 1
                time.sleep(0.1)
        except BaseException as err:  # the test fails on it, not the thread
            self.error = err

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.error is not None:
            raise self.error
        assert self.samples >= 5, f"only {self.samples} samples"
        print(f"most pods at once {self.most_pods}, fewest endpoints {self.fewest_endpoints}, "
              f"{self.samples} samples")  # fmt: skip


@pytest.mark.parametrize(("surge", "unavailable"), [(1, 0), (0, 1)])
def test_a_template_change_rolls_out_within_its_bounds(api, core, custom, namespace, node_pool,
                                                       surge, unavailable):  # fmt: skip
    sel, _ = node_pool(2)
    rollout = {"maxSurge": surge, "maxUnavailable": unavailable, "drainSeconds": 1}
    create(custom, namespace, serving_job("digits", 3, sel, rollout=rollout))
    first = wait_status(custom, namespace, "digits", "3 replicas Available", available(3))
    wait_for("3 endpoints", lambda: len(endpoints(api, namespace, "digits")) == 3)
    with Watch(api, core, namespace, "digits") as watch:
        body = serving_job("digits", 3, sel, image="v2", rollout=rollout)
        custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            "digits",
            {"spec": {"template": body["spec"]["template"]}},
        )
        st = wait_status(
            custom, namespace, "digits", "the rollout complete",
            lambda s: available(3)(s) and s["currentRevision"] != first["currentRevision"]
            and all(r["revision"] == s["currentRevision"] for r in s["replicaStatus"]),
            timeout=90,
        )  # fmt: skip
        wait_for("3 endpoints of the new revision",
                 lambda: endpoints(api, namespace, "digits") == {
                     p.status.pod_ip for p in replicas(core, namespace, "digits")})  # fmt: skip
    assert st["updateRevision"] == st["currentRevision"] and st["updatedReplicas"] == 3
    images = {p.spec.containers[0].image for p in replicas(core, namespace, "digits")}
    assert images == {"distml-runtime:v2"}
    assert watch.most_pods <= 3 + surge, watch.most_pods
    assert watch.fewest_endpoints >= 3 - unavailable, watch.fewest_endpoints
    got = jobs.reasons_once(core, namespace, "digits", "RolloutComplete", kind=KIND)
    assert got.count("RolloutStarted") == 1 and got.count("Draining") == 3


def test_a_failed_replica_is_replaced_and_reported(cluster, core, custom, namespace, node_pool):
    sel, _ = node_pool(1)
    create(custom, namespace, serving_job("digits", 2, sel))
    wait_status(custom, namespace, "digits", "2 replicas Available", available(2))
    victim = replicas(core, namespace, "digits")[0].metadata.name
    faults.exit_pod(cluster, namespace, victim, 137)
    st = wait_status(custom, namespace, "digits", "the failed replica replaced",
                     lambda s: s.get("replaced") == 1 and available(2)(s))  # fmt: skip
    names = {p.metadata.name for p in replicas(core, namespace, "digits")}
    assert victim not in names and len(names) == 2
    assert victim not in {r["pod"] for r in st["replicaStatus"]}
    events = core.list_namespaced_event(namespace, field_selector="reason=ReplicaFailed").items
    assert any(victim in e.message and "137" in e.message and e.type == "Warning" for e in events)


def test_serving_and_training_draw_from_one_gpu_ledger(core, custom, namespace, node_pool):
    sel, _ = node_pool(1, gpus=8)
    jobs.create(custom, namespace, jobs.training_job("train", 1, 6, sel))
    jobs.wait_phase(custom, namespace, "train", "Running")
    create(custom, namespace, serving_job("digits", 3, sel))
    st = wait_status(custom, namespace, "digits", "2 replicas and a wait for GPUs",
                     lambda s: s.get("readyReplicas") == 2 and s.get("reason") ==
                     "WaitingForGPUs")  # fmt: skip
    assert "free GPUs" in st["message"] and len(replicas(core, namespace, "digits")) == 2
    jobs.delete(custom, namespace, "train")
    wait_status(custom, namespace, "digits", "the third replica once training is gone",
                available(3))  # fmt: skip


def test_a_service_name_taken_by_someone_else_is_reported_until_it_is_free(
    api, core, custom, namespace, node_pool
):
    sel, _ = node_pool(1)
    theirs = {"metadata": {"name": "digits"}, "spec": {"ports": [{"port": 80}],
                                                       "selector": {"a": "b"}}}  # fmt: skip
    core.create_namespaced_service(namespace, theirs)
    create(custom, namespace, serving_job("digits", 1, sel))
    st = wait_status(custom, namespace, "digits", "CreateRefused",
                     lambda s: s.get("reason") == "CreateRefused")  # fmt: skip
    assert "Service digits already exists and is not owned by this job" in st["message"]
    assert st["phase"] == "Degraded"
    assert core.read_namespaced_service("digits", namespace).spec.selector == {"a": "b"}
    core.delete_namespaced_service("digits", namespace)
    wait_status(custom, namespace, "digits", "Available once the name is free", available(1))
    svc = core.read_namespaced_service("digits", namespace)
    assert svc.metadata.owner_references[0].kind == "ServingJob"


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"rollout": {"maxSurge": 0, "maxUnavailable": 0}}, "spec.rollout"),
        ({"model": {"storageUri": "s3://bucket/model"}}, "spec.model.storageUri"),
        ({"batching": {"maxBatchSize": 0}}, "spec.batching.maxBatchSize"),
        ({"replicas": -1}, "spec.replicas"),
        ({"template": {"spec": {"containers": []}}}, "spec.template.spec.containers"),
        ({"autoscaling": {"minReplicas": 3, "maxReplicas": 2, "target": 4}},
         "spec.autoscaling.minReplicas"),
        ({"autoscaling": {"maxReplicas": 2, "target": 0}}, "spec.autoscaling.target"),
        ({"autoscaling": {"maxReplicas": 2, "target": 1, "metric": "GPUTemperature"}},
         "spec.autoscaling.metric"),
        ({"pipeline": {"stages": 1}}, "spec.pipeline.stages"),
        ({"pipeline": {"stages": 4}}, "spec.pipeline.stages"),  # 3 layers
        ({"model": {"widths": [8, 8, 8]}, "pipeline": {"stages": 3, "boundaries": [3, 1]}},
         "spec.pipeline.boundaries"),
        ({"model": {"widths": [8, 8, 8]}, "pipeline": {"stages": 3, "boundaries": [2]}},
         "spec.pipeline.boundaries"),
        ({"model": {"widths": [8, 8]}, "pipeline": {"stages": 2, "boundaries": [3]}},
         "spec.pipeline.boundaries"),
        ({"gpusPerReplica": 3, "pipeline": {"stages": 2}}, "spec.gpusPerReplica"),
        ({"model": {"widths": []}}, "spec.model.widths"),
        ({"pipeline": {"stages": 2, "gpuMemory": "lots"}}, "spec.pipeline.gpuMemory"),
    ],
)  # fmt: skip
def test_bad_specs_are_refused_by_the_api_server_naming_the_field(custom, namespace, spec, field):
    body = serving_job_manifest("bad", 1)
    body["spec"].update(spec)
    with pytest.raises(client.ApiException) as err:
        create(custom, namespace, body)
    assert err.value.status == 422 and field in err.value.body, err.value.body
