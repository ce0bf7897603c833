"""The local cluster for integration tests: started once per session when it is not up, reused
when it is; every test gets its own namespace, deleted afterwards."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from distml.localcluster import processes
from distml.localcluster.cluster import LocalCluster
from distml.localcluster.nodes import ClusterShape, NodeShape

from .procnodes import checkpoints, process_nodes  # noqa: F401 (fixtures for every module)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    c = LocalCluster(root=REPO / ".cluster", bin_dir=REPO / "bin")
    started = not c.is_up()
    c.up(ClusterShape(nodes=int(os.environ.get("NODES", "4"))), NodeShape())
    # A demo's operator would reconcile the tests' jobs too, and its process nodes would add
    # GPUs the tests do not count on.
    processes.stop_all(c.root / "pids", [], only="operator")
    c.sync_process_nodes(0)
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
    slug = re.sub(r"[^a-z0-9-]+", "-", request.node.name[:40].lower().replace("_", "-"))
    name = f"t-{slug.strip('-')}-{uuid.uuid4().hex[:5]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    from .helpers import wait_for

    # Pods are refused until kube-controller-manager has made its default ServiceAccount: a test
    # that restarts the API server at once could otherwise find it missing for as long as the
    # controller manager's own watch backs off after the outage.
    def default_service_account() -> client.V1ServiceAccount | None:
        try:
            return core.read_namespaced_service_account("default", name)
        except client.ApiException as err:
            if err.status != 404:
                raise
            return None

    wait_for(f"{name}'s default ServiceAccount", default_service_account, timeout=60, every=0.1)
    yield name
    core.delete_namespace(name, propagation_policy="Background")


POOL_LABEL = "distml.io/test-pool"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def node_pool(core: client.CoreV1Api, cluster: LocalCluster):
    """Makes private simulated GPU nodes for one test, labelled so its pods can select them and no
    other test's pods land there; deletes them afterwards. Returns (label selector dict, names)."""
    from distml.localcluster.nodes import render_gpu_node

    from .helpers import nodes_usable, wait_for

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

        selector = {POOL_LABEL: pool}
        wait_for(f"{count} pool nodes Ready", lambda: nodes_usable(core, selector, count), 60)
        return selector, names

    yield make
    for name in made:
        try:
            core.delete_node(name)
        except client.ApiException as err:
            if err.status != 404:
                raise


class OperatorProcess:
    """`python -m distml` as a real process against the local cluster; tests may kill it."""

    def __init__(self, kubeconfig: Path, log: Path, *args: str, **env: str) -> None:
        self.kubeconfig, self.log, self.args, self.env = kubeconfig, log, args, env
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_port = self.health_port = 0

    def start(self, wait_ready: bool = True) -> None:
        """Starts it; with `wait_ready`, returns once its readiness probe says its caches are
        synced (else once its probes answer at all)."""
        self.metrics_port, self.health_port = _free_port(), _free_port()
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "DISTML_BACKOFF_BASE_SECONDS": "1",
            "DISTML_BACKOFF_CAP_SECONDS": "4",
            # the examples' and the end-to-end tests' checkpoint folders on the process nodes
            "DISTML_ALLOWED_HOST_PATHS": "/mnt/distml:/mnt/distml-e2e",
            **self.env,
        }
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "distml",
                    "--metrics-port",
                    str(self.metrics_port),
                    "--health-port",
                    str(self.health_port),
                    *self.args,
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            code, _ = self.probe()
            if code == 200 or (code and not wait_ready):
                return
            assert self.proc.poll() is None, f"operator exited; see {self.log}"
            time.sleep(0.1)
        raise TimeoutError(f"operator did not get ready; see {self.log}")

    def probe(self, path: str = "/readyz") -> tuple[int, str]:
        """(HTTP status, body) of one of its probes; (0, why) when it does not answer."""
        import urllib.error
        import urllib.request

        try:
            url = f"http://127.0.0.1:{self.health_port}{path}"
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()
        except OSError as err:
            return 0, str(err)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def metrics(self) -> str:
        import urllib.request

        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        return urllib.request.urlopen(url, timeout=5).read().decode()

    def value(self, name: str, **labels: str) -> float:
        """The sum of a metric's samples (those with `labels`) as the operator exports it now."""
        from prometheus_client.parser import text_string_to_metric_families

        return sum(
            s.value
            for family in text_string_to_metric_families(self.metrics())
            for s in family.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )


@pytest.fixture(scope="session")
def crds(cluster: LocalCluster) -> None:
    cluster.apply_crds(REPO / "crds")


CHART_NAMESPACE = "distml-system"
CHART_RELEASE = "rbac"


def render_chart(*sets: str, release: str = CHART_RELEASE) -> str:
    args = [str(REPO / "bin" / "helm"), "template", release, str(REPO / "charts" / "distml")]
    args += ["-n", CHART_NAMESPACE, "--kube-version", "1.34.4"]
    for item in sets:
        args += ["--set", item]
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="session")
def chart_kubeconfig(cluster: LocalCluster, crds: None) -> Path:
    """A kubeconfig holding a token of the chart's own ServiceAccount, bound by the chart's own
    RBAC: the operator under test has exactly the rights `helm install` would give it."""
    import yaml

    docs = [
        d
        for d in yaml.safe_load_all(render_chart())  # the chart's defaults: 2 peering replicas
        if d
        and d["kind"]
        in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering")
    ]
    cluster.kubectl("create", "namespace", CHART_NAMESPACE, check=False)
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    sa = next(d for d in docs if d["kind"] == "ServiceAccount")["metadata"]["name"]
    return cluster.token_kubeconfig(sa, CHART_NAMESPACE)


@pytest.fixture(scope="session")
def operator(cluster: LocalCluster, chart_kubeconfig: Path) -> Iterator[OperatorProcess]:
    log = cluster.logs / "operator-tests.log"
    start = log.stat().st_size if log.exists() else 0
    op = OperatorProcess(chart_kubeconfig, log)
    op.start()
    yield op
    op.stop()
    # Every test ran under the chart's RBAC; not one request may have been refused by it.
    with open(log, "rb") as f:
        f.seek(start)
        denied = [
            li
            for li in f.read().decode(errors="replace").splitlines()
            if "is forbidden: User" in li and not _restarting(cluster, li)
        ]
    assert not denied, f"the chart's RBAC refused the operator: {denied[:3]}"


def _restarting(cluster: LocalCluster, line: str, settle: float = 10.0) -> bool:
    """Whether a log line falls into an API server restart a test made, or the seconds after:
    a starting API server refuses requests its RBAC cache cannot authorize yet."""
    import datetime as dt

    try:
        t = dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    except ValueError:
        return False
    return any(stop - 1 <= t <= back + settle for stop, back in cluster.outages)


@pytest.fixture
def custom(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)
