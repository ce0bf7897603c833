"""The local control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and KWOK
as local processes, plus simulated GPU nodes. `up` is idempotent: while the cluster answers it only
makes the node set match the asked shape."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from distml.localcluster import nodes, pki, processes
from distml.localnode import network, proxy

# Stop order: the simulators and controllers first, etcd last.
STOP_ORDER = ["kwok", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"]
POD_CIDR = "10.64.0.0/12"
AGENT = "node-agent-"  # pid file names of process-node agents: node-agent-0, ...
ROUTER_PROXY = "kube-proxy-router"  # pid file name of the Service router's kube-proxy


def process_node_name(index: int) -> str:
    return nodes.node_name(nodes.ClusterShape(name_prefix="proc-node"), index)


def process_node_index(name: str) -> int:
    prefix = "proc-node-"
    if not name.startswith(prefix) or not name[len(prefix) :].isdigit():
        raise ValueError(f"{name!r} is not a process node (proc-node-NNN)")
    return int(name[len(prefix) :])


_LOCALNODE = Path(__file__).parents[1] / "localnode"


def config_fingerprint() -> str:
    """Changes whenever the flags, the KWOK stages or the process-node agent change, so `up`
    restarts a stale cluster."""
    here = Path(__file__)
    parts = [here, here.with_name("kwok-stages.yaml"), *sorted(_LOCALNODE.glob("*.py"))]
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in parts))
    return digest.hexdigest()[:16]


def _say(msg: str) -> None:
    print(f"[cluster] {msg}", file=sys.stderr, flush=True)


@dataclass
class LocalCluster:
    root: Path  # .cluster/
    bin_dir: Path  # bin/
    # (stopped, answering again) wall-clock times of each API server outage made by stop_process
    outages: list[tuple[float, float]] = field(default_factory=list)
    # How long a silent node stays Ready (the controller manager's --node-monitor-grace-period):
    # 20 s here, for quick tests; Kubernetes' default is 40 s (benchmarks use it).
    node_grace_seconds: int = 20

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def _pids(self) -> Path:
        return self.root / "pids"

    @property
    def _pki(self) -> Path:
        return self.root / "pki"

    @property
    def _state_file(self) -> Path:
        return self.root / "state.json"

    def state(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self._state_file.read_text()))
        except (OSError, ValueError):
            return {}

    def _bin(self, name: str) -> str:
        path = self.bin_dir / name
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run `make tools` (hack/build-tools.sh)")
        return str(path.resolve())

    # --- health --------------------------------------------------------------------------------

    def _ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self._pki / "ca.crt"))
        ctx.load_cert_chain(str(self._pki / "admin.crt"), str(self._pki / "admin.key"))
        return ctx

    def _get(self, url: str, timeout: float = 2.0) -> tuple[int, bytes]:
        ctx = self._ssl() if url.startswith("https") else None
        try:
            with urllib.request.urlopen(url, timeout=timeout, context=ctx) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()
        except (OSError, ValueError):
            return 0, b""

    def api_answers(self) -> bool:
        port = self.state().get("apiserver_port")
        return bool(port) and self._get(f"https://127.0.0.1:{port}/readyz")[0] == 200

    def is_up(self) -> bool:
        alive = processes.running(self._pids)
        fresh = self.state().get("fingerprint") == config_fingerprint()
        return fresh and all(n in alive for n in STOP_ORDER) and self.api_answers()

    def _wait(
        self, what: str, check: Callable[[], object], timeout: float, proc: str | None = None
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            if proc and processes.running_pid(self._pids / f"{proc}.pid") is None:
                raise RuntimeError(
                    f"{proc} exited while waiting for {what}; see {self.logs}/{proc}.log"
                )
            time.sleep(0.2)
        raise TimeoutError(
            f"timed out after {timeout:.0f}s waiting for {what}; logs in {self.logs}"
        )

    def stop_process(self, name: str) -> list[str]:
        """Stops one of the control plane's processes (e.g. kube-apiserver, as in an outage);
        returns its command line, to start it again with `start_process`."""
        pid = processes.running_pid(self._pids / f"{name}.pid")
        if pid is None:
            raise RuntimeError(f"{name} is not running")
        argv = processes.command_line(pid)
        if name == "kube-apiserver":
            self.outages.append((time.time(), float("inf")))
        processes.stop_all(self._pids, [], grace=5.0, only=name)
        return argv

    def start_process(self, name: str, argv: list[str], timeout: float = 60.0) -> None:
        processes.start(name, argv, self._pids, self.logs)
        if name == "kube-apiserver":
            self._wait("kube-apiserver /readyz", self.api_answers, timeout, name)
            if self.outages:
                self.outages[-1] = (self.outages[-1][0], time.time())

    # --- kubectl ---------------------------------------------------------------------------------

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        out = subprocess.run(
            [self._bin("kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            check=False,
        )
        if check and out.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {out.stderr.strip()}")
        return out.stdout

    # --- lifecycle -------------------------------------------------------------------------------

    def up(self, shape: nodes.ClusterShape, node: nodes.NodeShape, timeout: float = 120.0) -> None:
        if self.is_up():
            _say("already up")
        else:
            self.down(quiet=True)
            self._start(timeout)
        self.sync_nodes(shape, node, timeout)

    def _start(self, timeout: float) -> None:
        t0 = time.monotonic()
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.root / "etcd", ignore_errors=True)
        pki.write_pki(self._pki)
        state: dict[str, Any] = {
            "etcd_port": network.free_port(),
            "etcd_peer_port": network.free_port(),
            "apiserver_port": network.free_port(),
            "fingerprint": config_fingerprint(),
            # The process nodes' /24, and from it the Service range (network.ClusterNet).
            "node_subnet": network.free_subnet(network.addresses_in_use()),
        }
        self._state_file.write_text(json.dumps(state))
        self._write_kubeconfig(state["apiserver_port"])
        p, L = self._pids, self.logs
        etcd_url = f"http://127.0.0.1:{state['etcd_port']}"
        peer_url = f"http://127.0.0.1:{state['etcd_peer_port']}"
        processes.start(
            "etcd",
            [
                self._bin("etcd"),
                "--name=distml",
                f"--data-dir={self.root / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=distml={peer_url}",
                "--unsafe-no-fsync",
                "--quota-backend-bytes=8589934592",
                "--log-level=warn",
            ],
            p,
            L,
        )
        self._wait("etcd", lambda: self._get(f"{etcd_url}/health")[0] == 200, timeout, "etcd")
        k = self._pki
        processes.start(
            "kube-apiserver",
            [
                self._bin("kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={state['apiserver_port']}",
                f"--tls-cert-file={k / 'apiserver.crt'}",
                f"--tls-private-key-file={k / 'apiserver.key'}",
                f"--client-ca-file={k / 'ca.crt'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={k / 'sa.pub'}",
                f"--service-account-signing-key-file={k / 'sa.key'}",
                f"--service-cluster-ip-range={self.node_network().service_cidr}",
                "--authorization-mode=Node,RBAC",
                # Process nodes serve logs with certs from this CA (kubectl logs goes through it).
                f"--kubelet-certificate-authority={k / 'ca.crt'}",
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                "--allow-privileged=true",
                f"--cert-dir={k}",
                "--max-requests-inflight=1600",
                "--max-mutating-requests-inflight=800",
                "--v=1",
            ],
            p,
            L,
        )
        self._wait("kube-apiserver /readyz", self.api_answers, timeout, "kube-apiserver")
        kc = f"--kubeconfig={self.kubeconfig}"
        processes.start(
            "kube-controller-manager",
            [
                self._bin("kube-controller-manager"),
                kc,
                "--leader-elect=false",
                "--secure-port=0",
                f"--root-ca-file={k / 'ca.crt'}",
                f"--service-account-private-key-file={k / 'sa.key'}",
                "--use-service-account-credentials=false",
                "--node-monitor-period=2s",
                f"--node-monitor-grace-period={self.node_grace_seconds}s",
                "--kube-api-qps=500",
                "--kube-api-burst=1000",
                "--v=1",
            ],
            p,
            L,
        )
        processes.start(
            "kube-scheduler",
            [
                self._bin("kube-scheduler"),
                kc,
                "--leader-elect=false",
                "--secure-port=0",
                "--kube-api-qps=500",
                "--kube-api-burst=1000",
                "--v=1",
            ],
            p,
            L,
        )
        processes.start(
            "kwok",
            [
                self._bin("kwok"),
                kc,
                f"--config={Path(__file__).with_name('kwok-stages.yaml')}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={nodes.KWOK_ANNOTATION}=fake",
                f"--cidr={POD_CIDR}",
                "--node-ip=10.255.0.1",
                "--node-lease-duration-seconds=0",
                "--server-address=",
                "-v=WARN",
            ],
            p,
            L,
        )
        # The default ServiceAccount is what admission needs before any pod can be created.
        self._wait(
            "the default ServiceAccount",
            lambda: self.kubectl("get", "serviceaccount", "default", "-o", "name", check=False),
            timeout,
            "kube-controller-manager",
        )
        took = time.monotonic() - t0
        _say(f"control plane up in {took:.1f}s (API on 127.0.0.1:{state['apiserver_port']})")

    def _write_kubeconfig(self, port: int) -> None:
        k = self._pki
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "distml-local",
                    "cluster": {
                        "server": f"https://127.0.0.1:{port}",
                        "certificate-authority": str(k / "ca.crt"),
                    },
                }
            ],
            "users": [
                {
                    "name": "distml-admin",
                    "user": {
                        "client-certificate": str(k / "admin.crt"),
                        "client-key": str(k / "admin.key"),
                    },
                }
            ],
            "contexts": [
                {
                    "name": "distml-local",
                    "context": {"cluster": "distml-local", "user": "distml-admin"},
                }
            ],
            "current-context": "distml-local",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config, sort_keys=False))
        self.kubeconfig.chmod(0o600)

    def sync_nodes(self, shape: nodes.ClusterShape, node: nodes.NodeShape, timeout: float) -> None:
        """Creates the simulated nodes the shape asks for, deletes simulated ones it does not, and
        waits until every one of them is Ready."""
        wanted = nodes.render_gpu_nodes(shape, node)
        names = {n["metadata"]["name"] for n in wanted}
        have = set(
            self.kubectl(
                "get", "nodes", "-l", f"{nodes.SIMULATED_LABEL}=kwok", "-o", "name"
            ).split()
        )
        extra = sorted(
            h.removeprefix("node/") for h in have if h.removeprefix("node/") not in names
        )
        if extra:
            self.kubectl("delete", "node", "--wait=false", *extra)
        missing = [n for n in wanted if f"node/{n['metadata']['name']}" not in have]
        if missing:
            for i in range(0, len(missing), 200):
                batch = {"apiVersion": "v1", "kind": "List", "items": missing[i : i + 200]}
                self.kubectl("create", "-f", "-", input=json.dumps(batch))
        self._wait(
            f"{len(wanted)} simulated GPU nodes Ready",
            lambda: self._ready_count() >= len(wanted),
            timeout,
        )
        if missing or extra:
            _say(
                f"{len(wanted)} simulated GPU nodes Ready "
                f"({len(missing)} added, {len(extra)} removed)"
            )

    # --- process nodes ---------------------------------------------------------------------------

    def node_network(self) -> network.ClusterNet:
        """This cluster's process-node network; its /24 is chosen once, among those free on
        this machine, and kept in state.json."""
        state = self.state()
        if not state.get("node_subnet"):
            state["node_subnet"] = network.free_subnet(network.addresses_in_use())
            self._state_file.write_text(json.dumps(state))
        return network.ClusterNet.for_folder(self.root, state["node_subnet"])

    def process_agents(self) -> dict[int, int]:
        """{node index: agent pid} of the process-node agents that run."""
        alive = processes.running(self._pids)
        return {int(n.rsplit("-", 1)[1]): pid for n, pid in alive.items() if n.startswith(AGENT)}

    def sync_process_nodes(
        self, count: int, gpus: int = 8, rate: str | None = None, timeout: float = 60.0
    ) -> None:
        """Runs `count` process nodes (proc-node-000...), each an agent process with its own
        network namespace; stops and deletes any beyond `count`; waits until all are Ready."""
        running = self.process_agents()
        if count and (why := network.available()):
            raise RuntimeError(why)
        net = self.node_network()
        if count:
            network.ensure_bridge(net)
        for index in sorted(i for i in running if i >= count):
            processes.stop_all(self._pids, [], only=f"{AGENT}{index}")
            network.teardown(net.node(index))
            self.kubectl("delete", "node", process_node_name(index), "--ignore-not-found")
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        kube_proxy = self._kube_proxy(count)
        changed = 0
        for index in range(count):
            argv = [sys.executable, "-m", "distml.localnode", f"--index={index}",
                    f"--gpus={gpus}", f"--cluster-root={self.root}",
                    f"--subnet={net.subnet}"]  # fmt: skip
            if kube_proxy:
                argv.append(f"--kube-proxy={kube_proxy}")
            if rate:
                argv.append(f"--rate={rate}")
            if index in running:
                if processes.command_line(running[index])[1:] == argv[1:]:
                    continue
                # Another shape (GPUs, link rate): this node's agent starts again with it.
                processes.stop_all(self._pids, [], only=f"{AGENT}{index}")
            processes.start(f"{AGENT}{index}", argv, self._pids, self.logs, env=env)
            changed += 1
        self._wait(
            f"{count} process nodes Ready",
            lambda: self._ready_count("process") >= count,
            timeout,
        )
        self._router(net, kube_proxy)
        if changed or count != len(running):
            _say(f"{count} process nodes Ready (pods run as processes; logs in {self.logs})")

    def _kube_proxy(self, count: int) -> str:
        """The kube-proxy binary for Services on process nodes; "" when there are none, or it
        cannot run here (then pods reach each other by name and address only)."""
        binary = str(self.bin_dir / "kube-proxy")
        if not count:
            return ""
        if why := proxy.available(binary):
            _say(f"no Service routing on process nodes: {why}")
            return ""
        return binary

    def _router(self, net: network.ClusterNet, binary: str) -> None:
        """Services for this machine: the router namespace and its kube-proxy (each node's
        agent runs its own), or neither when `binary` is "". Started once the nodes are Ready:
        kube-proxy waits 30 s for the Node it is named after before it programs anything, and
        the router's is named after node 0 (it has none of its own)."""
        if not binary:
            processes.stop_all(self._pids, [], only=ROUTER_PROXY)
            if os.geteuid() == 0:
                network.teardown_router(net)
            return
        router = network.setup_router(net)
        if processes.running_pid(self._pids / f"{ROUTER_PROXY}.pid") is None:
            argv, env = proxy.command(binary, str(self.kubeconfig), process_node_name(0),
                                      router, self.root, router=True)  # fmt: skip
            processes.start(ROUTER_PROXY, argv, self._pids, self.logs, env=env)

    def _ready_count(self, kind: str = "kwok") -> int:
        out = self.kubectl(
            "get",
            "nodes",
            "-l",
            f"{nodes.SIMULATED_LABEL}={kind}",
            "-o",
            "jsonpath={range .items[*]}{.status.conditions[?(@.type=='Ready')].status}{'\\n'}{end}",
        )
        return out.split().count("True")

    def apply_crds(self, folder: Path, timeout: float = 60.0) -> None:
        """Server-side apply (the CRDs embed the pod schema: too big for client-side apply's
        annotation), then wait until every one is Established. `kubectl wait` is not used: it
        fails at once on a CRD whose status has no conditions yet."""
        out = self.kubectl(
            "apply", "--server-side", "--force-conflicts", "-o", "name", "-f", str(folder)
        )

        def established(name: str) -> bool:
            conditions = (
                json.loads(self.kubectl("get", name, "-o", "json"))["status"].get("conditions")
                or []
            )
            return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

        for name in out.split():
            self._wait(f"{name} Established", functools.partial(established, name), timeout)

    def token_kubeconfig(self, service_account: str, namespace: str) -> Path:
        """A kubeconfig for this cluster that authenticates as a ServiceAccount, with a token from
        the TokenRequest API, as a pod of that ServiceAccount would."""
        token = self.kubectl(
            "create", "token", service_account, "-n", namespace, "--duration=24h"
        ).strip()
        config = yaml.safe_load(self.kubeconfig.read_text())
        config["users"] = [{"name": service_account, "user": {"token": token}}]
        config["contexts"][0]["context"]["user"] = service_account
        path = self.root / f"kubeconfig-{namespace}-{service_account}"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)
        return path

    def start_operator(
        self, metrics_port: int = 8080, kubeconfig: Path | None = None, *args: str
    ) -> int:
        """Runs `python -m distml` against this cluster until `down`; reused while it runs."""
        pid = processes.running_pid(self._pids / "operator.pid")
        if pid is not None:
            return pid
        env = {**os.environ, "KUBECONFIG": str(kubeconfig or self.kubeconfig)}
        return processes.start(
            "operator",
            [
                sys.executable,
                "-m",
                "distml",
                f"--metrics-port={metrics_port}",
                "--health-port=0",
                *args,
            ],
            self._pids,
            self.logs,
            env=env,
        )

    def start_prometheus(self, port: int = 9090, operator_port: int = 8080) -> int:
        """Debian's Prometheus (bin/prometheus from `make tools`), scraping the operator and every
        pod on a process node that declares a port named `metrics`."""
        pid = processes.running_pid(self._pids / "prometheus.pid")
        if pid is not None:
            return pid
        folder = self.root / "prometheus"
        folder.mkdir(parents=True, exist_ok=True)
        # Debian builds Prometheus without Kubernetes discovery: the process nodes' agents
        # write their pods' metrics endpoints into file_sd files instead.
        pods = {
            "job_name": "pods",
            "scrape_interval": "2s",
            "file_sd_configs": [
                {"files": [str(folder / "targets" / "*.json")], "refresh_interval": "2s"}
            ],
        }
        operator = {
            "job_name": "distml-operator",
            "scrape_interval": "2s",
            "static_configs": [{"targets": [f"127.0.0.1:{operator_port}"]}],
        }
        config = folder / "prometheus.yml"
        config.write_text(yaml.safe_dump({"scrape_configs": [operator, pods]}, sort_keys=False))
        return processes.start(
            "prometheus",
            [
                self._bin("prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            self._pids,
            self.logs,
        )

    def down(self, quiet: bool = False) -> list[str]:
        stopped = processes.stop_all(self._pids, STOP_ORDER)
        if os.geteuid() == 0 and self.state().get("node_subnet"):
            network.teardown_all(self.node_network())
        if not quiet:
            _say(f"stopped {', '.join(stopped) if stopped else 'nothing (not running)'}")
        return stopped
