"""Each TrainingJob policy on its own, table by table: from an observation, the outcome it
decides, or None when it has nothing to say. The whole planner's tables are in test_planning."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from distml import labels
from distml.reconcile import MemberReading
from distml.trainingjob import Settings, World
from distml.trainingjob.observe import observe
from distml.trainingjob.planner import POLICIES

from .builders import admitted_job, at, make_job, make_node, make_pod, nodes, stamp

SETTINGS = Settings(backoff_base_seconds=10, backoff_cap_seconds=300, node_loss_seconds=15)


@dataclass
class Case:
    """A world, and what the policy must decide from it: None, or the outcome's phase and
    reason, whether it ends the run, its requeue, the pods it deletes and creates, and status
    fields it sets (Python names)."""

    job: dict[str, Any]
    pods: list[dict[str, Any]] = field(default_factory=list)
    cluster: list[dict[str, Any]] | None = None
    now: float = 0.0
    refused: list[str] = field(default_factory=list)
    expect: dict[str, Any] | None = None
    # What the pods' launchers said of their group: pod -> (seconds, group size, restarts),
    # and when the last read pass was (seconds).
    members: dict[str, tuple[float, int, int]] = field(default_factory=dict)
    read_at: float | None = None


def decide(policy: str, case: Case):
    world = World(
        job=case.job,
        pods=case.pods,
        nodes=nodes(4) if case.cluster is None else case.cluster,
        cluster_pods=case.pods,
        now=at(case.now),
        refused=case.refused,
        members={n: MemberReading(at(t), g, r) for n, (t, g, r) in case.members.items()},
        members_at=None if case.read_at is None else at(case.read_at),
    )
    return dict(POLICIES)[policy](observe(world, SETTINGS))


def check(policy: str, case: Case) -> None:
    outcome = decide(policy, case)
    if case.expect is None:
        assert outcome is None
        return
    assert outcome is not None
    want = dict(case.expect)
    if "phase" in want:
        got = (outcome.phase.phase, outcome.phase.reason) if outcome.phase else None
        assert got == want.pop("phase")
    assert outcome.final == want.pop("final", True)
    if "requeue" in want:
        assert outcome.requeue_after == want.pop("requeue")
    assert sorted(d.name for d in outcome.delete) == sorted(want.pop("delete", []))
    made = sorted(o["metadata"]["name"] for o in outcome.create if o["kind"] == "Pod")
    assert made == sorted(want.pop("create", []))
    for key, value in want.pop("status", {}).items():
        assert outcome.status[key] == value, key
    if "delete_job" in want:
        assert outcome.delete_job == want.pop("delete_job")
    assert not want, f"unchecked expectations: {want}"


def running_pods(n=2, gen=0):
    return [make_pod("llm", r, gen).running().obj() for r in range(n)]


def table(*rows: tuple[str, Case]):
    return pytest.mark.parametrize("case", [c for _, c in rows], ids=[i for i, _ in rows])


def done_job(phase="Succeeded", ttl=None, finished_at=0):
    job = make_job().status(phase=phase, completionTime=stamp(finished_at))
    return (job.run_policy(ttlSecondsAfterFinished=ttl) if ttl is not None else job).obj()


@table(
    ("running: not its business", Case(admitted_job(phase="Running"), expect=None)),
    ("finished, no TTL: stays", Case(done_job(), expect={})),
    ("TTL not reached: looks again then", Case(done_job(ttl=60), now=20, expect={"requeue": 40})),
    ("TTL passed: deleted", Case(done_job(ttl=60), now=61, expect={"delete_job": True})),
    (
        "cleanPodPolicy Running: live pods go",
        Case(done_job(phase="Failed"), pods=running_pods(1), expect={"delete": ["llm-worker-0-0"]}),
    ),
)
def test_finished(case):
    check("finished", case)


def suspend(job):
    job["spec"].setdefault("runPolicy", {})["suspend"] = True
    return job


@table(
    ("not suspended", Case(admitted_job(phase="Running"), expect=None)),
    (
        "suspended while running: pods deleted",
        Case(
            suspend(admitted_job(phase="Running")),
            pods=running_pods(),
            expect={
                "phase": ("Suspended", "Suspended"),
                "delete": ["llm-worker-0-0", "llm-worker-1-0"],
                "status": {"start_time": None},
            },
        ),
    ),
    (
        "already suspended: no new phase",
        Case(suspend(make_job().status(phase="Suspended").obj()), expect={}),
    ),
)
def test_suspended(case):
    check("suspended", case)


@table(
    ("not suspended before", Case(admitted_job(phase="Running"), expect=None)),
    (
        "resumed: a new generation, queued, and the next policies go on",
        Case(
            make_job().status(phase="Suspended", restartGeneration=2).obj(),
            expect={
                "phase": ("Queued", "Resumed"),
                "final": False,
                "status": {"restart_generation": 3, "start_time": None},
            },
        ),
    ),
)
def test_resumed(case):
    check("resumed", case)


def deadline_job(limit):
    job = admitted_job(phase="Running")
    job["spec"].setdefault("runPolicy", {})["activeDeadlineSeconds"] = limit
    return job


@table(
    ("no deadline", Case(admitted_job(phase="Running"), expect=None)),
    (
        "before it: look again then",
        Case(deadline_job(30), now=10, expect={"requeue": 20, "final": False}),
    ),
    (
        "past it: failed, live pods stopped",
        Case(
            deadline_job(30),
            pods=running_pods(),
            now=30,
            expect={
                "phase": ("Failed", "DeadlineExceeded"),
                "delete": ["llm-worker-0-0", "llm-worker-1-0"],
                "status": {"completion_time": stamp(30)},
            },
        ),
    ),
)
def test_deadline(case):
    check("deadline", case)


@table(
    ("only current pods", Case(admitted_job(gen=1), pods=running_pods(gen=1), expect=None)),
    (
        "an older generation's pod goes, the run goes on",
        Case(
            admitted_job(gen=1),
            pods=[*running_pods(gen=1), make_pod("llm", 0, 0).running().obj()],
            expect={"delete": ["llm-worker-0-0"], "final": False},
        ),
    ),
    (
        "already deleting on a healthy node: left to finish",
        Case(admitted_job(gen=1), pods=[make_pod("llm", 0, 0).deleting().obj()], expect=None),
    ),
)
def test_stale_pods(case):
    check("stale pods", case)


@table(
    ("has its record", Case(admitted_job(phase="Running"), pods=running_pods(), expect=None)),
    (
        "admitted with no record, pods there: adopted",
        Case(
            make_job().replicas(2).status(phase="Running", admittedTime=stamp(0)).obj(),
            pods=running_pods(),
            expect={"final": False},
        ),
    ),
    (
        "admitted with no record and no pods: admitted anew later",
        Case(make_job().status(phase="Running", admittedTime=stamp(0)).obj(), expect=None),
    ),
)
def test_adopted(case):
    check("adopted", case)
    if case.expect is not None:
        adm = decide("adopted", case).status["admission"]
        assert (adm.replicas, adm.restart_generation, adm.time) == (2, 0, stamp(0))


def ghost():
    """A pod the operator made for an earlier job of the same name."""
    pod = make_pod("llm", 0).owned_by("uid-0").running().obj()
    pod["metadata"]["labels"][labels.MANAGED_BY] = labels.OPERATOR
    return pod


@table(
    ("no earlier job's pods", Case(make_job().obj(), expect=None)),
    (
        "someone else's pod with the job's labels is no predecessor",
        Case(make_job().obj(), pods=[make_pod("llm", 0).owned_by("uid-0").obj()], expect=None),
    ),
    (
        "an earlier job's pod holds the name",
        Case(
            make_job().obj(),
            pods=[ghost()],
            expect={"phase": ("Queued", "WaitingForPredecessor"), "requeue": 1.0},
        ),
    ),
    (
        "admitted already: not its business",
        Case(
            admitted_job(),
            pods=[ghost()],
            expect=None,
        ),
    ),
)
def test_predecessor(case):
    check("predecessor", case)


@table(
    ("no older pods", Case(make_job().status(restartGeneration=1).obj(), expect=None)),
    (
        "an older pod still runs",
        Case(
            make_job().status(phase="Running", restartGeneration=1).obj(),
            pods=[make_pod("llm", 0, 0).running().obj()],
            expect={"phase": ("Queued", "WaitingForPods"), "requeue": 1.0},
        ),
    ),
    (
        "restarting says so already: no new phase",
        Case(
            make_job().status(phase="Restarting", restartGeneration=1).obj(),
            pods=[make_pod("llm", 0, 0).running().obj()],
            expect={"requeue": 1.0},
        ),
    ),
    (
        "older pods all ended",
        Case(
            make_job().status(restartGeneration=1).obj(),
            pods=[make_pod("llm", 0, 0).exited(1).obj()],
            expect=None,
        ),
    ),
)
def test_previous_generation(case):
    check("previous generation", case)


@table(
    ("no backoff", Case(make_job().obj(), expect=None)),
    (
        "backing off: look again when it ends",
        Case(
            make_job().status(phase="Restarting", nextAttemptTime=stamp(30)).obj(),
            now=10,
            expect={"requeue": 20},
        ),
    ),
    (
        "a new job told to wait says why",
        Case(
            make_job().status(nextAttemptTime=stamp(30)).obj(),
            expect={"phase": ("Queued", "BackingOff"), "requeue": 30},
        ),
    ),
    ("backoff over", Case(make_job().status(nextAttemptTime=stamp(30)).obj(), now=30, expect=None)),
)
def test_backing_off(case):
    check("backing off", case)


def privileged():
    job = make_job().obj()
    job["spec"]["template"]["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    return job


@table(
    ("a plain template", Case(make_job().obj(), expect=None)),
    (
        "privileged under baseline: no pod, a warning",
        Case(
            privileged(),
            expect={
                "phase": ("Queued", "PodPolicyViolation"),
                "requeue": SETTINGS.queued_recheck_seconds * 4,
                "status": {"queued_time": stamp(0)},
            },
        ),
    ),
)
def test_pod_policy(case):
    check("pod policy", case)


@table(
    (
        "room: admitted, the whole gang created",
        Case(
            make_job().replicas(2).status(queuedTime=stamp(-5)).obj(),
            expect={
                "phase": ("Creating", "Admitted"),
                "create": ["llm-worker-0-0", "llm-worker-1-0"],
                "requeue": 300,
                "status": {"gang_attempts": 1, "queued_time": None, "admitted_time": stamp(0)},
            },
        ),
    ),
    (
        "no room: queued with its position",
        Case(
            make_job().replicas(5).obj(),
            expect={
                "phase": ("Queued", "InsufficientGPUs"),
                "requeue": SETTINGS.queued_recheck_seconds,
                "status": {"queue_position": 1, "queued_time": stamp(0)},
            },
        ),
    ),
    ("admitted already", Case(admitted_job(), expect=None)),
)
def test_admit(case):
    check("admit", case)
    if case.expect and case.expect["phase"][1] == "Admitted":
        assert decide("admit", case).signals.queue_wait_seconds == 5


@table(
    ("nothing refused", Case(admitted_job(), pods=running_pods(1), expect=None)),
    (
        "a refused pod releases the half gang",
        Case(
            admitted_job(gangAttempts=1),
            pods=running_pods(1),
            refused=["exceeded quota"],
            now=5,
            expect={
                "phase": ("Queued", "CreateRefused"),
                "delete": ["llm-worker-0-0"],
                "requeue": 10,
                "status": {"restart_generation": 1, "next_attempt_time": stamp(15)},
            },
        ),
    ),
)
def test_refused(case):
    check("refused", case)


def scaled(job, n):
    job["spec"]["replicas"] = n
    return job


@table(
    ("same size", Case(admitted_job(phase="Running"), pods=running_pods(), expect=None)),
    (
        "scaled from 2 to 3: a new generation, not a restart",
        Case(
            scaled(admitted_job(phase="Running"), 3),
            pods=running_pods(),
            expect={
                "phase": ("Restarting", "Resized"),
                "delete": ["llm-worker-0-0", "llm-worker-1-0"],
                "requeue": 1.0,
                "status": {"resizes": 1, "restart_generation": 1},
            },
        ),
    ),
)
def test_resized(case):
    check("resized", case)
    if case.expect:
        assert "restarts" not in decide("resized", case).status


def verdict(passed: bool) -> str:
    return json.dumps({"passed": passed, "busBwGbps": 0.5, "message": "busbw 0.5 Gbps"})


def preflighted(job):
    job["spec"]["preflight"] = {"minBusBwGbps": 10}
    return job


@table(
    ("no preflight asked", Case(admitted_job(), pods=running_pods(), expect=None)),
    ("no verdict yet", Case(preflighted(admitted_job()), pods=running_pods(), expect=None)),
    (
        "passed: recorded, and the next policies go on",
        Case(
            preflighted(admitted_job()),
            pods=[make_pod("llm", r).preflight(0, verdict(True)).obj() for r in range(2)],
            expect={"final": False},
        ),
    ),
    (
        "too slow: the job fails",
        Case(
            preflighted(admitted_job()),
            pods=[make_pod("llm", r).preflight(3, verdict(False)).obj() for r in range(2)],
            expect={"phase": ("Failed", "PreflightFailed")},
        ),
    ),
)
def test_preflight(case):
    check("preflight", case)
    if case.expect is not None:
        assert decide("preflight", case).status["preflight"].bus_bw_gbps == 0.5


@table(
    ("all well", Case(admitted_job(phase="Running"), pods=running_pods(), expect=None)),
    (
        "a worker exited 137: the group restarts",
        Case(
            admitted_job(phase="Running"),
            pods=[make_pod("llm", 0).exited(137).obj(), *running_pods()[1:]],
            expect={
                "phase": ("Restarting", "WorkerFailed"),
                "delete": ["llm-worker-0-0", "llm-worker-1-0"],
                "requeue": 10,
                "status": {"restarts": 1, "restart_generation": 1},
            },
        ),
    ),
    (
        "a worker's node is gone: lost, force-deleted",
        Case(
            admitted_job(phase="Running"),
            pods=running_pods(),
            cluster=[make_node("n0")],
            expect={
                "phase": ("Restarting", "PodLost"),
                "delete": ["llm-worker-0-0", "llm-worker-1-0"],
                "requeue": 0.0,  # lost with its node: no backoff
                "status": {"restarts": 1},
            },
        ),
    ),
    (
        "a node NotReady a moment ago: not lost yet",
        Case(
            admitted_job(phase="Running"),
            pods=running_pods(),
            cluster=[make_node("n0"), make_node("n1", ready=False, since=-3)],
            expect=None,
        ),
    ),
)
def test_failed(case):
    check("failed", case)


@table(
    ("nodes Ready", Case(admitted_job(phase="Running"), pods=running_pods(), expect=None)),
    (
        "every node NotReady: held",
        Case(
            admitted_job(phase="Running"),
            pods=running_pods(),
            cluster=[make_node(f"n{i}", ready=False) for i in range(4)],
            expect={"phase": ("Running", "NodesDisrupted"), "requeue": 5},
        ),
    ),
    (
        "one node NotReady: not a disruption",
        Case(
            admitted_job(phase="Running"),
            pods=running_pods(),
            cluster=[make_node(f"n{i}", ready=i != 1) for i in range(4)],
            expect=None,
        ),
    ),
)
def test_disrupted(case):
    check("disrupted", case)


@table(
    ("nodes Ready", Case(admitted_job(phase="Running"), pods=running_pods(), expect=None)),
    (
        "NotReady for 5s: wait the other 10",
        Case(
            admitted_job(phase="Running"),
            pods=running_pods(),
            cluster=[make_node("n0"), make_node("n1", ready=False, since=-5)],
            expect={"phase": ("Running", "NodeNotReady"), "requeue": 10},
        ),
    ),
    (
        "NotReady for longer: for the failed policy",
        Case(
            admitted_job(phase="Running"),
            pods=running_pods(),
            cluster=[make_node("n0"), make_node("n1", ready=False, since=-15)],
            expect=None,
        ),
    ),
)
def test_node_loss(case):
    check("node loss", case)


@table(
    ("every pod there", Case(admitted_job(), pods=running_pods(), expect=None)),
    (
        "creating: the missing pod is created and the gang judged next",
        Case(
            admitted_job(),
            pods=running_pods(1),
            expect={"create": ["llm-worker-1-0"], "final": False},
        ),
    ),
    (
        "running: a deleted pod is a lost rank",
        Case(
            admitted_job(phase="Running"),
            pods=running_pods(1),
            expect={
                "phase": ("Restarting", "PodLost"),
                "delete": ["llm-worker-0-0"],
                "requeue": 0.0,  # not the job's failure: no backoff
                "status": {"restarts": 1},
            },
        ),
    ),
)
def test_missing(case):
    check("missing", case)


@table(
    ("still running", Case(admitted_job(phase="Running"), pods=running_pods(), expect=None)),
    (
        "every worker exited 0",
        Case(
            admitted_job(phase="Running"),
            pods=[make_pod("llm", r).exited(0).obj() for r in range(2)],
            expect={"phase": ("Succeeded", "Succeeded"), "status": {"completion_time": stamp(0)}},
        ),
    ),
)
def test_succeeded(case):
    check("succeeded", case)


@table(
    ("one still pending", Case(admitted_job(), pods=[*running_pods(1), make_pod("llm", 1).obj()])),
    (
        "all running: Running, and the start measured",
        Case(admitted_job(), pods=running_pods(), now=7, expect={"phase": ("Running", "Running")}),
    ),
)
def test_running(case):
    check("running", case)
    if case.expect:
        assert decide("running", case).signals.started_seconds == 7


@table(
    (
        "within the gang timeout: Creating, look again at the timeout",
        Case(
            admitted_job(phase="Queued"),
            pods=[make_pod("llm", 0).obj()],
            now=100,
            expect={"phase": ("Creating", "Creating"), "requeue": 200},
        ),
    ),
    (
        "past it: every pod released, queued again",
        Case(
            admitted_job(gangAttempts=1),
            pods=[make_pod("llm", 0).running().obj(), make_pod("llm", 1).obj()],
            now=300,
            expect={
                "phase": ("Queued", "GangTimeout"),
                "delete": ["llm-worker-0-0", "llm-worker-1-0"],
                "requeue": 10,
                "status": {"restart_generation": 1, "queued_time": stamp(300)},
            },
        ),
    ),
)
def test_gang_wait(case):
    check("gang wait", case)


def test_every_policy_module_runs_in_the_planner_once():
    import pkgutil

    from distml.trainingjob import policies

    modules = sorted(m.name for m in pkgutil.iter_modules(policies.__path__))
    used = [decide.__module__.rsplit(".", 1)[1] for _, decide in POLICIES]
    assert sorted(used) == modules and len(set(used)) == len(used)


def elastic_job(n=3, lo=2, hi=4, replicas=None, phase="Running", **status):
    """An elastic job (lo-hi) whose generation 0 was admitted with `n` pods on n0..n{n-1}."""
    job = admitted_job(n=n, nodes_=tuple(f"n{r}" for r in range(n)), phase=phase, **status)
    job["spec"]["elastic"] = {"minReplicas": lo, "maxReplicas": hi}
    job["spec"]["replicas"] = n if replicas is None else replicas
    return job


def elastic_pods(n=3, changed=None):
    """Running pods of slots 0..n-1 on n0..; `changed` maps a slot to its pod builder's call."""
    changed = changed or {}
    out = []
    for r in range(n):
        b = make_pod("llm", r).running()
        if r in changed:
            b = changed[r](b)
        out.append(b.obj())
    return out


def test_elastic_policy_grows_onto_the_lost_pods_node_when_it_has_room():
    """A pod killed on a healthy node: deleted, the job says it shrank, and once the name is
    free the slot's replacement goes back to the same node."""
    pods = elastic_pods(3, {2: lambda b: b.exited(137)})
    out = decide("elastic", Case(elastic_job(workers=3), pods=pods))
    assert [d.name for d in out.delete] == ["llm-worker-2-0"]
    assert out.status["workers"] == 2 and out.status["resizes"] == 1
    last = out.status["resize_history"][-1]
    assert (last.from_replicas, last.to_replicas, last.reason) == (3, 2, "PodLost")
    assert [e.reason for e in out.events] == ["Shrunk"]
    assert out.signals.elastic_resizes == (("shrink", "PodLost"),)
    assert out.status.get("restarts") is None  # not a failure
    # The pod is gone: its slot is refilled on n2, which has room again.
    job = elastic_job(workers=2, resizes=1)
    out = decide("elastic", Case(job, pods=elastic_pods(2)))
    made = [p for p in out.create if p["kind"] == "Pod"]
    assert [p["metadata"]["name"] for p in made] == ["llm-worker-2-0"]
    assert out.status["admission"].nodes == ["n0", "n1", "n2"]
    assert out.phase.reason == "Running"


@table(
    (
        "a node gone: its pod is deleted, the rest go on",
        Case(
            elastic_job(workers=3),
            pods=elastic_pods(3),
            cluster=nodes(2),  # n2 is gone
            expect={
                "phase": ("Running", "Running"),
                "delete": ["llm-worker-2-0"],
                "requeue": 1.0,
                "status": {"workers": 2, "resizes": 1},
            },
        ),
    ),
    (
        "its pod gone, no spare: runs smaller and says what it waits for",
        Case(
            elastic_job(workers=2),
            pods=elastic_pods(2),
            cluster=nodes(2),
            expect={
                "phase": ("Running", "WaitingForCapacity"),
                "requeue": SETTINGS.queued_recheck_seconds,
                "status": {"workers": 2},
            },
        ),
    ),
    (
        "a node gone and a spare free: the slot moves there",
        Case(
            elastic_job(workers=2),
            pods=elastic_pods(2),
            cluster=[*nodes(2), make_node("n3")],
            expect={
                "phase": ("Running", "Running"),
                "create": ["llm-worker-2-0"],
                "requeue": 1.0,
                "status": {"workers": 2},
            },
        ),
    ),
    (
        "scaled up within the bounds: a new slot, no restart",
        Case(
            elastic_job(n=3, replicas=4, workers=3),
            pods=elastic_pods(3),
            expect={
                "phase": ("Running", "Running"),
                "create": ["llm-worker-3-0"],
                "requeue": 1.0,
                "status": {"workers": 3},
            },
        ),
    ),
    (
        "scaled down: the highest slot leaves through SIGTERM",
        Case(
            elastic_job(n=3, replicas=2, workers=3),
            pods=elastic_pods(3),
            expect={
                "phase": ("Running", "Running"),
                "delete": ["llm-worker-2-0"],
                "requeue": 1.0,
                "status": {"workers": 2, "resizes": 1},
            },
        ),
    ),
    (
        "below minReplicas: not a resize, the group restarts",
        Case(
            elastic_job(n=3, lo=3, workers=3),
            pods=elastic_pods(3, {2: lambda b: b.exited(137)}),
            expect=None,
        ),
    ),
    (
        "an application error: the restart policy decides",
        Case(
            elastic_job(workers=3),
            pods=elastic_pods(3, {1: lambda b: b.exited(1)}),
            expect=None,
        ),
    ),
    (
        "slot 0 (the rendezvous host) lost with room for its replacement: a resize",
        Case(
            elastic_job(workers=3),
            pods=elastic_pods(3, {0: lambda b: b.exited(137)}),
            expect={
                "phase": ("Running", "Running"),
                "delete": ["llm-worker-0-0"],
                "requeue": 1.0,
                "status": {"workers": 2, "resizes": 1},
            },
        ),
    ),
    (
        "slot 0's node gone and no room for its replacement: the highest slot gives it its node",
        Case(
            elastic_job(workers=3),
            pods=elastic_pods(3),
            cluster=[make_node("n1"), make_node("n2")],
            expect={
                "phase": ("Running", "Running"),
                "delete": ["llm-worker-0-0", "llm-worker-2-0"],
                "requeue": 1.0,
                "status": {"workers": 1, "resizes": 1},
            },
        ),
    ),
    (
        "slot 0's node gone, no room, and no other slot running to give it one: restarts",
        Case(
            elastic_job(n=2, lo=1, workers=2),
            pods=[make_pod("llm", 0).running().obj(), make_pod("llm", 1).obj()],
            cluster=[make_node("n1")],
            expect=None,
        ),
    ),
    (
        "slot 0's node gone and a spare free: the host's replacement goes there",
        Case(
            elastic_job(workers=3),
            pods=elastic_pods(3),
            cluster=[make_node("n1"), make_node("n2"), make_node("n3")],
            expect={
                "phase": ("Running", "Running"),
                "delete": ["llm-worker-0-0"],
                "requeue": 1.0,
                "status": {"workers": 2, "resizes": 1},
            },
        ),
    ),
    (
        "not running yet: gang start is all or nothing",
        Case(elastic_job(phase="Creating"), pods=elastic_pods(2), expect=None),
    ),
    (
        "not elastic: not its business",
        Case(admitted_job(phase="Running"), pods=running_pods(), expect=None),
    ),
    (
        "every worker finished: succeeded",
        Case(
            elastic_job(n=3, workers=2),
            pods=[make_pod("llm", r).exited(0).obj() for r in (0, 1)],
            expect={"phase": ("Succeeded", "Succeeded")},
        ),
    ),
)
def test_elastic(case):
    check("elastic", case)


def test_elastic_host_replacement_takes_the_donors_node_and_the_donors_slot_waits():
    """Slot 0 lost with no room: slot 2 gives its node; once both are gone, slot 0 comes back
    there (its store is what the others wait for), and slot 2 waits for capacity."""
    out = decide("elastic", Case(elastic_job(workers=3), pods=elastic_pods(3),
                                 cluster=[make_node("n1"), make_node("n2")]))  # fmt: skip
    assert out.status["admission"].nodes == ["n2", "n1", ""]
    job = elastic_job(workers=1, resizes=1)
    job["status"]["admission"]["nodes"] = ["n2", "n1", ""]
    pods = [make_pod("llm", 1).running().obj()]
    out = decide("elastic", Case(job, pods=pods, cluster=[make_node("n1"), make_node("n2")]))
    assert [p["metadata"]["name"] for p in out.create if p["kind"] == "Pod"] == ["llm-worker-0-0"]
    assert out.status["admission"].nodes == ["n2", "n1", ""]
    assert out.phase.reason == "WaitingForCapacity"  # slot 2, on no node yet


@pytest.mark.parametrize(
    "before, grown_to, reason",
    [
        ([("NodeLost", 3, 2)], 3, "Replaced"),
        ([("NodeLost", 3, 1), ("Replaced", 1, 2)], 3, "Replaced"),  # back in two steps
        ([("NodeLost", 3, 2), ("Replaced", 2, 3)], 4, "ScaledUp"),  # past the size it had
        ([("ScaledDown", 3, 2)], 3, "ScaledUp"),
        ([], 3, "ScaledUp"),
    ],
)
def test_elastic_grow_reason(before, grown_to, reason):
    history = [{"time": stamp(0), "fromReplicas": a, "toReplicas": b, "reason": r}
               for r, a, b in before]  # fmt: skip
    workers = before[-1][2] if before else 2
    job = elastic_job(n=grown_to, workers=workers, resizes=len(before), resizeHistory=history)
    out = decide("elastic", Case(job, pods=elastic_pods(grown_to)))
    last = out.status["resize_history"][-1]
    assert (last.from_replicas, last.to_replicas, last.reason) == (workers, grown_to, reason)


def test_elastic_grow_is_recorded_once_the_new_pod_runs():
    history = [{"time": stamp(0), "fromReplicas": 3, "toReplicas": 2, "reason": "NodeLost"}]
    job = elastic_job(workers=2, resizes=1, resizeHistory=history)
    out = decide("elastic", Case(job, pods=elastic_pods(3)))
    last = out.status["resize_history"][-1]
    assert (last.from_replicas, last.to_replicas, last.reason) == (2, 3, "Replaced")
    assert out.status["resizes"] == 2 and out.status["workers"] == 3
    assert [e.reason for e in out.events] == ["Grown"]
    assert out.requeue_after is None


def test_elastic_workers_finishing_one_by_one_are_not_a_shrink():
    pods = elastic_pods(3, {0: lambda b: b.exited(0)})
    out = decide("elastic", Case(elastic_job(workers=3), pods=pods))
    assert out.phase.phase == "Running" and "1 finished" in out.phase.message
    assert out.status["workers"] == 3 and out.status["resize_history"] == []
    assert not out.create and not out.delete and not out.events


def peer_lost_world():
    """Rank 0 exited 76 (it lost its peer) at T0; rank 1 still looks Running on n1."""
    return [make_pod("llm", 0).exited(76, at=0).obj(), make_pod("llm", 1).running().obj()]


@table(
    (
        "a peer reported lost: wait a moment for the others to report",
        Case(admitted_job(phase="Running"), pods=peer_lost_world(), now=1, expect={"requeue": 2.0}),
    ),
    (
        "the lost peer's pod still looks alive: restart now, force it, suspect its node",
        Case(
            admitted_job(phase="Running"),
            pods=peer_lost_world(),
            now=4,
            expect={
                "phase": ("Restarting", "PodLost"),
                "delete": ["llm-worker-0-0", "llm-worker-1-0"],
                "requeue": 0.0,  # the node is avoided: no backoff
                "status": {"restarts": 1, "restart_generation": 1},
            },
        ),
    ),
    (
        "the root cause is there: restart for it, no suspect",
        Case(
            admitted_job(phase="Running"),
            pods=[make_pod("llm", 0).exited(76, at=0).obj(), make_pod("llm", 1).exited(137).obj()],
            now=4,
            expect={
                "phase": ("Restarting", "WorkerFailed"),
                "delete": ["llm-worker-0-0", "llm-worker-1-0"],
                "requeue": 10.0,
                "status": {"restarts": 1, "restart_generation": 1},
            },
        ),
    ),
)
def test_failed_with_a_silent_peer(case):
    check("failed", case)


def test_a_silent_peer_is_deleted_at_once_and_its_node_avoided_by_the_next_admission():
    out = decide("failed", Case(admitted_job(phase="Running"), pods=peer_lost_world(), now=4))
    forced = {d.name: d.force for d in out.delete}
    assert forced == {"llm-worker-0-0": False, "llm-worker-1-0": True}
    assert out.status["workers"] is None  # a new generation is counted afresh, not a resize
    (suspect,) = out.status["suspect_nodes"]
    assert suspect.node == "n1" and "llm-worker-1-0 went silent" in suspect.reason
    assert "rank 1 (pod llm-worker-1-0) was lost: it went silent on node n1" in out.phase.message
    # The next generation: admitted on three free nodes, never on n1.
    suspects = [{"node": "n1", "since": stamp(4), "reason": "silent"}]
    queued = make_job().status(restartGeneration=1, suspectNodes=suspects).obj()
    out = decide("admit", Case(queued, cluster=nodes(3), now=30))
    assert out.phase.reason == "Admitted" and out.status["admission"].nodes == ["n0", "n2"]
    # Long after, the suspicion has lapsed.
    out = decide("admit", Case(queued, cluster=nodes(2), now=4 + 301))
    assert out.status["admission"].nodes == ["n0", "n1"] and out.status["suspect_nodes"] == []


def test_elastic_scale_down_before_the_first_count_is_still_a_resize():
    # The group turned Running and was scaled down before the elastic policy counted it: the
    # count it was admitted with (3) is where the shrink starts.
    job = elastic_job(replicas=2)  # no status.workers yet
    out = decide("elastic", Case(job, pods=elastic_pods(2)))
    assert out.status["workers"] == 2 and out.status["resizes"] == 1
    last = out.status["resize_history"][-1]
    assert (last.from_replicas, last.to_replicas, last.reason) == (3, 2, "ScaledDown")


def heard(now: float, sizes: dict[int, int], restarts: dict[int, int] | None = None) -> dict:
    """Readings of the given slots at `now`: slot -> the group size its launcher names."""
    restarts = restarts or {}
    return {f"llm-worker-{r}-0": (now, g, restarts.get(r, 0)) for r, g in sizes.items()}


def test_the_ranks_meeting_without_a_silent_pod_is_a_shrink_at_once():
    # Slot 2's node went silent (still Ready to the node controller): its launcher stopped
    # answering, and the other two say their latest round had 2 pods.
    members = {**heard(0, {2: 3}), **heard(10, {0: 2, 1: 2})}
    case = Case(elastic_job(workers=3), pods=elastic_pods(3), now=11, members=members, read_at=10)
    out = decide("elastic", case)
    assert out.status["workers"] == 2 and out.status["resizes"] == 1
    last = out.status["resize_history"][-1]
    assert (last.from_replicas, last.to_replicas, last.reason) == (3, 2, "LeftGroup")
    assert "without llm-worker-2-0" in last.message
    assert [e.reason for e in out.events] == ["Shrunk"]
    assert out.signals.elastic_resizes == (("shrink", "LeftGroup"),)
    assert not out.delete and not out.create  # its fate is the node's: it may come back
    assert "2 of 3 workers in the group" in out.phase.message
    # It comes back and rejoins: the ranks name 3 again, a grow.
    job = elastic_job(workers=2, resizes=1, resizeHistory=[last.model_dump(by_alias=True)])
    back = Case(job, pods=elastic_pods(3), now=30, members=heard(30, {0: 3, 1: 3, 2: 3}),
                read_at=30)  # fmt: skip
    out = decide("elastic", back)
    assert out.status["workers"] == 3
    assert out.status["resize_history"][-1].reason == "Replaced"


@table(
    (
        "nobody answered: the running pods count",
        Case(elastic_job(workers=3), pods=elastic_pods(3), now=5, read_at=4,
             expect={"phase": ("Running", "Running"), "status": {"workers": 3}}),
    ),
    (
        "a round in progress (sizes disagree): the count stands",
        Case(elastic_job(workers=3), pods=elastic_pods(3), now=5, read_at=4,
             members=heard(4, {0: 2, 1: 3, 2: 3}),
             expect={"phase": ("Running", "Running"), "status": {"workers": 3}}),
    ),
    (
        "readings too old to say anything of now",
        Case(elastic_job(workers=3), pods=elastic_pods(3), now=40, read_at=20,
             members=heard(20, {0: 2, 1: 2}),
             expect={"phase": ("Running", "Running"), "status": {"workers": 3}}),
    ),
    (
        "a new pod running but not in the rendezvous yet: not counted until it joins",
        Case(elastic_job(workers=2), pods=elastic_pods(3), now=5, read_at=4,
             members=heard(4, {0: 2, 1: 2}),
             expect={"phase": ("Running", "Running"), "status": {"workers": 2}}),
    ),
)  # fmt: skip
def test_elastic_counts_the_group_its_ranks_report(case):
    check("elastic", case)


def test_worker_restarts_inside_pods_reach_status_with_an_event():
    members = heard(4, {0: 3, 1: 3, 2: 3}, restarts={1: 1})
    case = Case(elastic_job(workers=3), pods=elastic_pods(3), now=5, members=members, read_at=4)
    out = decide("elastic", case)
    assert out.status["worker_restarts"] == 1 and out.status["workers"] == 3
    (event,) = [e for e in out.events if e.reason == "WorkersRestarted"]
    assert "llm-worker-1-0: 1" in event.message and event.type == "Warning"
    # Said once: the next reconcile with the same reading has no Event.
    again = decide("elastic", Case(elastic_job(workers=3, workerRestarts=1), pods=elastic_pods(3),
                                   now=7, members=members, read_at=4))  # fmt: skip
    assert again.status["worker_restarts"] == 1 and not again.events
