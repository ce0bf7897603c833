"""The operator core's own rules: its caches kept from watch events agree with what they are kept
for, a decision on its way is not taken back, and progress writes keep to their budget."""

from __future__ import annotations

import asyncio
import copy

import pytest

from distml import podstate
from distml.handlers.operator import (
    COUNT_WRITE_SECONDS,
    COUNT_WRITES_PER_SECOND,
    Operator,
    count_write_interval,
)
from distml.kube import AsyncWriter
from distml.reconcile import Settings

from .builders import make_job, make_node, stamp


def test_the_not_ready_nodes_kept_from_events_are_those_the_node_cache_says():
    op = Operator(AsyncWriter("unused"), Settings())
    op.replace("/api/v1/nodes", [make_node("a"), make_node("b", ready=False)])
    events = [
        ("ADDED", make_node("c", ready=False)),  # joins NotReady
        ("MODIFIED", make_node("c")),  # turns Ready
        ("MODIFIED", make_node("a", ready=False)),  # goes NotReady
        ("MODIFIED", make_node("a", ready=False)),  # stays so
        ("DELETED", make_node("b", ready=False)),  # removed while NotReady
        ("ADDED", make_node("d")),
    ]
    for event_type, node in events:
        op.on_node(event_type, copy.deepcopy(node))
        recomputed = {n for n, obj in op.nodes.items() if not podstate.node_ready(obj)}
        assert op.not_ready == recomputed, (event_type, node["metadata"]["name"])
    assert op.not_ready == {"a"}


class HeldStatusWriter:
    """The API, as far as a reconcile sees it: the first status write waits until let go (as
    one queued behind a burst of creates); everything else is answered at once."""

    def __init__(self, jobs):
        self.jobs = {j["metadata"]["name"]: j for j in jobs}
        self.let_go = asyncio.Event()
        self.held = None
        self.created: list[str] = []
        self.statuses: dict[str, dict] = {}

    async def request(self, method, path, body=None, patch="merge", level=0):
        if method != "PATCH" or not path.endswith("/status"):
            return 201, {}
        name = path.split("/")[-2]
        if self.held is None:
            self.held = name
            await self.let_go.wait()
        job = self.jobs[name]
        version = str(int(job["metadata"]["resourceVersion"]) + 1)
        job = {**job, "metadata": {**job["metadata"], "resourceVersion": version},
               "status": body["status"]}  # fmt: skip
        self.jobs[name] = job
        self.statuses[name] = body["status"]
        return 200, job

    async def create(self, obj):
        self.created.append(obj["metadata"]["name"])
        return True


def test_a_decision_on_its_way_is_not_taken_back_by_the_version_it_was_made_from():
    # Two jobs that each want the one node's 8 GPUs. "a" is seen first and admitted. While its
    # status write is still on its way, "b" is seen, older and so ahead of "a" in the queue
    # were "a" not admitted; and the version "a" was decided from is met again (a LIST of the
    # jobs, or kopf's event, brings it), saying nothing of the admission. "b" must still find
    # the GPUs taken, not be admitted into the same GPUs.
    jobs = []
    for name, uid, version, created in (("a", "uid-a", "5", 0), ("b", "uid-b", "6", -10)):
        job = make_job(name).replicas(1).gpus(8).obj()
        job["metadata"].update(uid=uid, resourceVersion=version, creationTimestamp=stamp(created))
        jobs.append(job)

    async def scenario():
        writer = HeldStatusWriter(jobs)
        op = Operator(writer, Settings())
        op.replace("/api/v1/nodes", [make_node("n0", 8)])
        op.replace("/api/v1/namespaces", [{"metadata": {"name": "team"}}])
        op.replace("/api/v1/pods", [])
        op.on_job(copy.deepcopy(jobs[0]))
        first = asyncio.create_task(op.reconcile(("TrainingJob", "team", "a")))
        for _ in range(100):
            await asyncio.sleep(0.01)
            if writer.held:
                break
        assert writer.held == "a"  # decided; its record not written yet
        op.on_job(copy.deepcopy(jobs[1]))
        op.on_job(copy.deepcopy(jobs[0]))  # the version it was decided from, met again
        await op.reconcile(("TrainingJob", "team", "b"))
        writer.let_go.set()
        await first
        return writer

    writer = asyncio.run(scenario())
    assert writer.statuses["a"]["phase"] == "Creating"
    assert writer.statuses["a"]["admission"]["nodes"] == ["n0"]
    assert writer.statuses["b"]["phase"] == "Queued"
    assert "admission" not in writer.statuses["b"] or not writer.statuses["b"]["admission"]
    assert [n for n in writer.created if n.startswith("b")] == []


@pytest.mark.parametrize("starting", [1, 2, 5, 10, 11, 50, 200, 1000])
def test_count_only_writes_keep_to_one_per_job_a_second_and_the_operators_budget(starting):
    interval = count_write_interval(starting)
    assert interval >= COUNT_WRITE_SECONDS  # no job more often than once a second
    assert starting / interval <= COUNT_WRITES_PER_SECOND + 1e-9  # all together, the budget
    # ...and no slower than the budget needs: a few jobs show progress every second.
    assert interval == COUNT_WRITE_SECONDS or starting / interval >= COUNT_WRITES_PER_SECOND - 1e-9
