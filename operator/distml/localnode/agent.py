"""The node agent: a small kubelet for one process node.

It registers a Node with `nvidia.com/gpu` capacity, heartbeats its Ready condition, follows the
pods bound to it and runs each container's command as a process from the project's venv, inside
the node's network namespace and with the pod's hostname. It reports real pod status (phases, exit
codes, restart counts, termination messages), honours deletion (SIGTERM, SIGKILL after the grace
period), gives each pod its GPUs through CUDA_VISIBLE_DEVICES, keeps each container's log and
serves it on the kubelet port, so `kubectl logs` works.

While its link is cut (`python -m distml.localcluster node-cut`), the agent behaves as a
partitioned kubelet: no heartbeats and no status, while its processes run on; when the link comes
back it lists the pods again and stops the processes of pods deleted meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import datetime as dt
import json
import os
import signal
import socket
import ssl
import sys
import threading
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from distml import labels, podstate
from distml.informer import Informer
from distml.kube import AsyncWriter, Obj
from distml.localcluster import nodes
from distml.localnode import network, pods, proxy
from distml.localnode.pods import ContainerState

KUBELET_PORT = 10250
HEARTBEAT_SECONDS = 4.0
CLONE_NEWNET = 0x40000000


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _log(msg: str) -> None:
    print(f"{_now()} {msg}", file=sys.stderr, flush=True)


def listen_in_netns(netns: str, port: int) -> socket.socket:
    """A listening socket inside another network namespace: setns() moves only the calling
    thread, so a short-lived thread makes the socket there and the agent serves it from here."""
    out: list[Any] = []

    def make() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            with open(f"/run/netns/{netns}") as f:
                if libc.setns(f.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {netns}")
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", port))
            s.listen(64)
            s.setblocking(False)
            out.append(s)
        except Exception as err:  # handed to the caller's thread
            out.append(err)

    t = threading.Thread(target=make)
    t.start()
    t.join()
    if isinstance(out[0], Exception):
        raise out[0]
    return out[0]


async def probe_once(address: str, probe: pods.Probe) -> bool:
    """One try of an httpGet (a 2xx or 3xx passes) or tcpSocket probe, within its timeout."""
    try:
        if probe.path is None:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(address, probe.port), probe.timeout
            )
            writer.close()
            return True
        timeout = aiohttp.ClientTimeout(total=probe.timeout)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(f"http://{address}:{probe.port}{probe.path}") as resp,
        ):
            return 200 <= resp.status < 400
    except (OSError, TimeoutError, aiohttp.ClientError):
        return False


class PodRunner:
    """Runs one pod: init containers one by one, then every container at once."""

    def __init__(self, agent: NodeAgent, pod: Obj, devices: list[int]) -> None:
        self.agent = agent
        self.pod = pod
        meta = pod["metadata"]
        self.key = (meta["namespace"], meta["name"])
        self.uid = meta["uid"]
        self.dir = agent.root / "pods" / f"{meta['namespace']}_{meta['name']}_{self.uid}"
        self.devices = devices
        spec = pod["spec"]
        self.restart_policy = spec.get("restartPolicy", "Always")
        self.inits = [ContainerState(c["name"], c.get("image", "")) for c in
                      spec.get("initContainers") or []]  # fmt: skip
        self.mains = [ContainerState(c["name"], c.get("image", "")) for c in spec["containers"]]
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.started = _now()
        self.stopping = False
        self.done = asyncio.Event()
        self._push_lock = asyncio.Lock()

    def log_path(self, container: str) -> Path:
        return self.dir / f"{container}.log"

    def state(self, container: str) -> ContainerState | None:
        return next((c for c in [*self.inits, *self.mains] if c.name == container), None)

    async def push(self) -> None:
        """Writes the pod's status as it is now (skipped while the node is cut off)."""
        if self.agent.cut:
            return
        async with self._push_lock:
            status = pods.pod_status(
                self.inits, self.mains, self.restart_policy, self.agent.net.address,
                self.started, _now(),
            )  # fmt: skip
            ns, name = self.key
            code, body = await self.agent.kube.request(
                "PATCH", f"/api/v1/namespaces/{ns}/pods/{name}/status", {"status": status}
            )
            if code >= 300 and code != 404:
                _log(f"status of {ns}/{name}: {code} {body.get('message')}")

    async def run(self) -> None:
        try:
            await self._run()
        except Exception as err:  # a bug here must not take the node down
            _log(f"pod {self.key}: {type(err).__name__}: {err}")
        finally:
            self.done.set()
            self.agent.release(self)

    async def _run(self) -> None:
        spec = self.pod["spec"]
        await self.push()
        for container, state in zip(spec.get("initContainers") or [], self.inits, strict=True):
            while not self.stopping:
                await self._run_container(container, state)
                if state.exit_code == 0 or self.restart_policy == "Never":
                    break
                await asyncio.sleep(1.0)
            if self.stopping or state.exit_code != 0:
                await self.push()
                return
        await asyncio.gather(
            *(self._keep(c, s) for c, s in zip(spec["containers"], self.mains, strict=True))
        )
        await self.push()

    async def _keep(self, container: Obj, state: ContainerState) -> None:
        """Runs a container, again per the pod's restartPolicy (kubelet's rules)."""
        while True:
            await self._run_container(container, state)
            again = self.restart_policy == "Always" or (
                self.restart_policy == "OnFailure" and state.exit_code != 0
            )
            if self.stopping or not again or state.exit_code is None:
                return
            await asyncio.sleep(min(10.0, 2.0**state.restarts))
            state.last = {"terminated": state.status()["state"]["terminated"]}
            state.restarts += 1

    def _prepare(self, container: Obj) -> tuple[list[str], dict[str, str], str, Path]:
        a = self.agent
        folders = pods.volume_folders(self.pod, self.dir, a.shared_root)
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        paths = pods.mounts(container, folders)
        term_path = container.get("terminationMessagePath", pods.DEFAULT_TERMINATION_PATH)
        term_file = self.dir / f"{container['name']}.termination-log"
        term_file.write_text("")
        paths = {**paths, term_path: term_file}
        argv = [pods.translate(v, paths) for v in pods.container_argv(container, a.images)]
        env = {
            "PATH": f"{a.venv_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(self.dir),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "HOSTNAME": self.pod["spec"].get("hostname") or self.key[1],
            pods.CONTAINER_MARK: pods.container_mark(self.pod, container["name"]),
            **pods.gpu_env(self.devices if podstate.container_gpus(container) else []),
        }
        for k, v in pods.container_env(container, self.pod, a.net.address).items():
            env[k] = pods.translate(v, paths)
        workdir = pods.translate(container.get("workingDir") or str(self.dir), paths)
        return argv, env, workdir, term_file

    async def _run_container(self, container: Obj, state: ContainerState) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            argv, env, workdir, term_file = self._prepare(container)
        except pods.ContainerConfigError as err:
            state.reason, state.message = "CreateContainerConfigError", str(err)
            await self.push()
            await self.agent.stopped(self)  # waits for deletion, like kubelet
            return
        hostname = env["HOSTNAME"]
        full = [
            *self.agent.net.exec_prefix(),
            "unshare", "--uts", "--", "sh", "-c", 'hostname "$0" && exec "$@"', hostname, *argv,
        ]  # fmt: skip
        with open(self.log_path(container["name"]), "ab") as log:
            proc = await asyncio.create_subprocess_exec(
                *full, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                cwd=workdir, start_new_session=True,
            )  # fmt: skip
        self.procs[container["name"]] = proc
        state.state, state.reason, state.message = "running", "", ""
        state.started_at, state.exit_code = _now(), None
        ports = {p["name"]: int(p["containerPort"]) for p in container.get("ports") or []
                 if p.get("name")}  # fmt: skip
        readiness = pods.Probe.of(container.get("readinessProbe"), ports)
        liveness = pods.Probe.of(container.get("livenessProbe"), ports)
        startup = pods.Probe.of(container.get("startupProbe"), ports)
        state.probe_ready = False if readiness else None
        _log(f"pod {'/'.join(self.key)} container {container['name']} started (pid {proc.pid})")
        await self.push()
        probing = asyncio.create_task(
            self._probes(container["name"], state, proc, startup, readiness, liveness)
        )
        rc = await proc.wait()
        probing.cancel()
        _kill_the_rest(pods.container_mark(self.pod, container["name"]))
        state.probe_ready = None if readiness is None else False
        self.procs.pop(container["name"], None)
        code = pods.exit_code(rc)
        policy = container.get("terminationMessagePolicy", "File")
        written = term_file.read_text(errors="replace")
        tail = ""
        if policy == "FallbackToLogsOnError" and code and not written.strip():
            with open(self.log_path(container["name"]), "rb") as f:
                f.seek(max(f.seek(0, os.SEEK_END) - 8192, 0))
                tail = f.read().decode(errors="replace")
        state.state, state.exit_code, state.finished_at = "terminated", code, _now()
        state.reason = "Completed" if code == 0 else "Error"
        state.message = pods.termination_message(written, tail, policy, code)
        _log(f"pod {'/'.join(self.key)} container {container['name']} exited {code}")
        await self.push()

    async def _probes(
        self,
        name: str,
        state: ContainerState,
        proc: asyncio.subprocess.Process,
        startup: pods.Probe | None,
        readiness: pods.Probe | None,
        liveness: pods.Probe | None,
    ) -> None:
        """kubelet's probes for one container while it runs: the startup probe first (the
        others wait for it to pass; failing, it kills the container), then readiness (its
        verdict goes into the pod's status) and liveness (failing, it kills the container)."""
        if startup is not None and not await self._probe(name, state, proc, startup, "startup"):
            return
        await asyncio.gather(
            *(self._probe(name, state, proc, probe, kind)
              for probe, kind in ((readiness, "readiness"), (liveness, "liveness")) if probe)
        )  # fmt: skip

    async def _probe(self, name: str, state: ContainerState, proc: asyncio.subprocess.Process,
                     probe: pods.Probe, kind: str) -> bool:  # fmt: skip
        """Runs one probe for as long as the container runs (a startup probe: until it
        passes); False when it failed and killed the container."""
        where = f"pod {'/'.join(self.key)} container {name}"
        await asyncio.sleep(probe.initial_delay)
        while proc.returncode is None:
            passed = await probe_once(self.agent.net.address, probe)
            if probe.observe(passed):
                if kind == "readiness":
                    state.probe_ready = probe.verdict
                    _log(f"{where} {'ready' if probe.verdict else 'not ready'}")
                    await self.push()
                elif kind == "startup" and probe.verdict:
                    _log(f"{where} started (its startup probe passed)")
                    return True
                elif probe.verdict is False:
                    _log(f"{where} failed its {kind} probe: killing it")
                    await self._kill(proc)
                    return False
            await asyncio.sleep(probe.period)
        return False

    async def _kill(self, proc: asyncio.subprocess.Process) -> None:
        """As kubelet kills a container: SIGTERM, SIGKILL after the pod's grace period."""
        grace = float(self.pod["spec"].get("terminationGracePeriodSeconds", 30))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), timeout=grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    async def lost(self) -> None:
        for state in [*self.inits, *self.mains]:
            if state.state != "terminated":
                state.state, state.exit_code, state.finished_at = "terminated", 137, _now()
                state.reason = "ContainerStatusUnknown"
                state.message = "the node agent restarted while the container ran"
        self.started = (self.pod.get("status") or {}).get("startTime") or self.started
        await self.push()

    async def stop(self, grace: float) -> None:
        """SIGTERM every container's process group, SIGKILL what is left after `grace`."""
        self.stopping = True
        for proc in list(self.procs.values()):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.done.wait(), timeout=max(grace, 0.1))
        for proc in list(self.procs.values()):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.done.wait(), timeout=5)


def _kill_the_rest(mark: str) -> None:
    """A container ends with its main process: what it left running goes too (SIGKILL), as
    in a container's PID namespace."""
    for pid in pods.marked_processes(mark):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


class NodeAgent:
    def __init__(
        self,
        kube: AsyncWriter,
        node: Obj,
        net: network.NodeNet,
        root: Path,
        shared_root: Path,
        images: dict[str, pods.ImageContract],
        venv_bin: Path,
        tls: tuple[Path, Path] | None = None,
        targets_file: Path | None = None,
        kube_proxy: tuple[list[str], dict[str, str]] | None = None,
    ) -> None:
        self.kube = kube
        self.node = node
        self.name = node["metadata"]["name"]
        self.net = net
        self.root = root
        self.shared_root = shared_root
        self.images = images
        self.venv_bin = venv_bin
        self.tls = tls
        self.targets_file = targets_file
        self.kube_proxy = kube_proxy  # its command line and environment (distml.localnode.proxy)
        self._targets = ""
        self.gpus = int(node["status"]["capacity"].get(labels.GPU, 0))
        self.free_gpus = list(range(self.gpus))
        self.all_pods: dict[str, Obj] = {}  # uid -> pod, every node's (for the hosts file)
        self.services: dict[str, Obj] = {}  # uid -> Service (which pods DNS names)
        self.runners: dict[str, PodRunner] = {}  # uid -> runner of a pod bound here
        self.finished: set[str] = set()  # uids whose containers have all ended
        self.cut = False
        self._hosts = ""
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Any) -> None:
        """Runs `coro` in the background, holding a reference until it ends."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- registration and heartbeat -----------------------------------------------------------

    def _node_status(self) -> Obj:
        now = _now()
        ready = {
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "distml node agent is posting ready status",
            "lastHeartbeatTime": now,
            "lastTransitionTime": self._ready_since,
        }
        return {
            **self.node["status"],
            "conditions": [ready],
            "addresses": [
                {"type": "InternalIP", "address": self.net.address},
                {"type": "Hostname", "address": self.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": KUBELET_PORT}},
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": "distml-localnode",
                "containerRuntimeVersion": "process://local",
                "kernelVersion": os.uname().release,
                "osImage": "process node",
                "kubeProxyVersion": "",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        }

    async def register(self) -> None:
        self._ready_since = _now()
        body = {k: v for k, v in self.node.items() if k != "status"}
        code, answer = await self.kube.request("POST", "/api/v1/nodes", body)
        if code == 409:
            patch = {"metadata": {"labels": self.node["metadata"]["labels"]}, "spec": body["spec"]}
            code, answer = await self.kube.request("PATCH", f"/api/v1/nodes/{self.name}", patch)
        if code >= 300:
            raise RuntimeError(f"registering node {self.name}: {code} {answer.get('message')}")
        await self.heartbeat()
        _log(f"node {self.name} registered ({self.gpus} GPUs, {self.net.address})")

    async def heartbeat(self) -> None:
        path = f"/api/v1/nodes/{self.name}/status"
        code, answer = await self.kube.request("PATCH", path, {"status": self._node_status()})
        if code >= 300:
            _log(f"heartbeat: {code} {answer.get('message')}")

    async def heartbeats(self) -> None:
        while True:
            cut = network.is_cut(self.net)
            if cut != self.cut:
                self.cut = cut
                _log(f"link {'cut: partitioned' if cut else 'restored: resyncing'}")
                if cut:
                    self._ready_since = _now()
                else:
                    self._wake.set()  # relist: what changed while we were away
            if not self.cut:
                with contextlib.suppress(Exception):
                    await self.heartbeat()
            await asyncio.sleep(HEARTBEAT_SECONDS if not self.cut else 0.5)

    # --- pods ----------------------------------------------------------------------------------

    def release(self, runner: PodRunner) -> None:
        self.finished.add(runner.uid)
        self._wake.set()  # its scrape target goes
        self.free_gpus = sorted({*self.free_gpus, *runner.devices})
        runner.devices = []

    async def stopped(self, runner: PodRunner) -> None:
        while not runner.stopping:
            await asyncio.sleep(0.5)

    def _write_hosts(self) -> None:
        text = pods.hosts_file(
            self.name, self.net.address, self.all_pods.values(), self.services.values()
        )
        if text != self._hosts:
            # In place, not by rename: `ip netns exec` bind-mounted this very inode.
            with open(self.net.hosts_file, "r+" if self.net.hosts_file.exists() else "w") as f:
                f.truncate(0)
                f.write(text)
            self._hosts = text

    def _write_targets(self) -> None:
        if self.targets_file is None:
            return
        running = [r.pod for r in self.runners.values() if not r.done.is_set()]
        text = json.dumps(pods.scrape_targets(self.net.address, running), indent=1)
        if text != self._targets:
            self.targets_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.targets_file.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(self.targets_file)  # Prometheus never reads half a file
            self._targets = text

    async def sync(self) -> None:
        """Level-triggered: starts pods bound here, stops deleted ones, finishes deletions."""
        self._write_hosts()
        live = {
            uid: p for uid, p in self.all_pods.items() if p["spec"].get("nodeName") == self.name
        }
        for uid, runner in list(self.runners.items()):
            pod = live.get(uid)
            if pod is None:  # deleted (or force-deleted while we were cut off)
                self.runners.pop(uid)
                self.spawn(runner.stop(2.0))
            elif pod["metadata"].get("deletionTimestamp") and not runner.stopping:
                self.spawn(self._delete(runner, pod))
        for uid, pod in live.items():
            phase = (pod.get("status") or {}).get("phase")
            if uid in self.runners or uid in self.finished or phase in ("Succeeded", "Failed"):
                if pod["metadata"].get("deletionTimestamp") and uid not in self.runners:
                    self.spawn(self._finalize(pod))
                continue
            if pod["metadata"].get("deletionTimestamp"):
                self.spawn(self._finalize(pod))
                continue
            if (pod.get("status") or {}).get("startTime"):
                # Started by an earlier agent on this node, whose processes ended with it.
                self.finished.add(uid)
                self.spawn(PodRunner(self, pod, []).lost())
                continue
            want = podstate.gpu_request(pod)
            if want > len(self.free_gpus):
                # A pod that just ended is already terminal in the API, so the scheduler bound
                # this one to its GPUs; they come free when its runner is done (release() wakes
                # the sync again). Never start a pod with fewer GPUs than it asked for.
                continue
            devices, self.free_gpus = self.free_gpus[:want], self.free_gpus[want:]
            runner = PodRunner(self, pod, devices)
            self.runners[uid] = runner
            self.spawn(runner.run())
        self._write_targets()

    async def _delete(self, runner: PodRunner, pod: Obj) -> None:
        grace = float(pod["metadata"].get("deletionGracePeriodSeconds") or 30)
        await runner.stop(grace)
        await runner.push()
        await self._finalize(pod)

    async def _finalize(self, pod: Obj) -> None:
        meta = pod["metadata"]
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}}
        await self.kube.request(
            "DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}", body
        )

    async def follow(self, path: str, store: dict[str, Obj]) -> None:
        """Keeps `store` (uid -> object) a copy of every object at `path`, waking the sync on
        each change; LISTs again when the link comes back (distml.informer does the rest)."""

        def listed(items: list[Obj]) -> None:
            store.clear()
            store.update((o["metadata"]["uid"], o) for o in items)
            self._wake.set()

        def on_event(kind: str, obj: Obj) -> None:
            uid = obj["metadata"]["uid"]
            if kind == "DELETED":
                store.pop(uid, None)
            else:
                store[uid] = obj
            self._wake.set()

        informer = Informer(self.kube, path, on_list=listed, on_event=on_event)
        await informer.run(relist_when=self._link_changed, before_list=self._link_up)

    async def _link_changed(self) -> None:
        was = self.cut
        while self.cut == was:
            await asyncio.sleep(0.5)

    async def _link_up(self) -> None:
        while self.cut:
            await asyncio.sleep(0.5)

    async def reconcile_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self.cut:
                await self.sync()

    # --- logs (the kubelet's containerLogs endpoint) ---------------------------------------------

    def _runner(self, namespace: str, name: str) -> PodRunner | None:
        return next((r for r in self.runners.values() if r.key == (namespace, name)), None)

    async def _bound_here(self, namespace: str, name: str) -> bool:
        """Whether the API server has bound the pod to this node. Asked of the API server, not
        the watch cache: the request for logs can come before the watch event that binds it."""
        code, pod = await self.kube.request("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")
        return code == 200 and (pod.get("spec") or {}).get("nodeName") == self.name

    async def container_logs(self, request: web.Request) -> web.StreamResponse:
        ns, name, container = (request.match_info[k] for k in ("ns", "pod", "container"))
        runner = self._runner(ns, name)
        state = runner.state(container) if runner else None
        if runner and state is None:
            raise web.HTTPBadRequest(text=f"container {container} is not valid for pod {name}")
        if state and state.state == "waiting" and state.restarts == 0:
            raise web.HTTPBadRequest(  # kubelet's answer, which kubectl shows as it is
                text=f'container "{container}" in pod "{name}" is waiting to start: {state.reason}'
            )
        path = runner.log_path(container) if runner else None
        if path is None:
            found = sorted((self.root / "pods").glob(f"{ns}_{name}_*/{container}.log"))
            path = found[-1] if found else None
        if (path is None or not path.exists()) and await self._bound_here(ns, name):
            raise web.HTTPBadRequest(
                text=f'container "{container}" in pod "{name}" is waiting to start: '
                "ContainerCreating"
            )
        if path is None or not path.exists():
            raise web.HTTPNotFound(text=f"no log for {ns}/{name}/{container} on {self.name}")
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        tail = request.query.get("tailLines")
        with open(path, "rb") as f:
            data = f.read()
            if tail:
                data = b"".join(data.splitlines(keepends=True)[-int(tail) :])
            await resp.write(data)
            while request.query.get("follow") == "true" and runner and state:
                chunk = f.read()
                if chunk:
                    await resp.write(chunk)
                elif state.state == "terminated" or runner.done.is_set():
                    break
                else:
                    await asyncio.sleep(0.2)
        await resp.write_eof()
        return resp

    async def serve_logs(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_get("/containerLogs/{ns}/{pod}/{container}", self.container_logs)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        ctx = None
        if self.tls:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(str(self.tls[0]), str(self.tls[1]))
        sock = listen_in_netns(self.net.netns, KUBELET_PORT)
        await web.SockSite(runner, sock, ssl_context=ctx).start()
        return runner

    # --- main ----------------------------------------------------------------------------------

    async def run(self) -> None:
        await self.register()
        logs = await self.serve_logs()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        tasks = [
            asyncio.create_task(t)
            for t in (
                self.heartbeats(),
                self.follow("/api/v1/pods", self.all_pods),
                self.follow("/api/v1/services", self.services),
                self.reconcile_loop(),
            )
        ]
        proxy_stop = asyncio.Event()
        proxied = (
            asyncio.create_task(
                proxy.supervise(*self.kube_proxy, self.root / "kube-proxy.log", proxy_stop)
            )
            if self.kube_proxy
            else None
        )
        await stop.wait()
        _log(f"stopping: ending {len(self.runners)} pods' processes")
        proxy_stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*(r.stop(5.0) for r in self.runners.values()))
        if proxied is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proxied, timeout=10)
        await logs.cleanup()
        await self.kube.close()


def node_object(name_prefix: str, index: int, gpus: int) -> Obj:
    return nodes.render_process_node(
        nodes.ClusterShape(nodes=index + 1, name_prefix=name_prefix), nodes.NodeShape(gpus=gpus),
        index,
    )  # fmt: skip
