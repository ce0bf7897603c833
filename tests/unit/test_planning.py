"""The reconcile decision, table by table: what a user would see in status, Events and pods."""

from __future__ import annotations

import json

import pytest

from distml import labels
from distml.trainingjob import Settings, World, plan_reconcile

from .builders import admitted_job, at, make_job, make_node, make_pod, nodes, stamp

SETTINGS = Settings(backoff_base_seconds=10, backoff_cap_seconds=300)


def plan(job, pods=(), cluster=None, now=0.0, others=()):
    cluster = nodes(4) if cluster is None else cluster
    world = World(
        job=job, pods=list(pods), nodes=cluster, cluster_pods=[*pods, *others], now=at(now)
    )
    return plan_reconcile(world, SETTINGS)


def running_job(n=2, gen=0, **status):
    return (
        make_job()
        .replicas(n)
        .status(
            phase="Running",
            restartGeneration=gen,
            startTime=stamp(0),
            admittedTime=stamp(0),
            **status,
        )
        .obj()
    )


def names(p):
    return sorted(o["metadata"]["name"] for o in p.create if o["kind"] == "Pod")


def test_new_job_with_room_creates_the_whole_gang_at_once():
    p = plan(make_job().replicas(4).obj())
    assert names(p) == [f"llm-worker-{r}-0" for r in range(4)]
    assert [o["kind"] for o in p.create].count("Service") == 1
    assert p.status["phase"] == "Creating"
    assert p.status["startTime"] == stamp(0) and p.status["gangAttempts"] == 1
    assert [e.reason for e in p.events] == ["Admitted"]


def test_new_job_without_room_is_queued_and_creates_nothing():
    p = plan(make_job().replicas(5).obj())
    assert p.create == []
    assert p.status["phase"] == "Queued"
    assert "room for 4 now" in p.status["message"]
    assert p.requeue_after == SETTINGS.queued_recheck_seconds


def test_impossible_gpu_request_is_explained_with_a_warning():
    p = plan(make_job().gpus(16).obj())
    assert p.status["phase"] == "Queued" and p.create == []
    assert p.events[0].type == "Warning" and p.events[0].reason == "NoNodeFits"
    assert p.status["conditions"][0]["reason"] == "NoNodeFits"


def test_replanning_the_same_world_changes_nothing_and_posts_no_event_twice():
    job = make_job().replicas(3).status(phase="Queued", message="x").obj()
    first = plan(job)
    job["status"] = first.status
    pods = [make_pod("llm", r).obj() for r in range(3)]
    second = plan(job, pods, now=1)
    assert second.create == [] and second.delete == []
    assert second.status["phase"] == "Creating" and second.events == []


def test_operator_restarted_mid_creation_creates_only_the_missing_pods():
    job = make_job().replicas(4).status(phase="Creating", admittedTime=stamp(0)).obj()
    pods = [make_pod("llm", r).obj() for r in (0, 2)]
    assert names(plan(job, pods, now=1)) == ["llm-worker-1-0", "llm-worker-3-0"]


def test_all_workers_running_is_running_and_reports_ranks():
    job = make_job().status(phase="Creating", admittedTime=stamp(0)).obj()
    pods = [make_pod("llm", r).running().obj() for r in range(2)]
    p = plan(job, pods, now=7)
    assert p.status["phase"] == "Running" and p.status["readyText"] == "2/2"
    assert p.status["gpus"] == 16 and p.signals.started_seconds == 7
    held = {"zone": "", "globalRanks": "", "stages": "", "dataParallel": "", "tensorGroups": ""}
    # A node without a block label is a block of its own.
    assert p.status["ranks"] == [
        {"rank": 0, "pod": "llm-worker-0-0", "node": "n0", "block": "n0", **held},
        {"rank": 1, "pod": "llm-worker-1-0", "node": "n1", "block": "n1", **held},
    ]
    assert p.status.get("placement") is None  # not a parallel job


@pytest.mark.parametrize(
    ("policy", "code", "phase", "reason"),
    [
        ("ExitCode", 137, "Restarting", "WorkerFailed"),
        ("ExitCode", 75, "Restarting", "WorkerFailed"),
        ("ExitCode", 1, "Failed", "ApplicationError"),
        ("OnFailure", 1, "Restarting", "WorkerFailed"),
        ("Never", 137, "Failed", "WorkerFailed"),
    ],
)
def test_failed_worker_follows_the_restart_policy(policy, code, phase, reason):
    job = running_job()
    job["spec"]["restartPolicy"] = policy
    pods = [make_pod("llm", 0).running().obj(), make_pod("llm", 1).exited(code).obj()]
    p = plan(job, pods, now=30)
    assert (p.status["phase"], p.status["conditions"][-1]["reason"]) == (phase, reason)
    assert str(code) in p.status["message"] and "rank 1" in p.status["message"]


def test_restart_moves_to_a_new_generation_after_backoff():
    pods = [make_pod("llm", 0).running().obj(), make_pod("llm", 1).exited(143).obj()]
    p = plan(running_job(restarts=1), pods, now=30)
    assert p.status["restarts"] == 2 and p.status["restartGeneration"] == 1
    assert p.status["nextAttemptTime"] == stamp(30 + 20)  # 10s doubled for the 2nd restart
    assert sorted(d.name for d in p.delete) == ["llm-worker-0-0", "llm-worker-1-0"]
    assert p.requeue_after == 20 and p.signals.restarted

    # Old pods still there: wait for them; then, after the backoff, a new gang.
    job = running_job()
    job["status"] = p.status
    assert plan(job, pods, now=31).create == []
    assert names(plan(job, [], now=51)) == ["llm-worker-0-1", "llm-worker-1-1"]


def test_backoff_limit_ends_restarts():
    job = running_job(restarts=3)
    pods = [make_pod("llm", 0).exited(137).obj(), make_pod("llm", 1).running().obj()]
    p = plan(job, pods)
    assert p.status["phase"] == "Failed"
    assert p.status["conditions"][-1]["reason"] == "BackoffLimitExceeded"


def test_worker_on_a_dead_node_is_lost_and_force_deleted():
    cluster = [make_node("n0"), make_node("n1", ready=False)]
    pods = [make_pod("llm", 0).running().obj(), make_pod("llm", 1).running().obj()]
    p = plan(running_job(), pods, cluster=cluster)
    assert p.status["phase"] == "Restarting"
    assert "node n1 is NotReady" in p.status["message"]
    forced = {d.name: d.force for d in p.delete}
    assert forced == {"llm-worker-0-0": False, "llm-worker-1-0": True}


def test_pod_stuck_terminating_on_a_vanished_node_is_force_deleted():
    stuck = make_pod("llm", 1).on("gone").running().deleting().obj()
    job = running_job(gen=1)
    p = plan(job, [stuck], cluster=nodes(2))
    assert [(d.name, d.force) for d in p.delete] == [("llm-worker-1-0", True)]


def test_gang_that_does_not_start_in_time_is_released_and_requeued():
    job = (
        make_job()
        .replicas(2)
        .spec(gang={"timeoutSeconds": 60})
        .status(phase="Creating", admittedTime=stamp(0), gangAttempts=1)
        .obj()
    )
    pods = [make_pod("llm", 0).running().obj(), make_pod("llm", 1).unscheduled().obj()]
    assert plan(job, pods, now=59).delete == []
    p = plan(job, pods, now=61)
    assert p.status["phase"] == "Queued" and p.signals.gang_timeout
    assert p.status["conditions"][-1]["reason"] == "GangTimeout"
    assert "only 1/2 workers were Running after 60s" in p.status["message"]
    assert len(p.delete) == 2 and p.status["restartGeneration"] == 1


def test_success_needs_every_worker_to_exit_zero():
    partly = [make_pod("llm", 0).exited(0).obj(), make_pod("llm", 1).running().obj()]
    p = plan(running_job(), partly)
    assert p.status["phase"] == "Running" and "1 finished" in p.status["message"]
    done = [make_pod("llm", r).exited(0).obj() for r in range(2)]
    p = plan(running_job(), done, now=100)
    assert p.status["phase"] == "Succeeded" and p.status["completionTime"] == stamp(100)


@pytest.mark.parametrize(
    ("policy", "deleted"),
    [
        ("Running", ["llm-worker-0-0"]),
        ("All", ["llm-worker-0-0", "llm-worker-1-0"]),
        ("None", []),
    ],
)
def test_clean_pod_policy_on_failure(policy, deleted):
    job = running_job()
    job["spec"]["runPolicy"] = {"cleanPodPolicy": policy}
    pods = [make_pod("llm", 0).running().obj(), make_pod("llm", 1).exited(2).obj()]
    assert sorted(d.name for d in plan(job, pods).delete) == deleted


def test_active_deadline_fails_the_job_and_stops_its_pods():
    job = running_job()
    job["spec"]["runPolicy"] = {"activeDeadlineSeconds": 600}
    pods = [make_pod("llm", r).running().obj() for r in range(2)]
    assert plan(job, pods, now=599).requeue_after == pytest.approx(1)
    p = plan(job, pods, now=600)
    assert p.status["phase"] == "Failed" and len(p.delete) == 2
    assert p.status["conditions"][-1]["reason"] == "DeadlineExceeded"


def test_finished_job_is_deleted_once_its_ttl_passes():
    job = (
        make_job()
        .run_policy(ttlSecondsAfterFinished=60)
        .status(phase="Succeeded", completionTime=stamp(100))
        .obj()
    )
    early = plan(job, now=130)
    assert not early.delete_job and early.requeue_after == 30
    assert plan(job, now=160).delete_job


def test_suspend_deletes_pods_and_resume_starts_a_new_generation():
    job = running_job()
    job["spec"]["runPolicy"] = {"suspend": True}
    pods = [make_pod("llm", r).running().obj() for r in range(2)]
    p = plan(job, pods)
    assert p.status["phase"] == "Suspended" and len(p.delete) == 2
    job["status"] = p.status
    job["spec"]["runPolicy"] = {"suspend": False}
    p = plan(job, [], now=50)
    assert p.status["phase"] == "Creating" and names(p) == ["llm-worker-0-1", "llm-worker-1-1"]
    assert p.status["startTime"] == stamp(50)


def test_pod_deleted_under_a_running_job_restarts_the_group():
    pods = [make_pod("llm", 0).running().obj()]
    p = plan(running_job(), pods)
    assert p.status["phase"] == "Restarting" and "was deleted" in p.status["message"]


def test_pods_of_an_earlier_job_with_the_same_name_are_not_adopted_but_waited_for():
    """They hold our pod names until they go; creating into them would only be refused."""
    ghosts = [make_pod("llm", r).owned_by("uid-0").running().obj() for r in range(2)]
    for g in ghosts:
        g["metadata"]["labels"][labels.MANAGED_BY] = labels.OPERATOR
    p = plan(make_job().obj(), ghosts)
    assert p.status["phase"] == "Queued" and p.status["reason"] == "WaitingForPredecessor"
    assert p.create == [] and "2 pods of an earlier TrainingJob" in p.status["message"]
    assert p.requeue_after == 1.0
    # A pod someone else labelled with the job's name is no predecessor: it is not waited on.
    foreign = make_pod("llm", 0).owned_by("uid-0").running().obj()
    assert plan(make_job().obj(), [foreign]).status["phase"] == "Creating"


def _verdict(passed, busbw, slowest="n0 <-> n1", gbps=0.4):
    msg = f"all-reduce busbw {busbw} Gbps" + ("" if passed else f"; slowest link {slowest}")
    return json.dumps({"passed": passed, "busBwGbps": busbw, "slowestLink": slowest,
                       "slowestLinkGbps": gbps, "message": msg, "worldSize": 2})  # fmt: skip


def test_preflight_below_the_minimum_fails_the_job_at_once_naming_the_link():
    job = running_job(restarts=0)
    job["spec"]["preflight"] = {"minBusBwGbps": 10}
    pods = [make_pod("llm", r).preflight(3, _verdict(False, 0.5)).obj() for r in range(2)]
    p = plan(job, pods, now=30)
    assert p.status["phase"] == "Failed" and not p.signals.restarted
    cond = p.status["conditions"][-1]
    assert cond["reason"] == "PreflightFailed" and "n0 <-> n1" in cond["message"]
    assert p.status["preflight"]["passed"] is False
    assert p.status["preflight"]["slowestLink"] == "n0 <-> n1"
    assert [e.reason for e in p.events] == ["PreflightFailed"]


def test_preflight_that_passes_lands_in_status_once_per_generation():
    job = running_job(gen=2)
    job["spec"]["preflight"] = {}
    pods = [make_pod("llm", r, 2).preflight(0, _verdict(True, 42.5)).obj() for r in range(2)]
    p = plan(job, pods, now=30)
    assert p.status["phase"] == "Running"
    assert p.status["preflight"]["busBwGbps"] == 42.5
    assert p.status["preflight"]["restartGeneration"] == 2
    assert p.signals.preflight_busbw_gbps == 42.5
    assert "PreflightPassed" in [e.reason for e in p.events]
    job["status"] = p.status
    again = plan(job, pods, now=31)
    assert again.signals.preflight_busbw_gbps is None and again.events == []


def test_preflight_peers_that_never_met_is_retryable():
    job = running_job()
    job["spec"]["preflight"] = {}
    pods = [make_pod("llm", 0).preflight(75, "").obj(), make_pod("llm", 1).running().obj()]
    p = plan(job, pods, now=30)
    assert p.status["phase"] == "Restarting" and p.signals.restarted


def test_admission_is_recorded_with_a_node_per_rank_and_each_pod_is_pinned_there():
    p = plan(make_job().replicas(2).obj())
    adm = p.status["admission"]
    assert adm["restartGeneration"] == 0 and adm["replicas"] == 2 and len(adm["nodes"]) == 2
    pins = [
        o["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        for o in p.create
        if o["kind"] == "Pod"
    ]
    assert [t["nodeSelectorTerms"][0]["matchFields"][0]["values"] for t in pins] == [
        [n] for n in adm["nodes"]
    ]


def test_an_admission_recorded_before_the_operator_died_is_carried_out_not_decided_again():
    # Another gang took every free GPU since; the recorded admission still holds its GPUs.
    from distml.admission import Gang

    others = [Gang("u2", "team", "x", 2, 8, admitted=("n2", "n3"))]
    world = World(job=admitted_job(), pods=[], nodes=nodes(4), cluster_pods=[], now=at(1),
                  gangs=others)  # fmt: skip
    p = plan_reconcile(world, SETTINGS)
    assert names(p) == ["llm-worker-0-0", "llm-worker-1-0"]
    assert p.status["phase"] == "Creating" and p.events == []


def test_a_refused_create_releases_the_half_gang_and_backs_off_quoting_the_api():
    pods = [make_pod("llm", 0).running().obj()]
    why = "Pod llm-worker-1-0: exceeded quota: q, requested: pods=1, used: pods=1, limited: pods=1"
    world = World(job=admitted_job(gangAttempts=1), pods=pods, nodes=nodes(4), cluster_pods=pods,
                  now=at(5), refused=[why])  # fmt: skip
    p = plan_reconcile(world, SETTINGS)
    assert p.status["phase"] == "Queued" and p.signals.refused and p.create == []
    assert [d.name for d in p.delete] == ["llm-worker-0-0"]
    assert p.status["restartGeneration"] == 1 and p.status["restarts"] == 0
    assert p.status["nextAttemptTime"] == stamp(15)
    (event,) = p.events
    assert (event.type, event.reason) == ("Warning", "CreateRefused") and why in event.message
    assert p.status["conditions"][-1]["reason"] == "CreateRefused"


@pytest.mark.parametrize(("before", "after"), [(2, 4), (4, 2)])
def test_changing_replicas_is_a_resize_not_a_failure(before, after):
    job = admitted_job(before, phase="Running", nodes_=[f"n{i}" for i in range(before)])
    job["spec"]["replicas"] = after
    pods = [make_pod("llm", r).running().obj() for r in range(before)]
    p = plan(job, pods, now=30)
    assert p.status["phase"] == "Restarting" and p.signals.resized and not p.signals.restarted
    assert p.status["conditions"][-1]["reason"] == "Resized"
    assert p.status["restarts"] == 0 and p.status["resizes"] == 1
    assert p.status["restartGeneration"] == 1 and len(p.delete) == before
    assert f"from {before} to {after}" in p.events[0].message
    # While the old pods go, status still counts them and the GPUs they hold.
    assert p.status["gpus"] == 8 * before and p.status["active"] == before
    # Once they are gone: the new size is admitted like a new gang.
    job["status"] = p.status
    p2 = plan(job, [], now=31)
    assert p2.status["phase"] == "Creating" and names(p2) == [
        f"llm-worker-{r}-1" for r in range(after)
    ]
    assert p2.status["admission"]["replicas"] == after


def test_status_during_a_restart_counts_the_old_pods_still_holding_gpus():
    pods = [make_pod("llm", 0).running().obj(), make_pod("llm", 1).exited(137).obj()]
    p = plan(running_job(), pods, now=30)
    assert p.status["phase"] == "Restarting"
    assert p.status["gpus"] == 8 and p.status["active"] == 1  # rank 0 runs on until deleted
    assert [r["pod"] for r in p.status["ranks"]] == ["llm-worker-0-0"]


def test_a_template_that_breaks_the_pod_policy_gets_no_pod_and_says_which_field():
    job = make_job().obj()
    job["spec"]["template"]["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    p = plan(job)
    assert p.create == [] and p.status["phase"] == "Queued"
    assert p.status["reason"] == "PodPolicyViolation" and p.events[0].type == "Warning"
    assert "spec.template.spec.containers[0].securityContext.privileged" in p.status["message"]
    assert "'baseline'" in p.status["message"]


def test_the_namespace_level_applies_and_node_name_is_refused():
    ns = {
        "metadata": {"name": "team", "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}
    }
    world = World(job=make_job().obj(), pods=[], nodes=nodes(4), cluster_pods=[], now=at(0),
                  namespace=ns)  # fmt: skip
    p = plan_reconcile(world, SETTINGS)
    assert p.create == [] and "'restricted'" in p.status["message"]
    job = make_job().obj()
    job["spec"]["template"]["spec"]["nodeName"] = "n0"
    assert "spec.template.spec.nodeName" in plan(job).status["message"]


def test_a_queued_job_shows_its_place_in_the_queue():
    from distml.trainingjob import demand

    first = make_job("first").replicas(4).obj()
    first["metadata"].update(uid="u0", creationTimestamp="2025-01-01T00:00:00Z")
    ahead = demand(first)
    world = World(job=make_job().obj(), pods=[], nodes=nodes(4), cluster_pods=[], now=at(0),
                  gangs=[ahead])  # fmt: skip
    p = plan_reconcile(world, SETTINGS)
    assert p.status["phase"] == "Queued" and p.status["queuePosition"] == 2
    assert p.status["message"].startswith("2nd in the queue")


def test_a_status_stored_without_its_nulls_is_not_written_again():
    from distml.trainingjob import status_changed

    job = make_job().replicas(2).obj()
    p = plan(job)
    job["status"] = {k: v for k, v in p.status.items() if v is not None}  # as the API keeps it
    assert not status_changed(job, p.status)
    job["status"]["phase"] = "Queued"
    assert status_changed(job, p.status)


def test_pods_on_nodes_not_ready_together_are_held_not_restarted():
    """Every node's heartbeat stopped at once (an API server outage): no restart, a Warning."""
    cluster = [make_node(f"n{i}", ready=False) for i in range(4)]
    pods = [make_pod("llm", r).on(f"n{r}").running().obj() for r in range(2)]
    p = plan(running_job(), pods, cluster=cluster)
    assert p.status["phase"] == "Running" and p.status["reason"] == "NodesDisrupted"
    assert p.delete == [] and p.create == [] and p.status.get("restarts", 0) == 0
    assert [(e.type, e.reason) for e in p.events] == [("Warning", "NodesDisrupted")]
    assert "4 of 4 nodes" in p.status["message"] and p.signals.disrupted
    # Once the nodes report again, it is simply running.
    held = {**running_job(), "status": {**running_job()["status"], **p.status}}
    p2 = plan(held, pods)
    assert p2.status["reason"] == "Running" and p2.status.get("restarts", 0) == 0


def test_a_pod_that_failed_during_a_disruption_still_restarts_the_group():
    cluster = [make_node(f"n{i}", ready=i == 0) for i in range(4)]
    pods = [
        make_pod("llm", 0).on("n0").exited(137).obj(),
        make_pod("llm", 1).on("n1").running().obj(),
    ]
    p = plan(running_job(), pods, cluster=cluster)
    assert p.status["phase"] == "Restarting" and p.status["restarts"] == 1


def test_a_node_still_held_after_the_disruption_ended_is_waited_for_not_lost():
    cluster = [make_node(f"n{i}", ready=i != 1) for i in range(4)]  # one left: no disruption
    pods = [make_pod("llm", r).on(f"n{r}").running().obj() for r in range(2)]
    world = World(job=running_job(), pods=pods, nodes=cluster, cluster_pods=pods, now=at(0),
                  held_nodes=frozenset({"n1"}))  # fmt: skip
    p = plan_reconcile(world, SETTINGS)
    assert p.status["reason"] == "NodesDisrupted" and p.delete == [] and p.requeue_after == 5
    assert "have not reported yet" in p.status["message"]
    assert plan(running_job(), pods, cluster=cluster).status["phase"] == "Restarting"


def test_a_node_just_gone_not_ready_is_waited_for_then_its_pods_are_lost():
    """Nodes go NotReady one by one in an outage too: the first is not taken for lost until it
    has been NotReady for node_loss_seconds, by which time the others have followed."""
    pods = [make_pod("llm", r).on(f"n{r}").running().obj() for r in range(2)]
    cluster = [make_node(f"n{i}", ready=i != 1, since=-4) for i in range(4)]
    p = plan(running_job(), pods, cluster=cluster)
    assert p.status["phase"] == "Running" and p.status["reason"] == "NodeNotReady"
    assert p.delete == [] and p.status.get("restarts", 0) == 0 and not p.signals.disrupted
    assert p.requeue_after == SETTINGS.node_loss_seconds - 4
    assert [(e.type, e.reason) for e in p.events] == [("Warning", "NodeNotReady")]
    assert "NotReady: n1" in p.status["message"]
    job = running_job()
    job["status"].update(p.status)
    # Still silent once the window has passed, and alone: lost, the group restarts.
    late = plan(job, pods, cluster=cluster, now=SETTINGS.node_loss_seconds)
    assert late.status["phase"] == "Restarting" and late.status["restarts"] == 1
    assert "its node n1 is NotReady" in late.status["message"]
    # Joined by others within the window: an outage, held.
    many = [make_node(f"n{i}", ready=False, since=-4 + i) for i in range(4)]
    held = plan(job, pods, cluster=many, now=SETTINGS.node_loss_seconds)
    assert held.status["reason"] == "NodesDisrupted" and held.delete == []
    # A node deleted outright is gone at once: no window.
    gone = plan(running_job(), pods, cluster=[make_node("n0")])
    assert gone.status["phase"] == "Restarting" and "n1 is gone" in gone.status["message"]


def test_a_disruption_is_announced_once_while_its_count_grows():
    pods = [make_pod("llm", r).on(f"n{r}").running().obj() for r in range(2)]
    first = [make_node(f"n{i}", ready=i >= 3) for i in range(4)]  # 3 of 4
    p1 = plan(running_job(), pods, cluster=first)
    job = running_job()
    job["status"].update(p1.status)
    p2 = plan(job, pods, cluster=[make_node(f"n{i}", ready=False) for i in range(4)])
    assert "4 of 4" in p2.status["message"] and p2.events == []


def test_a_change_of_counts_alone_is_told_from_one_that_says_something_new():
    from distml.trainingjob import only_counts_changed

    job = running_job()
    base = plan(job).status  # a full status, as the operator writes it
    assert only_counts_changed({**job, "status": base}, {**base, "ready": base["ready"] + 1})
    assert not only_counts_changed({**job, "status": base}, {**base, "phase": "Failed"})
    assert not only_counts_changed({**job, "status": base}, base)  # nothing changed at all


def test_a_running_job_with_no_admission_record_and_no_pods_is_admitted_again():
    """As an operator before status.admission left it, with every pod gone: decided again, and
    no crash loop (the planner raised here)."""
    p = plan(running_job(), [])
    assert p.status["phase"] in ("Restarting", "Creating")
    again = running_job()
    again["status"].update(phase="Creating")
    p = plan(again, [])
    assert p.status["phase"] == "Creating" and len(names(p)) == 2
