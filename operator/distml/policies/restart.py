"""Restart policy: what a failed or lost worker means for the whole group.

Never: any failure fails the job. OnFailure: any failure restarts the group. ExitCode: a signal
death (exit code >= 128: killed, OOM-killed, preempted), a lost pod (its node died or vanished) and
the codes listed as retryable restart the group; any other code is an application error and fails
the job. Every restart counts against runPolicy.backoffLimit.

A worker that exited PEER_LOST lost a peer (the runtime's distml_runtime.peers): never the cause
of a failure, always retryable; the failure is what happened to that peer.
"""

from __future__ import annotations

from dataclasses import dataclass

from distml.api.models import RestartPolicy

PEER_LOST = 76  # distml_runtime.peers.EXIT_PEER_LOST


@dataclass(frozen=True)
class Failure:
    rank: int
    pod: str
    exit_code: int | None  # None: the pod was lost, not exited
    reason: str


@dataclass(frozen=True)
class RestartDecision:
    restart: bool
    reason: str
    message: str


def is_retryable(f: Failure, retryable_codes: list[int]) -> bool:
    if f.exit_code is None or f.exit_code == PEER_LOST:
        return True
    return f.exit_code >= 128 or f.exit_code in retryable_codes


def describe(f: Failure) -> str:
    if f.exit_code is None:
        return f"rank {f.rank} (pod {f.pod}) was lost: {f.reason}"
    return f"rank {f.rank} (pod {f.pod}) exited with code {f.exit_code} ({f.reason})"


def decide_restart(
    failures: list[Failure],
    policy: str,
    retryable_codes: list[int],
    restarts: int,
    backoff_limit: int,
) -> RestartDecision:
    causes = [f for f in failures if f.exit_code != PEER_LOST] or failures
    first = sorted(causes, key=lambda f: f.rank)[0]
    what = describe(first)
    if policy == RestartPolicy.NEVER:
        return RestartDecision(False, "WorkerFailed", f"{what}; restartPolicy is Never")
    if policy == RestartPolicy.EXIT_CODE:
        permanent = [f for f in causes if not is_retryable(f, retryable_codes)]
        if permanent:
            return RestartDecision(
                False,
                "ApplicationError",
                f"{describe(permanent[0])}: an application error, which a restart cannot fix",
            )
    if restarts >= backoff_limit:
        return RestartDecision(
            False,
            "BackoffLimitExceeded",
            f"{what}; already restarted {restarts} times (backoffLimit {backoff_limit})",
        )
    return RestartDecision(
        True,
        "WorkerFailed" if first.exit_code is not None else "PodLost",
        f"{what}; restarting the group ({restarts + 1}/{backoff_limit})",
    )


def backoff_seconds(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff before attempt `attempt` (1-based): base, 2 base, 4 base, ... cap."""
    return float(min(cap, base * 2 ** max(attempt - 1, 0)))
