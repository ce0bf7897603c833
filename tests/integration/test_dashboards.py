"""Every Grafana dashboard panel shows data: Debian's real Prometheus scrapes the operator, a real
DDP training under the launcher, the all-reduce benchmark, the serving server and the local
cluster's simulated dcgm-exporter while TrainingJobs run, restart and queue; then each panel's
query goes through Prometheus's HTTP API and must return at least one finite value."""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from distml.api.serving import serving_job_manifest
from distml.localcluster import faults
from distml_runtime.distenv import free_port

from .helpers import wait_for
from .jobs import create, live_pods, patch_spec, status, training_job, wait_phase

REPO = Path(__file__).resolve().parents[2]
JOB = "digits"  # the TrainingJob's name, and the training process's DISTML_JOB_NAME
# What Grafana puts in place of its variables when it sends a query
VARIABLES = {"$__rate_interval": "1m", "$__range": "15m", "$trainingjob": JOB}


def _start(name: str, args: list[str], logs: Path, **env: str) -> subprocess.Popen:
    out = open(logs / f"{name}.log", "ab")  # noqa: SIM115 (the process owns it)
    return subprocess.Popen(
        args,
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **env},
        start_new_session=True,
    )


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return bytes(resp.read())


def _up(port: int) -> bool:
    try:
        return bool(_get(f"http://127.0.0.1:{port}/metrics"))
    except OSError:
        return False


@pytest.fixture(scope="module")
def exporters(cluster, operator, tmp_path_factory) -> Iterator[dict[str, int]]:
    """The processes whose metrics the dashboards read, each on its own port."""
    tmp = tmp_path_factory.mktemp("exporters")
    ports = {k: free_port() for k in ("training", "allreduce", "serving", "serving_http", "dcgm")}
    py = sys.executable
    procs = [
        _start(
            "training",
            [py, "-m", "distml_runtime.launch", "--metrics-port", str(ports["training"]), "--",
             "python", "-m", "distml_runtime.train.ddp", "--steps", "1000000", "--step-delay",
             "0.05", "--checkpoint-dir", str(tmp / "ckpt"), "--checkpoint-every", "20"],
            tmp, DISTML_JOB_NAME=JOB, PET_NPROC_PER_NODE="2",
        ),
        _start(
            "allreduce",
            [py, "-m", "distml_runtime.bench.allreduce", "--nproc", "2", "-b", "1K", "-e", "64K",
             "-f", "8", "-n", "5", "--algo", "ring", "--metrics-port", str(ports["allreduce"]),
             "--serve-seconds", "900", "--no-progress"],
            tmp,
        ),
        _start(
            "serving",
            [py, "-m", "distml_runtime.serve", "--host", "127.0.0.1",
             "--port", str(ports["serving_http"]), "--metrics-port", str(ports["serving"])],
            tmp,
        ),
        _start("dcgm", [py, "-m", "distml.localcluster", "dcgm", "--port",
                        str(ports["dcgm"])], tmp),
    ]  # fmt: skip
    ports["operator"] = operator.metrics_port
    stop = threading.Event()

    def traffic() -> None:  # a steady trickle of inference requests (Open Inference Protocol)
        tensor = {"name": "input", "datatype": "FP32", "shape": [2, 64], "data": [0.5] * 128}
        body = json.dumps({"inputs": [tensor]}).encode()
        url = f"http://127.0.0.1:{ports['serving_http']}/v2/models/digits/infer"
        while not stop.wait(0.05):
            with contextlib.suppress(OSError):
                urllib.request.urlopen(url, data=body, timeout=5).read()

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    try:
        for name in ("training", "allreduce", "serving", "dcgm", "operator"):
            wait_for(f"{name} /metrics", lambda n=name: _up(ports[n]), timeout=180, every=0.5)
        yield ports
    finally:
        stop.set()
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture(scope="module")
def prometheus(cluster, exporters, tmp_path_factory) -> Iterator[int]:
    tmp = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    scrape = [
        {
            "job_name": name,
            "scrape_interval": "1s",
            "static_configs": [{"targets": [f"127.0.0.1:{exporters[name]}"]}],
        }
        for name in ("operator", "training", "allreduce", "serving", "dcgm")
    ]
    (tmp / "prometheus.yml").write_text(yaml.safe_dump({"scrape_configs": scrape}))
    proc = _start(
        "prometheus",
        [str(REPO / "bin" / "prometheus"), f"--config.file={tmp / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        cluster.logs,
    )  # fmt: skip
    try:
        wait_for("prometheus ready", lambda: _ready(port), timeout=60, every=0.5)
        # the counters' starting values must be scraped before the activity the panels count
        wait_for(
            "a scrape of every target",
            lambda: _query(port, "count(up == 1)") == [float(len(scrape))],
            timeout=60,
            every=0.5,
        )
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _ready(port: int) -> bool:
    try:
        return b"Ready" in _get(f"http://127.0.0.1:{port}/-/ready")
    except OSError:
        return False


def _query(port: int, expr: str) -> list[float]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    doc = json.loads(_get(url))
    assert doc["status"] == "success", doc
    return [float(r["value"][1]) for r in doc["data"]["result"]]


def panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, expr with Grafana's variables filled in) for every target."""
    out = []
    for path in sorted((REPO / "charts" / "distml" / "dashboards").glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel["targets"]:
                expr = target["expr"]
                for var, value in sorted(VARIABLES.items(), key=lambda kv: -len(kv[0])):
                    expr = expr.replace(var, value)
                assert "$" not in expr, f"unfilled variable in {expr}"
                out.append((path.stem, panel["title"], expr))
    return out


def _cluster_activity(cluster, core, custom, ns: str, pool: dict) -> None:
    """A job that is admitted (queue wait), runs (time to Running) and restarts once (restarts),
    beside one that asks for more GPUs than the pool has and stays Queued; two that resize."""
    job = training_job(JOB, replicas=2, gpus=8, node_selector=pool, restartPolicy="ExitCode")
    create(custom, ns, job)
    wait_phase(custom, ns, JOB, "Running")
    create(custom, ns, training_job("queued", replicas=3, gpus=8, node_selector=pool))
    wait_phase(custom, ns, "queued", "Queued")
    victim = live_pods(core, ns, JOB)[0].metadata.name
    faults.exit_pod(cluster, ns, victim, 137, "OOMKilled")
    wait_for("a restart", lambda: (s := status(custom, ns, JOB)).get("restarts", 0) >= 1 and s)
    wait_phase(custom, ns, JOB, "Running")
    # An elastic job scaled down (elastic resizes) and a fixed one resized (new generations),
    # CPU-only beside the GPU jobs.
    for name, spec in (("elastic", {"elastic": {"minReplicas": 1, "maxReplicas": 2}}),
                       ("fixed", {})):  # fmt: skip
        body = training_job(name, replicas=2, gpus=0, node_selector=pool, **spec)
        body["spec"]["template"]["spec"]["tolerations"] = [{"operator": "Exists"}]
        create(custom, ns, body)
        wait_phase(custom, ns, name, "Running")
        patch_spec(custom, ns, name, {"replicas": 1})
        wait_for(f"{name} resized", lambda n=name: status(custom, ns, n).get("resizes", 0) >= 1)
    # A ServingJob rolled out once (rollout duration) on the same nodes, without GPUs.
    served = ("distml.io", "v1alpha1", ns, "servingjobs", "served")

    def serving(image: str) -> dict:
        template = {"spec": {"nodeSelector": pool, "tolerations": [{"operator": "Exists"}],
                             "containers": [{"name": "server", "image": image}]}}  # fmt: skip
        return serving_job_manifest("served", 1, template=template, rollout={"drainSeconds": 0})

    def available() -> dict:
        st = custom.get_namespaced_custom_object(*served).get("status") or {}
        return st if st.get("phase") == "Available" else {}

    custom.create_namespaced_custom_object(*served[:4], serving("distml-runtime:v1"))
    first = wait_for("the ServingJob Available", available)
    custom.patch_namespaced_custom_object(*served, {"spec": serving("distml-runtime:v2")["spec"]})
    before = first["currentRevision"]
    wait_for("its rollout complete", lambda: (s := available()) and s["currentRevision"] != before)


def test_every_dashboard_panel_returns_data(
    prometheus, cluster, core, custom, namespace, node_pool
):
    selector, _ = node_pool(2)
    _cluster_activity(cluster, core, custom, namespace, selector)
    queries = panel_queries()
    assert len(queries) >= 20

    def empty() -> list[str]:
        missing = []
        for board, title, expr in queries:
            values = _query(prometheus, expr)
            if not any(math.isfinite(v) for v in values):
                missing.append(f"{board} / {title}: {expr} -> {values}")
        return missing

    last: list[str] = []

    def all_have_data() -> bool:
        nonlocal last
        last = empty()
        return not last

    try:
        wait_for("every panel to have data", all_have_data, timeout=120, every=3)
    except AssertionError:
        pytest.fail("panels without data:\n" + "\n".join(last))
