"""One worker per job: a reconcile that raises is retried after a growing delay and logged
naming the job, and a wake coalesces with the next reconcile."""

from __future__ import annotations

import asyncio
import logging

import pytest

from distml.handlers.kinds import TRAINING
from distml.handlers.registry import JobWorkers


def test_a_failing_reconcile_is_logged_naming_the_job_and_retried(caplog):
    calls: list[tuple[str, str, str]] = []

    async def reconcile(key):
        calls.append(key)
        if len(calls) == 1:
            raise RuntimeError("the API server is away")
        return None

    async def go() -> None:
        workers = JobWorkers(reconcile)
        workers.ensure(("TrainingJob", "team", "llm"))
        for _ in range(100):  # the retry comes after 1 s
            if len(calls) >= 2:
                break
            await asyncio.sleep(0.05)
        await workers.stop()

    with caplog.at_level(logging.ERROR, logger="distml.registry"):
        asyncio.run(go())
    assert calls == [("TrainingJob", "team", "llm")] * 2
    (record,) = caplog.records
    assert record.getMessage() == "reconcile of TrainingJob team/llm failed; retrying in 1.0s"


@pytest.mark.parametrize(
    ("status", "waits"),
    [
        ({"phase": "Queued"}, True),
        ({"phase": "Restarting"}, True),
        ({"phase": "Running", "reason": "WaitingForCapacity"}, True),  # elastic, running smaller
        ({"phase": "Running", "reason": "Running"}, False),
        ({"phase": "Succeeded"}, False),
    ],
)
def test_a_training_job_that_waits_for_gpus_is_woken_when_they_free_up(status, waits):
    assert TRAINING.waits(status) is waits
