"""The local cluster for integration tests: started once per session when it is not up, reused
when it is; every test gets its own namespace, deleted afterwards."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from distml.localcluster.cluster import LocalCluster
from distml.localcluster.nodes import ClusterShape, NodeShape

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    c = LocalCluster(root=REPO / ".cluster", bin_dir=REPO / "bin")
    started = not c.is_up()
    c.up(ClusterShape(nodes=int(os.environ.get("NODES", "4"))), NodeShape())
    yield c
    if started and not os.environ.get("DISTML_KEEP_CLUSTER"):
        c.down()


@pytest.fixture(scope="session")
def api(cluster: LocalCluster) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(cluster.kubeconfig))


@pytest.fixture
def core(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


@pytest.fixture
def namespace(core: client.CoreV1Api, request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"t-{request.node.name[:40].lower().replace('_', '-').strip('-')}-{uuid.uuid4().hex[:5]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name, propagation_policy="Background")


POOL_LABEL = "distml.io/test-pool"


@pytest.fixture
def node_pool(core: client.CoreV1Api, cluster: LocalCluster):
    """Makes private simulated GPU nodes for one test, labelled so its pods can select them and no
    other test's pods land there; deletes them afterwards. Returns (label selector dict, names)."""
    from distml.localcluster.nodes import render_gpu_node

    from .helpers import wait_for

    made: list[str] = []

    def make(count: int, gpus: int = 8, nodes_per_block: int = 2) -> tuple[dict, list[str]]:
        pool = uuid.uuid4().hex[:6]
        shape = ClusterShape(
            nodes=count, nodes_per_block=nodes_per_block, name_prefix=f"pool-{pool}"
        )
        names = []
        for i in range(count):
            body = render_gpu_node(shape, NodeShape(gpus=gpus), i)
            body["metadata"]["labels"][POOL_LABEL] = pool
            core.create_node(body)
            names.append(body["metadata"]["name"])
            made.append(body["metadata"]["name"])

        def all_ready() -> bool:
            ns = core.list_node(label_selector=f"{POOL_LABEL}={pool}").items
            return len(ns) == count and all(
                any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])
                for n in ns
            )

        wait_for(f"{count} pool nodes Ready", all_ready, timeout=60)
        return {POOL_LABEL: pool}, names

    yield make
    for name in made:
        try:
            core.delete_node(name)
        except client.ApiException as err:
            if err.status != 404:
                raise
