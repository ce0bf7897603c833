"""The operator's own client and informer (distml.kube, distml.informer) against the real API
server: a LIST longer than one page, a watch whose history is gone (410), throttling (429)."""

from __future__ import annotations

import asyncio

from kubernetes import client
from prometheus_client import REGISTRY

from distml.informer import Informer
from distml.kube import AsyncWriter
from distml.localcluster import faults

from . import jobs
from .helpers import settled, wait_for


def _configmap(core, namespace: str, name: str) -> None:
    core.create_namespaced_config_map(namespace, {"metadata": {"name": name}})


def _names(items) -> set[str]:
    return {o["metadata"]["name"] for o in items}


class _Pages(AsyncWriter):
    """Counts the GETs a LIST takes."""

    gets = 0

    async def _send(self, method, path, body=None, params=None, **kw):
        if method == "GET":
            self.gets += 1
        return await super()._send(method, path, body, params, **kw)


async def _until(what: str, check, timeout: float = 30.0) -> None:
    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


def test_a_list_longer_than_a_page_comes_whole_and_can_be_watched_from(cluster, core, namespace):
    for i in range(23):
        _configmap(core, namespace, f"cm-{i:02d}")
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    total = len(core.list_namespaced_config_map(namespace).items)  # with kube-root-ca.crt

    async def go() -> None:
        writer = _Pages(str(cluster.kubeconfig))
        try:
            items, version = await writer.list_objects(path, page=5)
            assert _names(items) >= {f"cm-{i:02d}" for i in range(23)} and len(items) == total
            assert writer.gets == -(-total // 5)  # one request per page
            seen: list[tuple[str, str]] = []
            watch = asyncio.create_task(
                writer.watch_objects(
                    path, version, lambda k, o: seen.append((k, o["metadata"]["name"]))
                )
            )
            _configmap(core, namespace, "cm-after")
            await _until("the watch to see what came after the LIST", lambda: seen)
            watch.cancel()
            assert seen == [("ADDED", "cm-after")]  # nothing listed comes again
        finally:
            await writer.close()

    asyncio.run(go())


def _expired(resource: str) -> float:
    labels = {"resource": resource, "reason": "expired"}
    return REGISTRY.get_sample_value("distml_watch_relists_total", labels) or 0.0


def test_a_watch_whose_history_is_gone_lists_again_and_misses_nothing(
    cluster, api, core, namespace
):
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    _configmap(core, namespace, "before")

    async def listed_version() -> str:
        writer = AsyncWriter(str(cluster.kubeconfig))
        try:
            return (await writer.list_objects(path))[1]
        finally:
            await writer.close()

    old = asyncio.run(listed_version())
    # The API server's watch cache starts over when it does, and etcd forgets all before now.
    cluster.start_process("kube-apiserver", cluster.stop_process("kube-apiserver"))
    faults.compact_history(cluster)
    wait_for("the API server to take writes", lambda: _try(_configmap, core, namespace, "during"))
    expired = _expired("configmaps")

    async def go() -> None:
        writer = AsyncWriter(str(cluster.kubeconfig))
        store: dict[str, dict] = {}
        lists: list[int] = []

        def on_list(items) -> None:
            lists.append(len(items))
            store.clear()
            store.update((o["metadata"]["name"], o) for o in items)

        def on_event(kind: str, obj: dict) -> None:
            if kind == "DELETED":
                store.pop(obj["metadata"]["name"], None)
            else:
                store[obj["metadata"]["name"]] = obj

        informer = Informer(writer, path, on_list=on_list, on_event=on_event)
        task = asyncio.create_task(informer.run(version=old))
        try:
            await _until("the LIST after the 410", lambda: lists)
            assert {"before", "during"} <= store.keys()
            _configmap(core, namespace, "after")
            await _until("the watch after that LIST", lambda: "after" in store)
            assert len(lists) == 1 and _expired("configmaps") == expired + 1
        finally:
            task.cancel()
            await writer.close()

    asyncio.run(go())
    settled(core, namespace)


def _try(fn, *args) -> bool:
    try:
        fn(*args)
        return True
    except client.ApiException:
        return False


def test_a_gang_that_meets_throttling_still_starts_once(
    cluster, operator, core, custom, namespace, node_pool
):
    """The API server at a few requests in flight (429 to the rest, with Retry-After): the
    64-pod gang's creates are sent again until they land; none twice, no restart."""
    sel, _ = node_pool(8)
    throttled = operator.value("distml_api_throttled_total")
    argv = cluster.stop_process("kube-apiserver")
    low = ["--enable-priority-and-fairness=false", "--max-requests-inflight=10",
           "--max-mutating-requests-inflight=2"]  # fmt: skip
    cluster.start_process("kube-apiserver", [*argv, *low])
    try:
        wait_for("the operator ready again", lambda: operator.probe()[0] == 200, timeout=60)
        jobs.create(custom, namespace, jobs.training_job("wide", 64, 1, sel))
        pods = jobs.running_pods(core, namespace, "wide", 64, timeout=180)
        assert sorted(p.metadata.name for p in pods) == sorted(
            f"wide-worker-{r}-0" for r in range(64)
        )
        st = jobs.wait_phase(custom, namespace, "wide", "Running")
        assert st["restarts"] == 0 and st["gangAttempts"] == 1
        assert operator.value("distml_api_throttled_total") > throttled
    finally:
        cluster.stop_process("kube-apiserver")
        cluster.start_process("kube-apiserver", argv)
    settled(core, namespace)
