"""Which failures a restart can fix, per policy; and the backoff between attempts."""

from __future__ import annotations

import pytest

from distml.policies.restart import PEER_LOST, Failure, backoff_seconds, decide_restart

LOST = Failure(0, "p0", None, "its node n0 is NotReady")


@pytest.mark.parametrize(
    ("policy", "failure", "restarts", "restart", "reason"),
    [
        ("ExitCode", Failure(1, "p1", 137, "OOMKilled"), 0, True, "WorkerFailed"),
        ("ExitCode", Failure(1, "p1", 143, "Error"), 0, True, "WorkerFailed"),
        ("ExitCode", Failure(1, "p1", 42, "Error"), 0, True, "WorkerFailed"),  # listed retryable
        ("ExitCode", Failure(1, "p1", 1, "Error"), 0, False, "ApplicationError"),
        ("ExitCode", LOST, 0, True, "PodLost"),
        ("OnFailure", Failure(1, "p1", 1, "Error"), 0, True, "WorkerFailed"),
        ("OnFailure", LOST, 3, False, "BackoffLimitExceeded"),
        ("Never", Failure(1, "p1", 137, "Error"), 0, False, "WorkerFailed"),
    ],
)
def test_decide_restart(policy, failure, restarts, restart, reason):
    d = decide_restart([failure], policy, [42, 75], restarts, backoff_limit=3)
    assert (d.restart, d.reason) == (restart, reason)


def test_one_application_error_among_signals_fails_the_job():
    d = decide_restart(
        [Failure(0, "p0", 137, "Error"), Failure(1, "p1", 2, "Error")], "ExitCode", [], 0, 3
    )
    assert not d.restart and "rank 1 (pod p1) exited with code 2" in d.message


def test_backoff_doubles_up_to_the_cap():
    assert [backoff_seconds(a, 10, 60) for a in range(1, 6)] == [10, 20, 40, 60, 60]


def test_a_rank_that_lost_its_peer_is_never_the_cause():
    """Its peer's failure is: the job fails for the application error it hides, and a restart
    names the killed rank, not the ranks that merely lost it."""
    lost = [Failure(0, "p0", PEER_LOST, "Error"), Failure(2, "p2", PEER_LOST, "Error")]
    d = decide_restart([*lost, Failure(1, "p1", 1, "Error")], "ExitCode", [75], 0, 3)
    assert not d.restart and d.reason == "ApplicationError" and "rank 1" in d.message
    d = decide_restart([*lost, Failure(1, "p1", 137, "Error")], "ExitCode", [75], 0, 3)
    assert d.restart and "rank 1" in d.message and "137" in d.message
    d = decide_restart(lost, "ExitCode", [75], 0, 3)  # the lost peer left no trace: retryable
    assert d.restart
