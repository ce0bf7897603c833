"""The reconcile decision for one TrainingJob: from what is (the job, its pods, the nodes, the
cluster's GPU pods, the time) to what should be done (pods and a Service to create, pods to delete,
the new status, Events to post, when to look again). Pure; level-triggered: the same world gives
the same plan, so repeating it or restarting the operator never duplicates anything.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from distml import gang, podstate, rendering
from distml.api.models import FINISHED, CleanPodPolicy, Phase, TrainingJobSpec
from distml.conditions import set_phase_condition
from distml.policies.restart import Failure, backoff_seconds, decide_restart

Obj = dict[str, Any]
EXIT_PREFLIGHT_SLOW = 3  # distml_runtime.preflight.EXIT_SLOW: busbw below the job's minimum


@dataclass(frozen=True)
class Settings:
    backoff_base_seconds: float = 10.0
    backoff_cap_seconds: float = 300.0
    queued_recheck_seconds: float = 15.0


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class PodDeletion:
    name: str
    force: bool = False  # grace period 0: the pod's node is gone or dead


@dataclass
class Plan:
    create: list[Obj] = field(default_factory=list)
    delete: list[PodDeletion] = field(default_factory=list)
    status: Obj = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    delete_job: bool = False
    # Observations for metrics, filled when they happen.
    started_seconds: float | None = None  # admitted -> all Running
    queue_wait_seconds: float | None = None
    gang_timeout: bool = False
    restarted: bool = False
    preflight_busbw_gbps: float | None = None  # measured by this generation's preflight


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(s: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00")) if s else None


@dataclass
class World:
    """What the handler gathered for one reconcile."""

    job: Obj
    pods: list[Obj]  # the job's pods, every generation
    nodes: list[Obj]
    cluster_pods: list[Obj]  # every GPU pod in the cluster, for admission
    now: dt.datetime


class _Builder:
    def __init__(self, w: World, settings: Settings) -> None:
        self.w = w
        self.settings = settings
        self.meta = w.job["metadata"]
        self.spec = TrainingJobSpec.model_validate(w.job["spec"])
        self.old: Obj = dict(w.job.get("status") or {})
        self.status: Obj = dict(self.old)
        self.plan = Plan()
        self.now = iso(w.now)
        self.nodes = {n["metadata"]["name"]: n for n in w.nodes}
        # Pods of an earlier job of the same name are not ours, whatever their labels say; the
        # garbage collector removes them, and creating ours waits until their names are free.
        uid = self.meta.get("uid")
        self.pods = [
            p
            for p in w.pods
            if any(r.get("uid") == uid for r in p["metadata"].get("ownerReferences") or [])
        ]

    # --- helpers ---------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        return int(self.status.get("restartGeneration", 0))

    def phase(self, phase: Phase, reason: str, message: str, event_type: str = "Normal") -> None:
        changed = self.old.get("phase") != phase or self.old.get("message") != message
        self.status["phase"] = phase.value
        self.status["message"] = message
        self.status["conditions"] = set_phase_condition(
            list(self.status.get("conditions") or []), phase.value, reason, message, self.now
        )
        if changed:
            self.plan.events.append(Event(event_type, reason, message))

    def requeue(self, seconds: float) -> None:
        seconds = max(seconds, 0.5)
        if self.plan.requeue_after is None or seconds < self.plan.requeue_after:
            self.plan.requeue_after = seconds

    def node_dead(self, pod: Obj) -> bool:
        node = podstate.node_name(pod)
        if not node:
            return False
        return node not in self.nodes or not podstate.node_ready(self.nodes[node])

    def delete(self, pods: list[Obj], only_live: bool = False) -> None:
        for pod in pods:
            if only_live and podstate.is_terminal(pod):
                continue
            dead = self.node_dead(pod)
            # A pod already deleting on a healthy node finishes on its own; one on a dead node
            # never will, since no kubelet answers: remove it from the API (force).
            if podstate.is_deleting(pod) and not dead:
                continue
            self.plan.delete.append(PodDeletion(pod["metadata"]["name"], force=dead))

    def current(self) -> list[Obj]:
        return [p for p in self.pods if podstate.generation(p) == self.generation]

    def stale(self) -> list[Obj]:
        return [p for p in self.pods if podstate.generation(p) != self.generation]

    def counts(self, pods: list[Obj]) -> None:
        live = [p for p in pods if not podstate.is_terminal(p) and not podstate.is_deleting(p)]
        ready = [p for p in live if podstate.is_ready(p)]
        self.status.update(
            replicas=len(pods),
            active=len(live),
            ready=len(ready),
            succeeded=sum(podstate.phase(p) == "Succeeded" for p in pods),
            failed=sum(podstate.phase(p) == "Failed" for p in pods),
            readyText=f"{len(ready)}/{self.spec.replicas}",
            gpus=len(live) * self.spec.gpus_per_replica,
            ranks=[
                {
                    "rank": podstate.rank(p),
                    "pod": p["metadata"]["name"],
                    "node": podstate.node_name(p),
                }
                for p in sorted(pods, key=podstate.rank)
            ],
        )

    def finish(self, phase: Phase, reason: str, message: str) -> None:
        self.phase(phase, reason, message, "Normal" if phase == Phase.SUCCEEDED else "Warning")
        self.status["completionTime"] = self.now
        self.cleanup()

    def cleanup(self) -> None:
        policy = self.spec.run_policy.clean_pod_policy
        if policy == CleanPodPolicy.ALL:
            self.delete(self.pods)
        elif policy == CleanPodPolicy.RUNNING:
            self.delete(self.pods, only_live=True)

    # --- the state machine ------------------------------------------------------------------

    def build(self) -> Plan:
        self.status["observedGeneration"] = self.meta.get("generation")
        self.status["selector"] = f"distml.io/job-name={self.meta['name']}"
        self.status.setdefault("restartGeneration", 0)
        self.status.setdefault("restarts", 0)
        phase = self.old.get("phase")
        if phase in FINISHED:
            self.finished()
        elif self.spec.run_policy.suspend:
            self.suspend()
        else:
            if phase == Phase.SUSPENDED:
                self.status["restartGeneration"] = self.generation + 1
                self.status["startTime"] = None
                self.status["nextAttemptTime"] = None
                self.phase(Phase.QUEUED, "Resumed", "resumed; waiting for room for the gang")
            if not self.deadline_passed():
                self.active()
        self.counts(self.current())
        self.plan.status = self.status
        return self.plan

    def finished(self) -> None:
        self.cleanup()
        ttl = self.spec.run_policy.ttl_seconds_after_finished
        done = parse_time(self.status.get("completionTime"))
        if ttl is not None and done is not None:
            left = (done + dt.timedelta(seconds=ttl) - self.w.now).total_seconds()
            if left <= 0:
                self.plan.delete_job = True
            else:
                self.requeue(left)

    def suspend(self) -> None:
        self.delete(self.pods, only_live=True)
        if self.old.get("phase") != Phase.SUSPENDED:
            self.phase(Phase.SUSPENDED, "Suspended", "suspended: pods deleted until resumed")
        self.status["startTime"] = None

    def deadline_passed(self) -> bool:
        limit = self.spec.run_policy.active_deadline_seconds
        started = parse_time(self.status.get("startTime"))
        if limit is None or started is None:
            return False
        left = (started + dt.timedelta(seconds=limit) - self.w.now).total_seconds()
        if left > 0:
            self.requeue(left)
            return False
        self.delete(self.pods, only_live=True)
        self.phase(
            Phase.FAILED,
            "DeadlineExceeded",
            f"ran longer than activeDeadlineSeconds={limit}",
            "Warning",
        )
        self.status["completionTime"] = self.now
        return True

    def active(self) -> None:
        self.delete(self.stale())  # delete() skips pods already going on healthy nodes
        cur = self.current()
        if not cur:
            self.start_gang()
            return
        if self.preflight(cur):
            return
        failures = self.failures(cur)
        if failures:
            self.on_failures(failures, cur)
            return
        if len(cur) < self.spec.replicas or any(podstate.is_deleting(p) for p in cur):
            missing = {podstate.rank(p) for p in cur if not podstate.is_deleting(p)}
            if self.old.get("phase") == Phase.RUNNING:
                lost = [
                    Failure(
                        r,
                        rendering.pod_name(self.meta["name"], r, self.generation),
                        None,
                        "the pod was deleted",
                    )
                    for r in range(self.spec.replicas)
                    if r not in missing
                ]
                self.on_failures(lost, cur)
                return
            self.create_missing(missing)
        succeeded = [p for p in cur if podstate.phase(p) == "Succeeded"]
        if len(succeeded) == self.spec.replicas:
            self.finish(Phase.SUCCEEDED, "Succeeded", f"all {self.spec.replicas} workers exited 0")
            return
        running = [p for p in cur if podstate.phase(p) == "Running"]
        if len(running) + len(succeeded) == self.spec.replicas and not any(
            podstate.is_deleting(p) for p in cur
        ):
            if self.old.get("phase") != Phase.RUNNING:
                admitted = parse_time(self.status.get("admittedTime"))
                if admitted is not None:
                    self.plan.started_seconds = (self.w.now - admitted).total_seconds()
            msg = f"{len(running)} workers running"
            if succeeded:
                msg += f", {len(succeeded)} finished"
            self.phase(Phase.RUNNING, "Running", msg)
            self.status["nextAttemptTime"] = None
            return
        self.wait_gang(cur)

    def preflight(self, cur: list[Obj]) -> bool:
        """Records what this generation's preflight measured (every pod reaches the same
        verdict; the lowest rank's is kept). True when it failed the job: the links are too
        slow, and a restart on the same nodes would not make them faster."""
        if self.spec.preflight is None:
            return False
        results = sorted(
            (podstate.rank(p), r)
            for p in cur
            if (r := podstate.init_result(p, rendering.PREFLIGHT_CONTAINER)) is not None
        )
        slow = [r for _rank, r in results if r[0] == EXIT_PREFLIGHT_SLOW and r[1]]
        passed = [r for _rank, r in results if r[0] == 0 and r[1]]
        _code, verdict = (slow or passed or [(0, None)])[0]
        if verdict is None:
            return False
        recorded = self.status.get("preflight") or {}
        if recorded.get("restartGeneration") != self.generation:
            keys = ("passed", "busBwGbps", "algBwGbps", "bytes", "worldSize", "slowestLink",
                    "slowestLinkGbps", "links", "message", "measuredAt")  # fmt: skip
            self.status["preflight"] = {
                **{k: verdict[k] for k in keys if k in verdict},
                "restartGeneration": self.generation,
            }
            self.plan.preflight_busbw_gbps = float(verdict.get("busBwGbps", 0.0))
            if not slow:
                self.plan.events.append(
                    Event("Normal", "PreflightPassed", f"preflight: {verdict.get('message')}")
                )
        if slow:
            self.finish(Phase.FAILED, "PreflightFailed", f"preflight: {verdict.get('message')}")
            return True
        return False

    def failures(self, cur: list[Obj]) -> list[Failure]:
        out = []
        for pod in cur:
            name = pod["metadata"]["name"]
            if podstate.phase(pod) == "Failed":
                code = podstate.exit_code(pod)
                out.append(
                    Failure(
                        podstate.rank(pod),
                        name,
                        code if code is not None else 1,
                        podstate.failure_reason(pod),
                    )
                )
            elif not podstate.is_terminal(pod) and self.node_dead(pod):
                node = podstate.node_name(pod)
                why = "gone" if node not in self.nodes else "NotReady"
                out.append(Failure(podstate.rank(pod), name, None, f"its node {node} is {why}"))
        return out

    def on_failures(self, failures: list[Failure], cur: list[Obj]) -> None:
        decision = decide_restart(
            failures,
            self.spec.restart_policy,
            self.spec.exit_codes.retryable,
            int(self.status.get("restarts", 0)),
            self.spec.run_policy.backoff_limit,
        )
        if not decision.restart:
            self.finish(Phase.FAILED, decision.reason, decision.message)
            return
        restarts = int(self.status.get("restarts", 0)) + 1
        wait = backoff_seconds(
            restarts, self.settings.backoff_base_seconds, self.settings.backoff_cap_seconds
        )
        self.status["restarts"] = restarts
        self.status["restartGeneration"] = self.generation + 1
        self.status["nextAttemptTime"] = iso(self.w.now + dt.timedelta(seconds=wait))
        self.delete(cur)
        self.phase(
            Phase.RESTARTING,
            decision.reason,
            f"{decision.message}; next attempt in {wait:.0f}s",
            "Warning",
        )
        self.plan.restarted = True
        self.requeue(wait)

    def start_gang(self) -> None:
        if any(not podstate.is_terminal(p) or podstate.is_deleting(p) for p in self.stale()):
            if self.old.get("phase") != Phase.RESTARTING:
                self.phase(
                    Phase.QUEUED,
                    "WaitingForPods",
                    "waiting for the previous generation's pods to go",
                )
            self.requeue(1.0)
            return
        next_at = parse_time(self.status.get("nextAttemptTime"))
        if next_at is not None and next_at > self.w.now:
            self.requeue((next_at - self.w.now).total_seconds())
            if not self.old.get("phase"):
                self.phase(Phase.QUEUED, "BackingOff", "backing off before the next attempt")
            return
        selector = ((self.spec.template.get("spec") or {}).get("nodeSelector")) or {}
        verdict = gang.admit_gang(
            self.spec.replicas,
            self.spec.gpus_per_replica,
            self.w.nodes,
            self.w.cluster_pods,
            selector,
            self.meta["name"],
        )
        if not self.status.get("queuedTime"):
            self.status["queuedTime"] = self.now
        if not verdict.admitted:
            kind = "Warning" if verdict.reason == "NoNodeFits" else "Normal"
            self.phase(Phase.QUEUED, verdict.reason, verdict.message, kind)
            self.requeue(self.settings.queued_recheck_seconds)
            return
        queued = parse_time(self.status.get("queuedTime"))
        if queued is not None:
            self.plan.queue_wait_seconds = (self.w.now - queued).total_seconds()
        self.status["queuedTime"] = None
        self.status["admittedTime"] = self.now
        self.status["gangAttempts"] = int(self.status.get("gangAttempts", 0)) + 1
        self.status["nextAttemptTime"] = None
        if not self.status.get("startTime"):
            self.status["startTime"] = self.now
        self.plan.create.append(rendering.render_headless_service(self.meta, self.spec))
        self.create_missing(set())
        self.phase(
            Phase.CREATING,
            "Admitted",
            f"admitted ({verdict.message}); creating {self.spec.replicas} pods",
        )
        self.requeue(self.spec.gang.timeout_seconds)

    def create_missing(self, present: set[int]) -> None:
        for rank in range(self.spec.replicas):
            if rank not in present:
                self.plan.create.append(
                    rendering.render_worker_pod(self.meta, self.spec, rank, self.generation)
                )

    def wait_gang(self, cur: list[Obj]) -> None:
        admitted = parse_time(self.status.get("admittedTime")) or self.w.now
        limit = self.spec.gang.timeout_seconds
        left = (admitted + dt.timedelta(seconds=limit) - self.w.now).total_seconds()
        if self.old.get("phase") == Phase.RUNNING or left > 0:
            if self.old.get("phase") not in (Phase.CREATING, Phase.RUNNING):
                self.phase(Phase.CREATING, "Creating", "waiting for every worker to run")
            self.requeue(left if left > 0 else self.settings.queued_recheck_seconds)
            return
        running = sum(podstate.phase(p) == "Running" for p in cur)
        attempts = int(self.status.get("gangAttempts", 1))
        wait = backoff_seconds(
            attempts, self.settings.backoff_base_seconds, self.settings.backoff_cap_seconds
        )
        self.delete(cur)
        self.status["restartGeneration"] = self.generation + 1
        self.status["nextAttemptTime"] = iso(self.w.now + dt.timedelta(seconds=wait))
        self.status["queuedTime"] = self.now
        self.plan.gang_timeout = True
        self.phase(
            Phase.QUEUED,
            "GangTimeout",
            f"only {running}/{self.spec.replicas} workers were Running after "
            f"{limit}s; released every pod, next attempt in {wait:.0f}s",
            "Warning",
        )
        self.requeue(wait)


def plan_reconcile(world: World, settings: Settings | None = None) -> Plan:
    return _Builder(world, settings or Settings()).build()
