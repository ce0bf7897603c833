"""The reconcile decision for one TrainingJob: from what is (the job, its pods, the nodes, the
cluster's GPU pods, every other gang's demand on the ledger, the time) to what should be done
(pods and a Service to create, pods to delete, the new status, Events to post, when to look
again). Pure; level-triggered: the same world gives the same plan, so repeating it or restarting
the operator never duplicates anything.

Decide, record, act: every decision lands in the new status (an admission with the node of each
rank, a restart's new generation and reason, a release), and the handler writes that status
before it creates or deletes anything. An operator that dies between the two finds the decision
in status and carries it on: it creates the admitted pods that are missing, or deletes the pods
of a generation that is no longer current.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from distml import admission, labels, podpolicy, podstate, rendering
from distml.api.models import (
    FINISHED,
    Admission,
    CleanPodPolicy,
    Condition,
    Phase,
    PreflightStatus,
    RankPlacement,
    TrainingJobSpec,
    TrainingJobStatus,
)
from distml.conditions import set_phase_condition
from distml.nodefit import NodeFilter
from distml.policies import disruption
from distml.policies.restart import Failure, backoff_seconds, decide_restart

Obj = dict[str, Any]
EXIT_PREFLIGHT_SLOW = 3  # distml_runtime.preflight.EXIT_SLOW: busbw below the job's minimum


@dataclass(frozen=True)
class Settings:
    backoff_base_seconds: float = 10.0
    backoff_cap_seconds: float = 300.0
    queued_recheck_seconds: float = 15.0
    backfill_seconds: float = 300.0  # see distml.admission: how long a head lets others pass
    pod_rules: podpolicy.PodRules = field(default_factory=podpolicy.PodRules)


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
    resized: bool = False
    refused: bool = False  # a create the API refused released the gang
    disrupted: bool = False  # pods on nodes NotReady in a disruption: no restart for them
    preflight_busbw_gbps: float | None = None  # measured by this generation's preflight


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(s: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00")) if s else None


def dump_status(status: TrainingJobStatus) -> Obj:
    """The status as the API stores it; unset fields are null, which a merge patch removes."""
    return status.model_dump(by_alias=True, mode="json")


def read_status(job: Obj) -> TrainingJobStatus:
    return TrainingJobStatus.model_validate(job.get("status") or {})


# Status fields that only count what exists (they change with every pod a gang starts): a change
# to these alone may wait a moment and go out with the next, the phase never does.
COUNT_FIELDS = frozenset(
    {"replicas", "active", "ready", "succeeded", "failed", "readyText", "gpus", "ranks"}
)


def only_counts_changed(job: Obj, status: Obj) -> bool:
    old = dump_status(read_status(job))
    return old != status and all(
        old.get(k) == v for k, v in status.items() if k not in COUNT_FIELDS
    )


def status_changed(job: Obj, status: Obj) -> bool:
    """Whether `status` says something the job's stored status does not. The stored one has no
    nulls (a merge patch removes them), so both are compared as the model reads them."""
    return status != dump_status(read_status(job))


@dataclass
class World:
    """What the handler gathered for one reconcile."""

    job: Obj
    pods: list[Obj]  # the job's pods, every generation
    nodes: list[Obj]
    cluster_pods: list[Obj]  # every live GPU pod in the cluster, for the ledger
    now: dt.datetime
    gangs: list[admission.Gang] = field(default_factory=list)  # every other job's demand
    namespace: Obj | None = None  # the job's namespace (its Pod Security level)
    # What the API refused when this generation's objects were last created (quoted messages).
    refused: list[str] = field(default_factory=list)
    # NotReady nodes still held after a disruption ended (see distml.policies.disruption.hold).
    held_nodes: frozenset[str] = frozenset()
    # disruption.find(nodes), when the caller keeps it (it changes only when a node does).
    disruption: disruption.Disruption | None = None


def _current_admission(status: TrainingJobStatus) -> Admission | None:
    adm = status.admission
    if adm is not None and adm.restart_generation == status.restart_generation:
        return adm
    return None


def demand(job: Obj) -> admission.Gang | None:
    """The job's demand on the GPU ledger, from its spec and status; None when it wants none
    (finished, suspended, being deleted). Reads raw fields: the handler calls it per job event."""
    meta, spec, status = job["metadata"], job.get("spec") or {}, job.get("status") or {}
    phase = status.get("phase")
    if meta.get("deletionTimestamp") or phase in FINISHED:
        return None
    if (spec.get("runPolicy") or {}).get("suspend"):
        return None
    generation = int(status.get("restartGeneration") or 0)
    adm = status.get("admission") or {}
    admitted: tuple[str, ...] | None = None
    replicas, gpus = int(spec.get("replicas", 1)), int(spec.get("gpusPerReplica", 0))
    if adm and int(adm.get("restartGeneration", -1)) == generation:
        replicas, gpus = int(adm.get("replicas", replicas)), int(adm.get("gpusPerReplica", gpus))
        admitted = tuple(adm.get("nodes") or ()) or ("",) * replicas
    elif phase in (Phase.CREATING, Phase.RUNNING) and status.get("admittedTime"):
        admitted = ("",) * replicas  # admitted by an operator that kept no admission record
    nodes = NodeFilter.of((spec.get("template") or {}).get("spec") or {})
    if gpus:
        nodes = nodes.tolerating(rendering.GPU_TOLERATION)  # what render_worker_pod adds
    return admission.Gang(
        uid=str(meta.get("uid", "")),
        namespace=str(meta.get("namespace", "")),
        name=str(meta["name"]),
        replicas=replicas,
        gpus_per_replica=gpus,
        generation=generation,
        nodes=nodes,
        priority=int(spec.get("priority", 0)),
        created=str(meta.get("creationTimestamp", "")),
        restarting=phase == Phase.RESTARTING,
        waiting_since=parse_time(status.get("queuedTime")),
        admitted=admitted,
    )


class _Builder:
    def __init__(self, w: World, settings: Settings) -> None:
        self.w = w
        self.settings = settings
        self.meta = w.job["metadata"]
        self.spec = TrainingJobSpec.model_validate(w.job["spec"])
        self.old = read_status(w.job)
        self.status = self.old.model_copy(deep=True)
        self.plan = Plan()
        self.now = iso(w.now)
        self.nodes = {n["metadata"]["name"]: n for n in w.nodes}
        self.disruption = w.disruption if w.disruption is not None else disruption.find(w.nodes)
        # Pods of an earlier job of the same name are not ours, whatever their labels say; the
        # garbage collector removes them, and creating ours waits until their names are free.
        uid = self.meta.get("uid")
        self.pods = [p for p in w.pods if admission.owner_uid(p) == uid]
        self.predecessors = [
            p
            for p in w.pods
            if admission.owner_uid(p) != uid
            and (p["metadata"].get("labels") or {}).get(labels.MANAGED_BY) == labels.OPERATOR
        ]

    # --- helpers ---------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        return self.status.restart_generation

    def phase(
        self,
        phase: Phase,
        reason: str,
        message: str,
        event_type: str = "Normal",
        announce_reason_once: bool = False,
    ) -> None:
        """Sets the phase and its condition; an Event when they change (with
        `announce_reason_once`, only when the reason does: its message counts something)."""
        changed = self.old.phase != phase or self.old.message != message
        if announce_reason_once:
            changed = self.old.phase != phase or self.old.reason != reason
        self.status.phase = phase
        self.status.reason = reason
        self.status.message = message
        conditions = set_phase_condition(
            [c.model_dump(by_alias=True) for c in self.status.conditions],
            phase.value,
            reason,
            message,
            self.now,
        )
        self.status.conditions = [Condition.model_validate(c) for c in conditions]
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

    def held(self, pod: Obj) -> bool:
        """A live pod whose node is NotReady because of a disruption (not lost; see
        distml.policies.disruption)."""
        node = podstate.node_name(pod)
        return (
            not podstate.is_terminal(pod)
            and node in self.nodes
            and not podstate.node_ready(self.nodes[node])
            and (self.disruption.covers(node) or node in self.w.held_nodes)
        )

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

    def counts(self) -> None:
        """What exists now: pods of the current generation, and the GPUs that every pod of the
        job still holds, old generations included, until they are gone."""
        cur = self.current()
        live = [p for p in self.pods if not podstate.is_terminal(p)]
        active = [p for p in live if not podstate.is_deleting(p)]
        ready = [p for p in cur if podstate.is_ready(p) and not podstate.is_deleting(p)]
        shown = sorted(
            {id(p): p for p in [*cur, *live]}.values(),
            key=lambda p: (-podstate.generation(p), podstate.rank(p)),
        )
        st = self.status
        st.replicas = len(cur)
        st.active = len(active)
        st.ready = len(ready)
        st.succeeded = sum(podstate.phase(p) == "Succeeded" for p in cur)
        st.failed = sum(podstate.phase(p) == "Failed" for p in cur)
        st.ready_text = f"{len(ready)}/{self.spec.replicas}"
        st.gpus = sum(podstate.gpu_request(p) for p in live if podstate.node_name(p))
        st.ranks = [
            RankPlacement(
                rank=podstate.rank(p), pod=p["metadata"]["name"], node=podstate.node_name(p)
            )
            for p in shown
        ]

    def finish(self, phase: Phase, reason: str, message: str) -> None:
        self.phase(phase, reason, message, "Normal" if phase == Phase.SUCCEEDED else "Warning")
        self.status.completion_time = self.now
        self.status.queue_position = None
        self.cleanup()
        ttl = self.spec.run_policy.ttl_seconds_after_finished
        if ttl is not None:
            self.requeue(ttl)  # then finished() deletes it

    def cleanup(self) -> None:
        policy = self.spec.run_policy.clean_pod_policy
        if policy == CleanPodPolicy.ALL:
            self.delete(self.pods)
        elif policy == CleanPodPolicy.RUNNING:
            self.delete(self.pods, only_live=True)

    def new_generation(self) -> None:
        """The current generation is over: its admission no longer holds GPUs in the ledger,
        and its pods become stale, deleted before the next is admitted."""
        self.status.restart_generation = self.generation + 1
        self.status.queue_position = None

    # --- the state machine ------------------------------------------------------------------

    def build(self) -> Plan:
        self.status.observed_generation = self.meta.get("generation")
        self.status.selector = f"distml.io/job-name={self.meta['name']}"
        phase = self.old.phase
        if phase in FINISHED:
            self.finished()
        elif self.spec.run_policy.suspend:
            self.suspend()
        else:
            if phase == Phase.SUSPENDED:
                self.new_generation()
                self.status.start_time = None
                self.status.next_attempt_time = None
                self.phase(Phase.QUEUED, "Resumed", "resumed; waiting for room for the gang")
            if not self.deadline_passed():
                self.active()
        self.counts()
        self.plan.status = dump_status(self.status)
        return self.plan

    def finished(self) -> None:
        self.cleanup()
        ttl = self.spec.run_policy.ttl_seconds_after_finished
        done = parse_time(self.status.completion_time)
        if ttl is not None and done is not None:
            left = (done + dt.timedelta(seconds=ttl) - self.w.now).total_seconds()
            if left <= 0:
                self.plan.delete_job = True
            else:
                self.requeue(left)

    def suspend(self) -> None:
        self.delete(self.pods, only_live=True)
        if self.old.phase != Phase.SUSPENDED:
            self.phase(Phase.SUSPENDED, "Suspended", "suspended: pods deleted until resumed")
        self.status.start_time = None
        self.status.queue_position = None

    def deadline_passed(self) -> bool:
        limit = self.spec.run_policy.active_deadline_seconds
        started = parse_time(self.status.start_time)
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
        self.status.completion_time = self.now
        return True

    def active(self) -> None:
        self.delete(self.stale())  # delete() skips pods already going on healthy nodes
        cur = self.current()
        adm = _current_admission(self.status)
        if adm is None and cur and self.status.admitted_time:
            # Admitted by an operator that kept no admission record: adopt what it started.
            adm = self.status.admission = Admission(
                restart_generation=self.generation,
                replicas=self.spec.replicas,
                gpus_per_replica=self.spec.gpus_per_replica,
                time=self.status.admitted_time,
            )
        if adm is None:
            self.start_gang()
            return
        if self.w.refused:
            self.release_refused(cur)
            return
        if self.spec.elastic is None and adm.replicas != self.spec.replicas:
            self.resize(adm, cur)
            return
        if self.preflight(cur):
            return
        failures = self.failures(cur)
        if failures:
            self.on_failures(failures, cur)
            return
        if any(self.held(p) for p in cur):
            # Their nodes went NotReady with most others: an outage, not a loss. Hold on.
            message = self.disruption.message if self.disruption else (
                "nodes NotReady in a disruption that has ended have not reported yet: waiting "
                f"up to {disruption.RECOVERY_GRACE_SECONDS:.0f}s for them before taking them "
                "for lost"
            )  # fmt: skip
            self.phase(Phase(self.old.phase or Phase.RUNNING), "NodesDisrupted", message,
                       "Warning", announce_reason_once=True)  # fmt: skip
            self.plan.disrupted = True
            self.requeue(5)
            return
        want = self.spec.replicas if self.spec.elastic else adm.replicas
        if len(cur) < want or any(podstate.is_deleting(p) for p in cur):
            present = {podstate.rank(p) for p in cur if not podstate.is_deleting(p)}
            if self.old.phase == Phase.RUNNING:
                lost = [
                    Failure(
                        r,
                        rendering.pod_name(self.meta["name"], r, self.generation),
                        None,
                        "the pod was deleted",
                    )
                    for r in range(want)
                    if r not in present
                ]
                self.on_failures(lost, cur)
                return
            self.create_missing(present, adm, want)
        succeeded = [p for p in cur if podstate.phase(p) == "Succeeded"]
        if len(succeeded) == want:
            self.finish(Phase.SUCCEEDED, "Succeeded", f"all {want} workers exited 0")
            return
        running = [p for p in cur if podstate.phase(p) == "Running"]
        if len(running) + len(succeeded) == want and not any(podstate.is_deleting(p) for p in cur):
            if self.old.phase != Phase.RUNNING:
                admitted = parse_time(self.status.admitted_time)
                if admitted is not None:
                    self.plan.started_seconds = (self.w.now - admitted).total_seconds()
            msg = f"{len(running)} workers running"
            if succeeded:
                msg += f", {len(succeeded)} finished"
            self.phase(Phase.RUNNING, "Running", msg)
            self.status.next_attempt_time = None
            return
        self.wait_gang(cur, want)

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
        recorded = self.status.preflight
        if recorded is None or recorded.restart_generation != self.generation:
            keys = ("passed", "busBwGbps", "algBwGbps", "bytes", "worldSize", "slowestLink",
                    "slowestLinkGbps", "links", "message", "measuredAt")  # fmt: skip
            self.status.preflight = PreflightStatus.model_validate(
                {
                    **{k: verdict[k] for k in keys if k in verdict},
                    "restartGeneration": self.generation,
                }
            )
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
            elif not podstate.is_terminal(pod) and self.node_dead(pod) and not self.held(pod):
                node = podstate.node_name(pod)
                why = "gone" if node not in self.nodes else "NotReady"
                out.append(Failure(podstate.rank(pod), name, None, f"its node {node} is {why}"))
        return out

    def on_failures(self, failures: list[Failure], cur: list[Obj]) -> None:
        decision = decide_restart(
            failures,
            self.spec.restart_policy,
            self.spec.exit_codes.retryable,
            self.status.restarts,
            self.spec.run_policy.backoff_limit,
        )
        if not decision.restart:
            self.finish(Phase.FAILED, decision.reason, decision.message)
            return
        restarts = self.status.restarts + 1
        wait = backoff_seconds(
            restarts, self.settings.backoff_base_seconds, self.settings.backoff_cap_seconds
        )
        self.status.restarts = restarts
        self.new_generation()
        self.status.next_attempt_time = iso(self.w.now + dt.timedelta(seconds=wait))
        self.delete(cur)
        self.phase(
            Phase.RESTARTING,
            decision.reason,
            f"{decision.message}; next attempt in {wait:.0f}s",
            "Warning",
        )
        self.plan.restarted = True
        self.requeue(wait)

    def resize(self, adm: Admission, cur: list[Obj]) -> None:
        """spec.replicas changed under an admitted gang: one new generation at the new size,
        admitted like a new gang; neither a failure nor a restart against backoffLimit."""
        self.status.resizes += 1
        self.new_generation()
        self.status.next_attempt_time = None
        self.delete(cur)
        self.phase(
            Phase.RESTARTING,
            "Resized",
            f"spec.replicas changed from {adm.replicas} to {self.spec.replicas}: replacing the "
            f"{len(cur)} pods with a new generation of {self.spec.replicas}",
        )
        self.plan.resized = True
        self.requeue(1.0)

    def release_gang(self, cur: list[Obj]) -> float:
        """Deletes the generation's pods and queues the gang again after a backoff that grows
        with its attempts; returns the backoff."""
        attempts = max(self.status.gang_attempts, 1)
        wait = backoff_seconds(
            attempts, self.settings.backoff_base_seconds, self.settings.backoff_cap_seconds
        )
        self.delete(cur)
        self.new_generation()
        self.status.next_attempt_time = iso(self.w.now + dt.timedelta(seconds=wait))
        self.status.queued_time = self.now
        return wait

    def release_refused(self, cur: list[Obj]) -> None:
        """The API refused some of the gang's objects: a half gang would hold its GPUs for
        nothing, so release it whole and try again after a backoff."""
        wait = self.release_gang(cur)
        first = self.w.refused[0]
        more = f" (and {len(self.w.refused) - 1} more)" if len(self.w.refused) > 1 else ""
        self.plan.refused = True
        self.phase(
            Phase.QUEUED,
            "CreateRefused",
            f"the API refused the gang's pods: {first}{more}; released {len(cur)} pods, "
            f"next attempt in {wait:.0f}s",
            "Warning",
        )
        self.requeue(wait)

    def start_gang(self) -> None:
        if self.predecessors:
            # A job deleted and created again under this name: its pods hold our pod names
            # until the garbage collector, or the operator's own orphan sweep, deletes them.
            self.phase(
                Phase.QUEUED,
                "WaitingForPredecessor",
                f"waiting for {len(self.predecessors)} pods of an earlier TrainingJob named "
                f"{self.meta['name']} to go",
            )
            self.requeue(1.0)
            return
        if any(not podstate.is_terminal(p) or podstate.is_deleting(p) for p in self.stale()):
            if self.old.phase not in (Phase.RESTARTING, Phase.QUEUED):
                self.phase(
                    Phase.QUEUED,
                    "WaitingForPods",
                    "waiting for the previous generation's pods to go",
                )
            self.requeue(1.0)
            return
        next_at = parse_time(self.status.next_attempt_time)
        if next_at is not None and next_at > self.w.now:
            self.requeue((next_at - self.w.now).total_seconds())
            if not self.old.phase:
                self.phase(Phase.QUEUED, "BackingOff", "backing off before the next attempt")
            return
        if not self.status.queued_time:
            self.status.queued_time = self.now
        level = podpolicy.namespace_level(self.w.namespace, self.settings.pod_rules.default_level)
        violations = podpolicy.check_template(
            self.spec.template, level, self.settings.pod_rules, self.spec.gang.scheduler_name
        )
        if violations:
            more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
            self.phase(
                Phase.QUEUED,
                "PodPolicyViolation",
                f"no pod created: the template breaks the {level!r} pod policy of namespace "
                f"{self.meta['namespace']}: {violations[0]}{more}",
                "Warning",
            )
            self.requeue(self.settings.queued_recheck_seconds * 4)
            return
        job = {**self.w.job, "status": {**dump_status(self.status), "admission": None}}
        mine = demand(job)
        assert mine is not None
        # Its admission is what is being decided, whatever an older status says (an operator
        # that kept no admission record left admittedTime on a gang whose pods are all gone).
        mine = dataclasses.replace(mine, admitted=None)
        verdict = admission.plan_queue(
            [*self.w.gangs, mine],
            self.w.nodes,
            self.w.cluster_pods,
            self.w.now,
            self.settings.backfill_seconds,
            until=mine.uid,
        )[mine.uid]
        if not verdict.admitted:
            kind = "Warning" if verdict.reason in ("NoNodeFits", "NoMatchingNode") else "Normal"
            self.status.queue_position = verdict.position
            self.phase(Phase.QUEUED, verdict.reason, verdict.message, kind)
            self.requeue(self.settings.queued_recheck_seconds)
            return
        queued = parse_time(self.status.queued_time)
        if queued is not None:
            self.plan.queue_wait_seconds = (self.w.now - queued).total_seconds()
        adm = self.status.admission = Admission(
            restart_generation=self.generation,
            replicas=self.spec.replicas,
            gpus_per_replica=self.spec.gpus_per_replica,
            nodes=[n for n in verdict.nodes if n],
            time=self.now,
        )
        self.status.queued_time = None
        self.status.queue_position = None
        self.status.admitted_time = self.now
        self.status.gang_attempts += 1
        self.status.next_attempt_time = None
        if not self.status.start_time:
            self.status.start_time = self.now
        self.create_missing(set(), adm, self.spec.replicas)
        self.phase(
            Phase.CREATING,
            "Admitted",
            f"admitted ({verdict.message}); creating {self.spec.replicas} pods",
        )
        self.requeue(self.spec.gang.timeout_seconds)

    def create_missing(self, present: set[int], adm: Admission, want: int) -> None:
        """The pods of the admitted generation not there yet, each pinned to its node, and the
        Service (creating it again is a no-op)."""
        self.plan.create.append(rendering.render_headless_service(self.meta, self.spec))
        for rank in range(want):
            if rank not in present:
                node = adm.nodes[rank] if rank < len(adm.nodes) else ""
                self.plan.create.append(
                    rendering.render_worker_pod(self.meta, self.spec, rank, self.generation, node)
                )

    def wait_gang(self, cur: list[Obj], want: int) -> None:
        admitted = parse_time(self.status.admitted_time) or self.w.now
        limit = self.spec.gang.timeout_seconds
        left = (admitted + dt.timedelta(seconds=limit) - self.w.now).total_seconds()
        if self.old.phase == Phase.RUNNING or left > 0:
            if self.old.phase not in (Phase.CREATING, Phase.RUNNING):
                self.phase(Phase.CREATING, "Creating", "waiting for every worker to run")
            self.requeue(left if left > 0 else self.settings.queued_recheck_seconds)
            return
        running = sum(podstate.phase(p) == "Running" for p in cur)
        wait = self.release_gang(cur)
        self.plan.gang_timeout = True
        self.phase(
            Phase.QUEUED,
            "GangTimeout",
            f"only {running}/{want} workers were Running after "
            f"{limit}s; released every pod, next attempt in {wait:.0f}s",
            "Warning",
        )
        self.requeue(wait)


def plan_reconcile(world: World, settings: Settings | None = None) -> Plan:
    return _Builder(world, settings or Settings()).build()
