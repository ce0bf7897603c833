"""Benchmark: the operator's client (distml.kube.AsyncWriter: kubernetes.aio for configuration,
credentials, TLS and the connection pool; raw bodies and orjson on top) against plain aiohttp
and against the library's own calls, on the real local API server.

    make bench-client

Two operations the operator does in bulk: creating a 64-pod gang at once, and LISTing every pod
of a cluster (2,000 here). Each is timed (wall clock and the client's own CPU) for
- `plain`: plain aiohttp, no library (`plainhttp`; creates only): the floor;
- `ours`: distml.kube.AsyncWriter;
- `aio typed`: kubernetes.aio's CoreV1Api, which returns model objects;
- `aio raw`: kubernetes.aio's ApiClient for auth, TLS and retries, answers left unparsed by it
  and read with orjson (what the operator would do on top of it).
Medians of the repeats, and each against the first row measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
from kubernetes import client, config
from kubernetes.aio import client as aio_client
from kubernetes.aio import config as aio_config
from plainhttp import PlainCreator

from distml.kube import AsyncWriter
from distml.localcluster.cluster import LocalCluster
from distml.localcluster.nodes import ClusterShape, NodeShape

REPO = Path(__file__).resolve().parents[1]


def say(msg: str) -> None:
    print(f"[bench-client] {msg}", file=sys.stderr, flush=True)


def pod(ns: str, name: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"bench": "client"}},
        "spec": {
            "nodeSelector": {"bench.distml.io/nowhere": "true"},  # stays Pending: no churn
            "containers": [{"name": "c", "image": "busybox:1.36", "command": ["sleep", "1"]}],
        },
    }


async def timed(fn: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    await fn()
    return time.perf_counter() - wall, time.process_time() - cpu


class Clients:
    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig
        self.sync = config.new_client_from_config(str(kubeconfig))
        self.core = client.CoreV1Api(self.sync)

    async def start(self) -> None:
        self.plain = await PlainCreator(self.sync).__aenter__()
        self.ours = AsyncWriter(str(self.kubeconfig))
        cfg = aio_client.Configuration()
        await aio_config.load_kube_config(
            config_file=str(self.kubeconfig), client_configuration=cfg
        )
        self.aio = aio_client.ApiClient(cfg)
        self.aio_core = aio_client.CoreV1Api(self.aio)

    async def close(self) -> None:
        await self.plain.__aexit__()
        await self.ours.close()
        await self.aio.close()

    # --- one gang of creates, each way ------------------------------------------------------

    async def create_plain(self, bodies: list[dict]) -> None:
        done = await asyncio.gather(*map(self.plain.create, bodies))
        assert not any(done), done

    async def create_ours(self, bodies: list[dict]) -> None:
        done = await asyncio.gather(*(self.ours.create(b) for b in bodies))
        assert all(d is True for d in done), done

    async def create_aio_typed(self, bodies: list[dict]) -> None:
        await asyncio.gather(
            *(self.aio_core.create_namespaced_pod(b["metadata"]["namespace"], b) for b in bodies)
        )

    async def _raw(self, method: str, path: str, body: dict | None = None) -> bytes:
        params = self.aio.param_serialize(
            method=method,
            resource_path=path,
            header_params={"Content-Type": "application/json", "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        if asyncio.iscoroutine(params):
            params = await params
        resp = await self.aio.call_api(*params)
        data = await resp.read()
        if resp.status >= 300:
            raise RuntimeError(f"{method} {path}: {resp.status} {data[:200]!r}")
        return data

    async def create_aio_raw(self, bodies: list[dict]) -> None:
        await asyncio.gather(
            *(
                self._raw("POST", f"/api/v1/namespaces/{b['metadata']['namespace']}/pods", b)
                for b in bodies
            )
        )

    # --- one LIST of every pod, each way ----------------------------------------------------

    async def list_ours(self) -> int:
        items, _ = await self.ours.list_objects("/api/v1/pods")
        return len(items)

    async def list_aio_typed(self) -> int:
        return len((await self.aio_core.list_pod_for_all_namespaces(limit=500)).items)

    async def list_aio_raw(self) -> int:
        return len(orjson.loads(await self._raw("GET", "/api/v1/pods?limit=5000"))["items"])


def fresh_namespace(core: client.CoreV1Api, name: str) -> str:
    core.create_namespace({"metadata": {"name": name}})
    while not core.list_namespaced_service_account(name).items:
        time.sleep(0.1)
    return name


def drop(core: client.CoreV1Api, name: str) -> None:
    core.delete_collection_namespaced_pod(name, grace_period_seconds=0)
    core.delete_namespace(name)


def table(rows: list[tuple[str, list[tuple[float, float]]]]) -> None:
    base_wall = statistics.median(w for w, _ in rows[0][1])
    base_cpu = statistics.median(c for _, c in rows[0][1])
    print(f"{'client':<12} {'wall s':>8} {'x 1st':>7} {'cpu s':>8} {'x 1st':>7}")
    for name, runs in rows:
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        print(
            f"{name:<12} {wall:>8.3f} {wall / base_wall:>6.2f}x {cpu:>8.3f} {cpu / base_cpu:>6.2f}x"
        )


async def run(c: Clients, repeats: int, gang: int, listed: int) -> None:
    await c.start()
    try:
        ways = [
            ("plain", c.create_plain, None),
            ("ours", c.create_ours, c.list_ours),
            ("aio typed", c.create_aio_typed, c.list_aio_typed),
            ("aio raw", c.create_aio_raw, c.list_aio_raw),
        ]
        creates: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in ways}
        for r in range(repeats):
            for name, create, _ in ways:  # interleaved, so drift hits every way alike
                ns = fresh_namespace(c.core, f"bench-client-{r}-{name.replace(' ', '-')}")
                bodies = [pod(ns, f"p-{i:03d}") for i in range(gang)]
                creates[name].append(await timed(lambda b=bodies, f=create: f(b)))
                drop(c.core, ns)
        print(f"\n{gang} pods created at once ({repeats} repeats, medians):")
        table(list(creates.items()))

        ns = fresh_namespace(c.core, "bench-client-list")
        for start in range(0, listed, 200):
            await c.create_ours([pod(ns, f"l-{i:04d}") for i in range(start, start + 200)])
        listers = [(name, list_all) for name, _, list_all in ways if list_all is not None]
        lists: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in listers}
        for _ in range(repeats):
            for name, list_all in listers:
                lists[name].append(await timed(list_all))
        print(f"\nLIST of every pod ({listed}+ pods, {repeats} repeats, medians):")
        table(list(lists.items()))
        drop(c.core, ns)
    finally:
        await c.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--gang", type=int, default=64)
    ap.add_argument("--list", type=int, default=2000)
    args = ap.parse_args()
    cluster = LocalCluster(root=REPO / ".cluster-bench", bin_dir=REPO / "bin")
    cluster.up(ClusterShape(nodes=1), NodeShape())
    try:
        asyncio.run(run(Clients(cluster.kubeconfig), args.repeats, args.gang, args.list))
    finally:
        cluster.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
