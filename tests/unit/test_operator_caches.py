"""The operator's caches kept from watch events agree with what they are kept for."""

from __future__ import annotations

import asyncio
import copy

from distml.handlers.operator import Operator
from distml.reconcile import Settings

from .builders import make_job, make_node, stamp


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
