"""Outcomes more than one policy reaches: finish the job, restart its group, release a gang
and queue it again, create the pods still missing. Pure."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from distml import podstate, rendering
from distml.api.models import Admission, CleanPodPolicy, Phase
from distml.podstate import iso
from distml.policies.restart import PEER_LOST, Failure, backoff_seconds, decide_restart
from distml.trainingjob.model import Outcome, PhaseChange, PodDeletion, Signals
from distml.trainingjob.observe import Observation

Obj = dict[str, Any]


def deletions(
    o: Observation,
    pods: Iterable[Obj],
    only_live: bool = False,
    force: frozenset[str] = frozenset(),
) -> tuple[PodDeletion, ...]:
    out = []
    for pod in pods:
        if only_live and podstate.is_terminal(pod):
            continue
        dead = o.node_dead(pod) or pod["metadata"]["name"] in force
        # A pod already deleting on a healthy node finishes on its own; one on a dead node
        # never will, since no kubelet answers: remove it from the API (force).
        if podstate.is_deleting(pod) and not dead:
            continue
        out.append(PodDeletion(pod["metadata"]["name"], force=dead))
    return tuple(out)


def cleanup(o: Observation) -> tuple[PodDeletion, ...]:
    """What the job's cleanPodPolicy deletes once it has finished."""
    policy = o.spec.run_policy.clean_pod_policy
    if policy == CleanPodPolicy.ALL:
        return deletions(o, o.pods)
    if policy == CleanPodPolicy.RUNNING:
        return deletions(o, o.pods, only_live=True)
    return ()


def finish(
    o: Observation,
    phase: Phase,
    reason: str,
    message: str,
    status: Mapping[str, Any] | None = None,
    **more: Any,
) -> Outcome:
    """The job is over: its phase, the completion time, its pods cleaned up as its policy says,
    and a look again at its TTL (then the finished policy deletes it)."""
    event_type = "Normal" if phase == Phase.SUCCEEDED else "Warning"
    return Outcome(
        phase=PhaseChange(phase, reason, message, event_type),
        status={**(status or {}), "completion_time": o.stamp, "queue_position": None},
        delete=cleanup(o),
        requeue_after=o.spec.run_policy.ttl_seconds_after_finished,
        **more,
    )


def next_generation(o: Observation) -> dict[str, Any]:
    """The current generation is over: its admission no longer holds GPUs in the ledger, and
    its pods become stale, deleted before the next is admitted."""
    return {"restart_generation": o.generation + 1, "queue_position": None, "workers": None}


def _again_after(o: Observation, attempts: int) -> tuple[float, dict[str, Any]]:
    """A new generation, tried again after the backoff for its `attempts`: (the backoff, the
    status fields that record it)."""
    wait = backoff_seconds(
        attempts, o.settings.backoff_base_seconds, o.settings.backoff_cap_seconds
    )
    at = iso(o.now + dt.timedelta(seconds=wait))
    return wait, {**next_generation(o), "next_attempt_time": at}


def restart(
    o: Observation,
    failures: list[Failure],
    force: frozenset[str] = frozenset(),
    status: Mapping[str, Any] | None = None,
) -> Outcome:
    """Failed or lost workers: restart the whole group after a backoff (none when every cause
    is a lost pod), or fail the job when its restart policy or backoffLimit says so. `force`:
    pods deleted with no grace period; `status`: more fields to record with the decision."""
    decision = decide_restart(
        failures,
        o.spec.restart_policy,
        o.spec.exit_codes.retryable,
        o.status.restarts,
        o.spec.run_policy.backoff_limit,
    )
    if not decision.restart:
        return finish(o, Phase.FAILED, decision.reason, decision.message, status)
    restarts = o.status.restarts + 1
    wait, again = _again_after(o, restarts)
    causes = [f for f in failures if f.exit_code != PEER_LOST]
    if causes and all(f.exit_code is None for f in causes):
        # Pods lost with their node (gone, NotReady, silent): not the job's own failure, and its
        # next gang avoids that node; no backoff (backoffLimit still bounds the restarts).
        wait, again = 0.0, {**again, "next_attempt_time": o.stamp}
    return Outcome(
        phase=PhaseChange(
            Phase.RESTARTING,
            decision.reason,
            f"{decision.message}; next attempt in {wait:.0f}s",
            "Warning",
        ),
        status={**(status or {}), **again, "restarts": restarts},
        delete=deletions(o, o.current, force=force),
        requeue_after=wait,
        signals=Signals(restarted=True),
    )


def release(o: Observation, reason: str, message: Callable[[float], str], **more: Any) -> Outcome:
    """Deletes the generation's pods and queues the gang again after a backoff that grows with
    its attempts; `message` says why, given the backoff."""
    wait, again = _again_after(o, max(o.status.gang_attempts, 1))
    return Outcome(
        phase=PhaseChange(Phase.QUEUED, reason, message(wait), "Warning"),
        status={**again, "queued_time": o.stamp},
        delete=deletions(o, o.current),
        requeue_after=wait,
        **more,
    )


def create_missing(o: Observation, adm: Admission, present: set[int], want: int) -> tuple[Obj, ...]:
    """The pods of the admitted generation not there yet, each pinned to its node, and the
    Service (creating it again is a no-op)."""
    made = [rendering.render_headless_service(o.meta, o.spec)]
    for rank in range(want):
        if rank not in present:
            node = adm.nodes[rank] if rank < len(adm.nodes) else ""
            made.append(rendering.render_worker_pod(o.meta, o.spec, rank, o.generation, node))
    return tuple(made)
