"""The floor the operator's client is measured against: creates sent with plain aiohttp over one
pool of kept-alive connections, with the kubeconfig's TLS and credentials and no client library
in between. `bench/startup.py` creates its direct baseline this way; `bench/client.py` shows
what the library under the operator's client costs against it."""

from __future__ import annotations

import json
import ssl
from typing import Any

import aiohttp
from kubernetes import client


class PlainCreator:
    def __init__(self, api: client.ApiClient, connections: int = 64) -> None:
        cfg = api.configuration
        self.host = cfg.host
        self.ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
        if cfg.cert_file:
            self.ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
        self.headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token := cfg.get_api_key_with_prefix("authorization", alias="BearerToken"):
            self.headers["Authorization"] = token
        self.connections = connections
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> PlainCreator:
        connector = aiohttp.TCPConnector(ssl=self.ctx, limit=self.connections)
        self.session = aiohttp.ClientSession(connector=connector)
        return self

    async def __aexit__(self, *_: Any) -> None:
        assert self.session is not None
        await self.session.close()

    async def create(self, obj: dict) -> str | None:
        """None when created, else the API's answer."""
        assert self.session is not None
        plural = {"Pod": "pods", "Service": "services"}[obj["kind"]]
        url = f"{self.host}/api/v1/namespaces/{obj['metadata']['namespace']}/{plural}"
        async with self.session.post(url, data=json.dumps(obj), headers=self.headers) as resp:
            answer = await resp.read()
            return None if resp.status < 300 else f"{resp.status} {answer[:200]!r}"
