"""The ServingJob planner: rendering, revisions, and the rolling update run to its end against a
small simulated cluster (pods start, turn Ready, stop) with its bounds checked at every step."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from distml import admission, labels, podstate
from distml.api.serving import ServingJobSpec
from distml.reconcile import Plan, Settings, World
from distml.servingjob import demand, plan_reconcile
from distml.servingjob.rendering import render_pod, render_service, revision

from .builders import at, make_node, stamp

Obj = dict[str, Any]
SETTINGS = Settings(queued_recheck_seconds=5)


def serving_job(replicas: int = 2, gpus: int = 1, **spec: Any) -> Obj:
    return {
        "apiVersion": "distml.io/v1alpha1",
        "kind": "ServingJob",
        "metadata": {
            "name": "sj",
            "namespace": "team",
            "uid": "uid-s",
            "generation": 1,
            "creationTimestamp": stamp(0),
        },
        "spec": {"replicas": replicas, "gpusPerReplica": gpus, **spec},
        "status": {},
    }


class Sim:
    """Applies plans as the API and kubelet would: creates pods (bound at once to their pinned
    node), turns them Ready `ready_after` seconds later, applies label patches, and deletes."""

    def __init__(self, job: Obj, nodes: list[Obj], ready_after: float = 2.0) -> None:
        self.job, self.nodes, self.ready_after = job, nodes, ready_after
        self.pods: dict[str, Obj] = {}
        self.born: dict[str, float] = {}
        self.t = 0.0
        self.others: list[Obj] = []  # GPU pods of other jobs
        self.gangs: list[admission.Gang] = []
        self.events: list[tuple[str, str]] = []
        self.peak_holding = 0
        self.min_ready_seen: int | None = None

    def world(self) -> World:
        for name, pod in self.pods.items():
            if self.t - self.born[name] >= self.ready_after and pod["status"]["phase"] == "Pending":
                pod["status"] = {
                    "phase": "Running",
                    "conditions": [{"type": "Ready", "status": "True"}],
                }
        pods = list(copy.deepcopy(self.pods).values())
        return World(
            job=copy.deepcopy(self.job),
            pods=pods,
            nodes=self.nodes,
            cluster_pods=[*pods, *self.others],
            now=at(self.t),
            gangs=self.gangs,
        )

    def step(self) -> Plan:
        plan = plan_reconcile(self.world(), SETTINGS)
        self.job["status"] = plan.status
        for obj in plan.create:
            if obj["kind"] == "Pod" and obj["metadata"]["name"] not in self.pods:
                pod = copy.deepcopy(obj)
                pin = admission.pinned_node(pod)
                pod["spec"]["nodeName"] = pin or self.nodes[0]["metadata"]["name"]
                pod["status"] = {"phase": "Pending"}
                self.pods[pod["metadata"]["name"]] = pod
                self.born[pod["metadata"]["name"]] = self.t
        for patch in plan.patch:
            meta = self.pods[patch.name]["metadata"]
            meta["labels"].update(patch.labels)
            meta.setdefault("annotations", {}).update(patch.annotations)
        for d in plan.delete:
            self.pods.pop(d.name, None)
        self.events += [(e.reason, e.message) for e in plan.events]
        holding = len(self.pods)
        self.peak_holding = max(self.peak_holding, holding)
        ready = sum(
            1
            for p in self.pods.values()
            if podstate.is_ready(p) and p["metadata"]["labels"].get(labels.SERVING) == "true"
        )
        if plan.status["phase"] != "Pending":
            seen = self.min_ready_seen
            self.min_ready_seen = ready if seen is None else min(seen, ready)
        return plan

    def run(self, until: Any, limit: int = 200) -> Plan:
        for _ in range(limit):
            plan = self.step()
            if until(plan):
                return plan
            self.t += 0.5
        raise AssertionError(f"not reached in {limit} steps: {self.job['status']}")


def available(plan: Plan) -> bool:
    return plan.status["phase"] == "Available"


def revisions(sim: Sim) -> set[str]:
    return {p["metadata"]["labels"][labels.REVISION] for p in sim.pods.values()}


def change_template(job: Obj, image: str) -> None:
    job["spec"]["template"] = {"spec": {"containers": [{"name": "server", "image": image}]}}
    job["metadata"]["generation"] += 1


def test_a_new_job_creates_its_replicas_and_service_and_becomes_available():
    sim = Sim(serving_job(3), [make_node(f"n{i}", 8) for i in range(2)])
    first = sim.step()
    kinds = sorted(o["kind"] for o in first.create)
    assert kinds == ["Pod", "Pod", "Pod", "Service"]
    assert first.status["phase"] == "Pending" and first.status["admission"]["replicas"] == 3
    plan = sim.run(available)
    st = plan.status
    assert st["readyReplicas"] == 3 and st["updatedReplicas"] == 3 and st["readyText"] == "3/3"
    assert st["url"] == "http://sj.team.svc:8000" and st["currentRevision"] == st["updateRevision"]
    assert {c["type"]: c["status"] for c in st["conditions"]} == {
        "Available": "True",
        "Progressing": "True",
        "Degraded": "False",
    }
    assert st["admission"] is None  # its pods are seen: nothing reserved any more
    assert len(sim.pods) == 3 and sim.step().create == []  # a repeated reconcile creates nothing


@pytest.mark.parametrize(
    ("replicas", "surge", "unavailable"),
    [(3, 1, 0), (3, 0, 1), (4, 2, 1), (2, 1, 1), (5, 3, 0)],
)
def test_a_rollout_keeps_its_bounds_and_completes(replicas, surge, unavailable):
    job = serving_job(replicas, rollout={"maxSurge": surge, "maxUnavailable": unavailable,
                                         "drainSeconds": 2})  # fmt: skip
    sim = Sim(job, [make_node(f"n{i}", 8) for i in range(4)])
    sim.run(available)
    old = revisions(sim)
    sim.min_ready_seen, sim.peak_holding = None, 0
    change_template(sim.job, "server:2")
    plan = sim.run(lambda p: available(p) and revisions(sim) != old)
    assert plan.status["currentRevision"] == plan.status["updateRevision"] not in old
    assert len(sim.pods) == replicas and revisions(sim).isdisjoint(old)
    assert sim.peak_holding <= replicas + surge
    assert sim.min_ready_seen is not None and sim.min_ready_seen >= replicas - unavailable
    reasons = [r for r, _ in sim.events]
    assert reasons.count("RolloutStarted") == 1 and reasons.count("RolloutComplete") == 1
    assert reasons.count("Draining") == replicas and reasons.count("ReplicaStopped") == replicas


def test_a_replica_leaves_the_service_before_it_stops_and_stops_after_the_drain():
    sim = Sim(serving_job(1, rollout={"maxSurge": 1, "drainSeconds": 3}), [make_node("n0", 8)])
    sim.run(available)
    (old,) = sim.pods
    change_template(sim.job, "server:2")
    plan = sim.run(lambda p: any(x.name == old for x in p.patch))
    patch = next(x for x in plan.patch if x.name == old)
    assert patch.labels == {labels.SERVING: "false"}
    left_at = sim.t
    # Its replacement was Ready before it left: one Ready replica all along.
    assert sum(podstate.is_ready(p) for p in sim.pods.values()) == 2
    sim.run(lambda p: any(d.name == old for d in p.delete))
    assert sim.t - left_at >= 3


def test_without_gpus_for_a_surge_replica_it_replaces_in_place_within_max_unavailable():
    job = serving_job(2, gpus=4, rollout={"maxSurge": 1, "maxUnavailable": 1, "drainSeconds": 1})
    sim = Sim(job, [make_node("n0", 8)])  # room for exactly 2 replicas: no surge possible
    sim.run(available)
    old = revisions(sim)
    change_template(sim.job, "server:2")
    plan = sim.step()
    assert plan.create == [] and plan.status["reason"] == "ReplacingInPlace"
    assert "no GPUs for a surge replica" in plan.status["message"]
    assert len(plan.patch) == 1  # one at a time: maxUnavailable 1
    sim.min_ready_seen = None
    plan = sim.run(lambda p: available(p) and revisions(sim).isdisjoint(old))
    assert sim.min_ready_seen >= 1 and sim.peak_holding <= 2


def test_without_gpus_and_max_unavailable_0_it_waits_and_says_why():
    job = serving_job(2, gpus=4, rollout={"maxSurge": 1, "maxUnavailable": 0})
    sim = Sim(job, [make_node("n0", 8)])
    sim.run(available)
    change_template(sim.job, "server:2")
    plan = sim.step()
    assert plan.create == [] and plan.patch == [] and plan.delete == []
    assert plan.status["reason"] == "WaitingForGPUs"
    assert "maxUnavailable 0" in plan.status["message"] and "free GPUs" in plan.status["message"]
    assert plan.status["availableReplicas"] == 2  # still serving the old revision


def test_a_failed_replica_is_replaced_and_status_says_which_and_why():
    sim = Sim(serving_job(2), [make_node("n0", 8)])
    sim.run(available)
    dead = sorted(sim.pods)[0]
    sim.pods[dead]["status"] = {
        "phase": "Failed",
        "containerStatuses": [{"name": "server", "state": {"terminated": {"exitCode": 137,
                                                                           "reason": "Error"}}}],
    }  # fmt: skip
    plan = sim.step()
    assert [d.name for d in plan.delete] == [dead]
    assert plan.status["replaced"] == 1 and plan.status["reason"] == "ReplicaFailed"
    assert dead in plan.status["message"] and "137" in plan.status["message"]
    said = f"replica {dead} failed on n0: exit code 137 (Error); replacing it"
    assert ("ReplicaFailed", said) in sim.events
    assert sum(o["kind"] == "Pod" for o in plan.create) == 1  # its replacement, at once
    plan = sim.run(available)
    assert len(sim.pods) == 2 and dead not in sim.pods and plan.status["replaced"] == 1


def test_a_replica_that_stops_being_ready_is_reported():
    sim = Sim(serving_job(2), [make_node("n0", 8)])
    sim.run(available)
    hung = sorted(sim.pods)[1]
    sim.pods[hung]["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    sim.ready_after = 1e9  # it stays so
    plan = sim.step()
    state = {r["pod"]: r["state"] for r in plan.status["replicaStatus"]}
    assert state[hung] == "NotReady" and plan.status["readyReplicas"] == 1
    assert plan.status["phase"] == "Degraded" and ("ReplicaNotReady" in [r for r, _ in sim.events])


def test_scaling_down_drains_the_surplus_not_ready_first():
    sim = Sim(serving_job(3), [make_node("n0", 8)])
    sim.run(available)
    slow = sorted(sim.pods)[2]
    sim.pods[slow]["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    sim.job["spec"]["replicas"] = 2
    plan = sim.step()
    assert [p.name for p in plan.patch] == [slow]
    assert plan.status["reason"] == "ScalingDown"
    # The revision is the same: scaling is no rollout.
    assert plan.status["updateRevision"] == plan.status["currentRevision"]


def test_the_revision_changes_with_what_shapes_pods_only():
    base = ServingJobSpec.model_validate({"replicas": 2})
    assert revision(base) == revision(ServingJobSpec.model_validate({"replicas": 5}))
    assert revision(base) == revision(
        base.model_copy(update={"rollout": base.rollout.model_copy(update={"max_surge": 3})})
    )
    for change in (
        {"gpusPerReplica": 1},
        {"port": 9000},
        {"batching": {"maxBatchSize": 8}},
        {"model": {"storageUri": "pvc://ckpt/run1"}},
        {"template": {"spec": {"containers": [{"name": "s", "image": "x"}]}}},
    ):
        assert revision(base) != revision(ServingJobSpec.model_validate({"replicas": 2, **change}))


def test_a_pending_admission_is_created_again_after_a_crash_between_record_and_act():
    sim = Sim(serving_job(2), [make_node("n0", 8), make_node("n1", 8)])
    first = plan_reconcile(sim.world(), SETTINGS)
    sim.job["status"] = first.status  # the status was written, then the operator died
    again = plan_reconcile(sim.world(), SETTINGS)
    names = lambda p: sorted(o["metadata"]["name"] for o in p.create if o["kind"] == "Pod")  # noqa: E731
    assert names(again) == names(first) and again.status["admission"] == first.status["admission"]
    assert [o["spec"] for o in again.create] == [o["spec"] for o in first.create]


def test_serving_and_training_share_one_ledger():
    nodes = [make_node("n0", 8)]
    # A TrainingJob gang admitted onto n0 for 6 GPUs, its pods not created yet.
    training = admission.Gang("uid-t", "team", "llm", 1, 6, admitted=("n0",))
    sim = Sim(serving_job(3, gpus=1), nodes)
    sim.gangs = [training]
    plan = sim.step()
    assert plan.status["admission"]["replicas"] == 2  # 8 - 6: two replicas now, not three
    plan = sim.run(lambda p: p.status["readyReplicas"] == 2)
    assert plan.status["reason"] == "WaitingForGPUs" and plan.status["phase"] == "Degraded"
    # The serving job's own reservation is what TrainingJobs see of it.
    sim.job["status"]["admission"] = {"batch": 9, "replicas": 1, "gpusPerReplica": 1,
                                      "nodes": ["n0"], "pods": ["sj-x-0"]}  # fmt: skip
    gang = demand(sim.job)
    assert gang is not None and gang.admitted == ("n0",) and gang.gpus_per_replica == 1
    # ... and while it waits, its place in the queue.
    sim.job["status"]["admission"] = None
    sim.job["status"]["queuedTime"] = stamp(1)
    waiting = demand(sim.job)
    assert waiting is not None and waiting.admitted is None and waiting.replicas == 1


def test_a_template_that_breaks_the_pod_policy_gets_no_replica():
    job = serving_job(1, template={"spec": {"containers": [
        {"name": "server", "image": "x", "securityContext": {"privileged": True}}]}})  # fmt: skip
    plan = Sim(job, [make_node("n0", 8)]).step()
    assert plan.create == [] and plan.status["reason"] == "PodPolicyViolation"
    assert "spec.template.spec.containers[0].securityContext.privileged" in plan.status["message"]
    assert {c["type"]: c["status"] for c in plan.status["conditions"]}["Degraded"] == "True"


def test_the_rendered_replica_runs_the_server_with_truthful_probes():
    spec = ServingJobSpec.model_validate(
        {"replicas": 1, "gpusPerReplica": 2, "model": {"name": "digits",
         "storageUri": "pvc://checkpoints/ddp-digits"}, "batching": {"maxBatchSize": 16}}
    )  # fmt: skip
    meta = {"name": "sj", "namespace": "team", "uid": "u"}
    pod = render_pod(meta, spec, "abc", "sj-abc-0", 1, 0, "n3")
    (c,) = pod["spec"]["containers"]
    assert c["command"] == ["python", "-m", "distml_runtime.serve"] and "args" not in c
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8000}
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["DISTML_CHECKPOINT_DIR"] == "/mnt/models/ddp-digits"
    assert env["DISTML_MAX_BATCH_SIZE"] == "16" and c["resources"]["limits"][labels.GPU] == "2"
    assert pod["spec"]["volumes"] == [
        {"name": "model", "persistentVolumeClaim": {"claimName": "checkpoints", "readOnly": True}}
    ]
    assert pod["spec"]["restartPolicy"] == "Never" and admission.pinned_node(pod) == "n3"
    svc = render_service(meta, spec)
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert svc["spec"]["selector"][labels.SERVING] == "true"


def test_bad_specs_are_refused_by_the_model():
    for bad in (
        {"replicas": -1},
        {"model": {"storageUri": "s3://bucket"}},
        {"batching": {"maxBatchSize": 0}},
        {"rollout": {"maxSurge": -1}},
        {"port": 70000},
        {"replica": 2},
    ):
        with pytest.raises(ValidationError):
            ServingJobSpec.model_validate(bad)


def test_a_failed_placement_keeps_the_queue_time():
    job = serving_job(1, gpus=16)  # no node has 16
    plan = Sim(job, [make_node("n0", 8)]).step()
    assert plan.create == [] and plan.status["queuedTime"] == stamp(0)
    assert "largest node has 8" in plan.status["message"]


def test_a_refused_service_is_said_and_tried_again_until_it_is_accepted():
    sim = Sim(serving_job(1), [make_node("n0", 8)])
    sim.run(available)
    world = sim.world()
    world.refused = ["Service sj already exists and is not owned by this job"]
    plan = plan_reconcile(world, SETTINGS)
    assert plan.status["reason"] == "CreateRefused" and plan.status["phase"] == "Degraded"
    assert "Service sj already exists" in plan.status["message"]
    assert [o["kind"] for o in plan.create] == ["Service"]  # tried again, pods left alone
    assert plan.requeue_after == 10.0
    sim.job["status"] = plan.status
    assert available(sim.step())  # accepted: no refusal carried, nothing to say
