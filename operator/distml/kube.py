"""The only module that talks to the Kubernetes API, for everything the operator (and the process
node agent) does besides kopf's own job watch. It sits on the maintained asyncio client,
`kubernetes.aio`: the library loads the kubeconfig or the pod's ServiceAccount (exec plugins and
token refresh included), builds the TLS context and owns the connection pool. What this module
adds is what the library leaves to its caller: answers as plain JSON dicts as the API sends them
(camelCase, parsed with orjson), which is what the pure modules read; LIST pagination; a
throttled request (429) sent again after its Retry-After; a 409 told apart from our own object;
and watches as streams of events."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import random
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlencode
from urllib.request import getproxies_environment

import aiohttp
import orjson
from kubernetes.aio import client as aio_client
from kubernetes.aio import config as aio_config
from kubernetes.aio.client import rest as aio_rest

from distml import metrics
from distml.api.models import GROUP, PLURAL, VERSION

Obj = dict[str, Any]
# A request the API server throttles (429) is sent again after its Retry-After, this many times
# at most; then the caller sees the 429 (a reconcile is retried as a whole).
THROTTLE_ATTEMPTS = 8
RETRY_AFTER_CAP_SECONDS = 10.0
# Objects per LIST page: a LIST of every pod of a large cluster comes in pieces the API server
# can serve without building one huge answer (and without its 410 for a too-large snapshot).
LIST_PAGE = 500
TIMEOUT = aiohttp.ClientTimeout(total=60)
KEEPALIVE_SECONDS = 60


# Which requests go first when every connection is busy: a status write (the record of a decision,
# and what `kubectl get` shows), a delete (it frees GPUs) or a read, before the creates of gangs
# and their Events (hundreds queue at once when many jobs start, and a status waiting behind them
# is seconds stale). Events stay in line with the creates: a reconcile waits for its Events, and
# one that waited for every other job's creates would hold its job's next decision back.
URGENT, BULK = 0, 1


class Slots:
    """`size` slots for requests in flight. A slot freed goes to the waiter of the most urgent
    level (the lowest number), first come first served within a level; a waiter is never
    passed over by one of its own level or a less urgent one."""

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []  # a heap
        self._arrivals = 0

    async def acquire(self, level: int = URGENT) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        self._arrivals += 1
        handed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (level, self._arrivals, handed))
        try:
            await handed
        except asyncio.CancelledError:
            if handed.done() and not handed.cancelled():
                self.release()  # handed a slot in the moment it was cancelled: pass it on
            raise  # a cancelled waiter left in the heap is skipped by release

    def release(self) -> None:
        while self._waiters:
            _, _, handed = heapq.heappop(self._waiters)
            if not handed.done():
                handed.set_result(None)
                return
        self._free += 1

    @contextlib.asynccontextmanager
    async def held(self, level: int = URGENT) -> AsyncIterator[None]:
        await self.acquire(level)
        try:
            yield
        finally:
            self.release()


class NotServed(RuntimeError):
    """The API server does not serve this resource (404 for a LIST): its CRD is not installed."""


def _passing_denial(code: int, text: str) -> bool:
    """A 403 that passes: from the authorizer (`User "..." cannot create resource ...`), or a
    namespace whose default ServiceAccount is not made yet; not one from admission (Pod
    Security, a quota, a webhook), which refuses what was asked, not who asked."""
    message = api_message(text)
    return code == 403 and ('" cannot ' in message or "error looking up service account" in message)


def api_message(text: str) -> str:
    """The `message` of a Kubernetes Status answer, else the text itself."""
    try:
        return str(json.loads(text).get("message") or text)
    except (ValueError, AttributeError):
        return text


class WatchExpired(Exception):
    """The server no longer holds the history a watch asked for: LIST again."""


def retry_after(header: str | None) -> float:
    """Seconds to wait before sending a throttled request again: the server's Retry-After
    (seconds; the API server says 1), capped, with jitter so that a gang's throttled creates do
    not all come back in the same instant."""
    try:
        wait = float(header) if header else 1.0
    except ValueError:
        wait = 1.0
    return min(max(wait, 0.0), RETRY_AFTER_CAP_SECONDS) + random.uniform(0, 0.5)


async def connect(kubeconfig: str | None = None, pool: int = 64) -> aio_client.ApiClient:
    """The library's client, configured by the library: from `kubeconfig` when given, else from
    the pod's ServiceAccount, else from $KUBECONFIG or ~/.kube/config. `pool` connections at
    most, kept alive (a TLS handshake costs more than a queued request)."""
    cfg = aio_client.Configuration()
    if kubeconfig is None:
        try:
            aio_config.load_incluster_config(client_configuration=cfg)
        except aio_config.ConfigException:
            await aio_config.load_kube_config(client_configuration=cfg)
    else:
        await aio_config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    cfg.connection_pool_maxsize = pool
    # aiohttp's trust_env (the library's default) looks for ~/.netrc and the proxy variables in
    # a worker thread on every request: two thread hops that made a gang's creates 1.3x the time
    # of plain aiohttp. Only a machine with a proxy set in its environment pays for them (the
    # API server is then reached through it, as client-go does).
    cfg.client_session_kwargs = {"trust_env": bool(getproxies_environment())}
    api = aio_client.ApiClient(cfg)
    api.rest_client = _KeptAlive(cfg)  # its pool is made on first use
    return api


class _KeptAlive(aio_rest.RESTClientObject):
    """The library's REST client with idle connections kept for KEEPALIVE_SECONDS, under the
    API server's 90 s, rather than aiohttp's 15 s: a burst of gangs after a quiet spell finds
    its connections open, instead of a TLS handshake on both ends for each of them (about 5 %
    of the operator's CPU in a burst of 50 gangs, sampled with py-spy, went to handshakes)."""

    def _create_connector(self) -> aiohttp.TCPConnector:
        return aiohttp.TCPConnector(
            limit=self.maxsize, ssl=self.ssl_context, keepalive_timeout=KEEPALIVE_SECONDS
        )


class AsyncWriter:
    """Creates, reads and deletes objects, and follows pods and nodes, on the event loop: a gang
    of 64 pods goes out as 64 concurrent requests without 64 threads fighting over the GIL, and
    a watch event costs one JSON parse (orjson's: parsing was a third of the operator's CPU in a
    burst of gangs with the standard library's, and the library's typed models cost 2x the time
    of a create; `make bench-client`).

    The connection to the API server is made on first use, from `kubeconfig` (see `connect`)."""

    def __init__(self, kubeconfig: str | None = None, concurrency: int = 64) -> None:
        self.kubeconfig = kubeconfig
        self._slots = Slots(concurrency)
        self._pool = concurrency
        self._api: aio_client.ApiClient | None = None
        self._connecting = asyncio.Lock()

    async def api(self) -> aio_client.ApiClient:
        if self._api is None:
            async with self._connecting:
                if self._api is None:
                    self._api = await connect(self.kubeconfig, self._pool)
        return self._api

    async def _headers(self, api: aio_client.ApiClient, content_type: str) -> dict[str, str]:
        """The request's headers, credentials from the library (a refreshed token when the
        kubeconfig or the ServiceAccount rotates it)."""
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        await api.update_params_for_auth(headers, None, ["BearerToken"], "", "", None)
        return headers

    async def _call(
        self,
        method: str,
        path: str,
        body: Obj | None = None,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
        timeout: aiohttp.ClientTimeout = TIMEOUT,
    ) -> aiohttp.ClientResponse:
        """One request through the library's connection pool; the caller reads or releases
        the answer."""
        api = await self.api()
        url = api.configuration.host.rstrip("/") + path
        if params:
            url += "?" + urlencode(params)
        headers = await self._headers(api, content_type)
        answer = await api.rest_client.request(
            method, url, headers=headers, body=body, _request_timeout=timeout
        )
        return answer.response

    async def create(self, obj: Obj) -> bool | str:
        """Creates a Pod or Service: True when created, False when it is there already and ours
        (a repeated plan); otherwise what the API refused, quoting its reason: a policy (quota,
        Pod Security admission, a webhook) or a name taken by an object that is not ours.
        Throttling and server errors raise: the reconcile is retried."""
        ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        plural = {"Pod": "pods", "Service": "services"}[obj["kind"]]
        status, body = await self._send(
            "POST", f"/api/v1/namespaces/{ns}/{plural}", obj, level=BULK
        )
        if status < 300:
            return True
        text = body.decode(errors="replace")
        if status == 409:
            owner = {r["uid"] for r in obj["metadata"].get("ownerReferences") or []}
            code, existing = await self.request("GET", f"/api/v1/namespaces/{ns}/{plural}/{name}")
            if code == 404:  # gone again in between: the next reconcile creates it
                raise RuntimeError(f"creating {obj['kind']} {name}: it exists and vanished")
            theirs = {r.get("uid") for r in existing["metadata"].get("ownerReferences") or []}
            if code < 300 and owner & theirs:
                return False
            return f"{obj['kind']} {name} already exists and is not owned by this job"
        if status in (408, 429) or status >= 500 or _passing_denial(status, text):
            # Retried as they are: throttling, a server error, RBAC that does not let the
            # operator create this (a starting API server's authorizer, or a broken install), a
            # namespace too new for its ServiceAccount: no reason to give up the admission.
            raise RuntimeError(f"creating {obj['kind']} {name}: {status} {text}")
        return f"{obj['kind']} {name}: {api_message(text)}"

    async def _send(
        self,
        method: str,
        path: str,
        body: Obj | None = None,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
        level: int = URGENT,
    ) -> tuple[int, bytes]:
        """One request: (HTTP status, body), waiting for a slot at `level` (see Slots).
        Throttled (429), it is sent again after the server's Retry-After, up to
        THROTTLE_ATTEMPTS times, holding no slot while it waits."""
        for attempt in range(THROTTLE_ATTEMPTS):
            async with self._slots.held(level):
                resp = await self._call(method, path, body, params, content_type)
                try:
                    answer = await resp.read()
                finally:
                    resp.release()
                if resp.status != 429 or attempt == THROTTLE_ATTEMPTS - 1:
                    return resp.status, answer
                wait = retry_after(resp.headers.get("Retry-After"))
            metrics.API_THROTTLED.inc()
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    async def get_job(self, namespace: str, name: str, plural: str = PLURAL) -> Obj | None:
        """A job as the API server has it now; None when it is gone."""
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{plural}/{name}"
        status, job = await self.request("GET", path)
        if status == 404:
            return None
        if status >= 300:
            raise RuntimeError(f"reading {plural}/{name}: {status} {job.get('message')}")
        return job

    async def delete_job(self, namespace: str, name: str, plural: str = PLURAL) -> None:
        """Deletes a job, its pods after it (the garbage collector's background propagation)."""
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{plural}/{name}"
        status, answer = await self.request("DELETE", path, {"propagationPolicy": "Background"})
        if status >= 300 and status != 404:
            raise RuntimeError(f"deleting {plural}/{name}: {status} {answer.get('message')}")

    async def delete_pod(self, namespace: str, name: str, force: bool) -> None:
        path = f"/api/v1/namespaces/{namespace}/pods/{name}"
        status, answer = await self._send(
            "DELETE", path, {"gracePeriodSeconds": 0} if force else {}
        )
        if status >= 300 and status != 404:
            raise RuntimeError(f"deleting pod {name}: {status} {answer.decode(errors='replace')}")

    async def request(
        self,
        method: str,
        path: str,
        body: Obj | None = None,
        patch: str = "merge",
        level: int = URGENT,
    ) -> tuple[int, Obj]:
        """Any other call, e.g. a merge PATCH of a status: (HTTP status, JSON answer)."""
        kind = f"application/{patch}-patch+json" if method == "PATCH" else "application/json"
        status, answer = await self._send(method, path, body, content_type=kind, level=level)
        try:
            return status, dict(orjson.loads(answer)) if answer else {}
        except ValueError:
            return status, {"message": answer.decode(errors="replace")}

    async def list_objects(
        self, path: str, params: dict[str, str] | None = None, page: int = LIST_PAGE
    ) -> tuple[list[Obj], str]:
        """A LIST of `path` (e.g. /api/v1/pods), page by page: its items and the resourceVersion
        to watch from. Every page comes from the snapshot of the first; should the server lose
        that snapshot before the last page (410), the LIST starts over."""
        params = params or {}
        while True:
            items: list[Obj] = []
            query = {**params, "limit": str(page)}
            while True:
                status, answer = await self._send("GET", path, params=query)
                if status == 410 and "continue" in query:
                    break  # the snapshot expired between two pages: from the start
                if status >= 300:
                    text = answer.decode(errors="replace")
                    error = NotServed if status == 404 else RuntimeError
                    raise error(f"listing {path}: {status} {text}")
                doc = orjson.loads(answer)
                items.extend(doc["items"])
                more = doc["metadata"].get("continue")
                if not more:
                    return items, str(doc["metadata"]["resourceVersion"])
                query = {**params, "limit": str(page), "continue": more}

    async def watch_objects(
        self, path: str, resource_version: str, on_event: Callable[[str, Obj], None]
    ) -> str:
        """Streams `path`'s changes after `resource_version` into on_event(type, object) until
        the server ends the watch; returns the version to go on from. Raises WatchExpired when
        that version is too old (410 Gone), and the caller must LIST again."""
        params = {
            "watch": "1",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": "300",
        }
        timeout = aiohttp.ClientTimeout(total=None, sock_read=330)
        resp = await self._call("GET", path, params=params, timeout=timeout)
        try:
            if resp.status == 410:
                raise WatchExpired(path)
            if resp.status >= 300:
                raise RuntimeError(f"watching {path}: {resp.status} {await resp.text()}")
            async for line in resp.content:
                if not line.strip():
                    continue
                event = orjson.loads(line)
                kind, obj = event["type"], event["object"]
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise WatchExpired(path)
                    raise RuntimeError(f"watching {path}: {obj.get('message')}")
                resource_version = obj["metadata"]["resourceVersion"]
                if kind != "BOOKMARK":
                    on_event(kind, obj)
        finally:
            resp.close()  # a watch cut short is not read to its end: its connection goes
        return resource_version

    async def close(self) -> None:
        if self._api is not None:
            await self._api.close()
