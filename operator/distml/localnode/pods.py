"""What a process node decides about a pod, as pure functions: the argv, env and paths of each
container (the image's entrypoint contract, without the image), the pod's status from its
containers' states, and the hosts file that gives pods their DNS names.

There is no container filesystem, so a volume's mountPath (and the terminationMessagePath) is
translated to a folder on this machine wherever it appears in the command, args and env values:
`--checkpoint-dir /checkpoints` becomes `--checkpoint-dir <pod folder>/volumes/checkpoints`.
emptyDir is a folder per pod; hostPath is one folder shared by every process node, as an NFS mount
would be on real servers (they all run on this machine's disk).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distml import podstate

Obj = dict[str, Any]
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
FALLBACK_LOG_LINES = 80
MAX_MESSAGE = 4096


class ContainerConfigError(ValueError):
    """The pod asks for something a process node cannot give (CreateContainerConfigError)."""


@dataclass(frozen=True)
class ImageContract:
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()


_DOCKER_LINE = re.compile(r"^(ENTRYPOINT|CMD)\s+(\[.*\])\s*$")


def parse_dockerfile(text: str) -> ImageContract:
    """ENTRYPOINT and CMD of a Dockerfile's last stage, in their JSON (exec) form."""
    found: dict[str, tuple[str, ...]] = {}
    for line in text.splitlines():
        if line.upper().startswith("FROM "):
            found = {}
        m = _DOCKER_LINE.match(line.strip())
        if m:
            found[m.group(1)] = tuple(json.loads(m.group(2)))
    return ImageContract(found.get("ENTRYPOINT", ()), found.get("CMD", ()))


def image_repository(image: str) -> str:
    """'registry:5000/team/distml-runtime:0.1.0@sha256:..' -> 'distml-runtime'."""
    name = image.split("@", 1)[0].rsplit("/", 1)[-1]
    return name.split(":", 1)[0]


def container_argv(container: Obj, images: Mapping[str, ImageContract]) -> list[str]:
    """Kubernetes' rule: command replaces the entrypoint, args replace CMD; with a command and no
    args, CMD is dropped."""
    command, args = container.get("command"), container.get("args")
    contract = images.get(image_repository(container.get("image", "")))
    if command:
        return [*command, *(args or [])]
    if contract is None:
        raise ContainerConfigError(
            f"container {container['name']!r}: image {container.get('image')!r} is not one this "
            f"node knows ({', '.join(sorted(images)) or 'none'}); give it a command"
        )
    argv = [*contract.entrypoint, *(args if args is not None else contract.cmd)]
    if not argv:
        raise ContainerConfigError(f"container {container['name']!r}: nothing to run")
    return argv


def _field_ref(pod: Obj, path: str, node_ip: str) -> str:
    meta, spec = pod["metadata"], pod["spec"]
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": node_ip,
        "status.hostIP": node_ip,
    }
    if path in simple:
        return str(simple[path] or "")
    m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    raise ContainerConfigError(f"env fieldRef {path!r} is not supported on process nodes")


def container_env(container: Obj, pod: Obj, node_ip: str) -> dict[str, str]:
    """The container's env as Kubernetes resolves it: $(VAR) references to earlier variables, and
    the downward API's fieldRefs. Secrets and ConfigMaps are not read by process nodes."""
    env: dict[str, str] = {}
    for var in container.get("env") or []:
        name = var["name"]
        if "value" in var or "valueFrom" not in var:
            value = str(var.get("value", ""))
            env[name] = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                               lambda m: env.get(m.group(1), m.group(0)), value)  # fmt: skip
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            env[name] = _field_ref(pod, source["fieldRef"]["fieldPath"], node_ip)
        else:
            kind = next(iter(source), "?")
            raise ContainerConfigError(f"env {name}: valueFrom.{kind} is not supported here")
    return env


def volume_folders(pod: Obj, pod_dir: Path, shared_root: Path) -> dict[str, Path]:
    """{volume name: folder on this machine} for the volumes a process node can give."""
    folders: dict[str, Path] = {}
    for vol in pod["spec"].get("volumes") or []:
        if "emptyDir" in vol:
            folders[vol["name"]] = pod_dir / "volumes" / vol["name"]
        elif "hostPath" in vol:
            folders[vol["name"]] = shared_root / "hostpath" / vol["hostPath"]["path"].lstrip("/")
    return folders


def mounts(container: Obj, folders: Mapping[str, Path]) -> dict[str, Path]:
    """{mountPath: folder}, longest paths first so nested mounts translate to the inner one."""
    out: dict[str, Path] = {}
    for m in container.get("volumeMounts") or []:
        if m["name"] not in folders:
            continue  # service account tokens, ConfigMaps: nothing to translate to
        out[m["mountPath"].rstrip("/") or "/"] = folders[m["name"]] / m.get("subPath", "")
    return dict(sorted(out.items(), key=lambda kv: -len(kv[0])))


def translate(value: str, paths: Mapping[str, Path]) -> str:
    """Rewrites a path under a mount (also the value of a `--flag=path`) to its folder."""
    if "=" in value and not value.startswith("/"):
        key, _, rest = value.partition("=")
        return f"{key}={translate(rest, paths)}"
    for mount, folder in paths.items():
        if value == mount or value.startswith(mount + "/"):
            return str(folder) + value[len(mount) :]
    return value


def gpu_env(devices: Iterable[int]) -> dict[str, str]:
    """What NVIDIA's device plugin sets: the container sees only its own GPUs."""
    ids = ",".join(str(d) for d in devices)
    return {"CUDA_VISIBLE_DEVICES": ids, "NVIDIA_VISIBLE_DEVICES": ids or "void"}


# --- status ------------------------------------------------------------------------------------


@dataclass
class ContainerState:
    name: str
    image: str
    state: str = "waiting"  # waiting | running | terminated
    reason: str = "ContainerCreating"
    message: str = ""
    exit_code: int | None = None
    started_at: str | None = None
    finished_at: str | None = None
    restarts: int = 0
    last: Obj = field(default_factory=dict)
    # Its readiness probe's verdict: None without a probe (ready while running).
    probe_ready: bool | None = None

    @property
    def ready(self) -> bool:
        return self.state == "running" and self.probe_ready is not False

    def status(self) -> Obj:
        if self.state == "running":
            state: Obj = {"running": {"startedAt": self.started_at}}
        elif self.state == "terminated":
            state = {
                "terminated": {
                    "exitCode": self.exit_code,
                    "reason": self.reason,
                    "startedAt": self.started_at,
                    "finishedAt": self.finished_at,
                    **({"message": self.message} if self.message else {}),
                }
            }
        else:
            state = {"waiting": {"reason": self.reason, **({"message": self.message}
                                                            if self.message else {})}}  # fmt: skip
        return {
            "name": self.name,
            "image": self.image,
            "imageID": "",
            "state": state,
            "lastState": self.last,
            "ready": self.ready,
            "restartCount": self.restarts,
            "started": self.state == "running",
        }


@dataclass
class Probe:
    """kubelet's counting for one probe (httpGet or tcpSocket): a verdict changes after
    `successThreshold` passes or `failureThreshold` failures in a row; before its first verdict
    a readiness probe says not ready, a liveness probe says alive."""

    path: str | None  # httpGet path; None for tcpSocket
    port: int
    period: float = 10.0
    timeout: float = 1.0
    initial_delay: float = 0.0
    failures_needed: int = 3
    successes_needed: int = 1
    verdict: bool | None = None
    _streak: int = 0  # > 0: passes in a row, < 0: failures in a row

    @classmethod
    def of(cls, probe: Obj | None, ports: dict[str, int]) -> Probe | None:
        """From a container's probe spec; None when it has none or one this node cannot run
        (exec, grpc). A named port is looked up in the container's ports."""
        if not probe:
            return None
        action = probe.get("httpGet") or probe.get("tcpSocket")
        if not action:
            return None
        port = action.get("port")
        number = ports.get(port, 0) if isinstance(port, str) and not port.isdigit() else int(port)
        return cls(
            path=(action.get("path") or "/") if "httpGet" in probe else None,
            port=number,
            period=float(probe.get("periodSeconds", 10)),
            timeout=float(probe.get("timeoutSeconds", 1)),
            initial_delay=float(probe.get("initialDelaySeconds", 0)),
            failures_needed=int(probe.get("failureThreshold", 3)),
            successes_needed=int(probe.get("successThreshold", 1)),
        )

    def observe(self, passed: bool) -> bool:
        """Counts one result; True when the verdict changed."""
        if passed:
            self._streak = self._streak + 1 if self._streak > 0 else 1
            flips = self.verdict is not True and self._streak >= self.successes_needed
        else:
            self._streak = self._streak - 1 if self._streak < 0 else -1
            flips = self.verdict is not False and -self._streak >= self.failures_needed
        if flips:
            self.verdict = passed
        return flips


CONTAINER_MARK = "DISTML_LOCALNODE_CONTAINER"


def container_mark(pod: Obj, container: str) -> str:
    """The value of CONTAINER_MARK in every process of one container (its children inherit it),
    so that the container's end can take all of them, as a container's PID namespace does."""
    return f"{pod['metadata'].get('uid', '')}/{container}"


def marked_processes(mark: str, proc_root: Path = Path("/proc")) -> list[int]:
    """The pids whose environment carries CONTAINER_MARK=mark: every process a container
    started, those that left its process group (torchrun starts its workers in sessions of their
    own) included."""
    needle = f"{CONTAINER_MARK}={mark}".encode() + b"\0"
    found = []
    for entry in proc_root.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in env + b"\0":
            found.append(int(entry.name))
    return found


def exit_code(returncode: int) -> int:
    """A container killed by signal N exits 128+N, as container runtimes report it."""
    return 128 - returncode if returncode < 0 else returncode


def termination_message(written: str, log_tail: str, policy: str, code: int) -> str:
    if written.strip() or policy != "FallbackToLogsOnError" or code == 0:
        return written[:MAX_MESSAGE]
    return "\n".join(log_tail.splitlines()[-FALLBACK_LOG_LINES:])[-2048:]


def phase(inits: list[ContainerState], mains: list[ContainerState], restart_policy: str) -> str:
    if any(c.state == "terminated" and c.exit_code for c in inits) and restart_policy == "Never":
        return "Failed"
    if not all(c.state == "terminated" and c.exit_code == 0 for c in inits):
        return "Pending"
    if mains and all(c.state == "terminated" for c in mains):
        if all(c.exit_code == 0 for c in mains):
            return "Succeeded"
        if restart_policy == "Never":
            return "Failed"  # OnFailure and Always: the node restarts the container
    if any(c.state in ("running", "terminated") for c in mains):
        return "Running"
    return "Pending"


def _condition(kind: str, ok: bool, now: str, reason: str = "") -> Obj:
    cond = {"type": kind, "status": "True" if ok else "False", "lastTransitionTime": now}
    if reason and not ok:
        cond["reason"] = reason
    return cond


def pod_status(
    inits: list[ContainerState],
    mains: list[ContainerState],
    restart_policy: str,
    pod_ip: str,
    started: str,
    now: str,
) -> Obj:
    ph = phase(inits, mains, restart_policy)
    initialized = all(c.state == "terminated" and c.exit_code == 0 for c in inits)
    ready = ph == "Running" and all(c.ready for c in mains)
    reason = "PodCompleted" if ph in ("Succeeded", "Failed") else "ContainersNotReady"
    return {
        "phase": ph,
        "hostIP": pod_ip,
        "hostIPs": [{"ip": pod_ip}],
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": started,
        "conditions": [
            _condition("PodReadyToStartContainers", True, now),
            _condition("Initialized", initialized, now, "ContainersNotInitialized"),
            _condition("ContainersReady", ready, now, reason),
            _condition("Ready", ready, now, reason),
            _condition("PodScheduled", True, now),
        ],
        "initContainerStatuses": [c.status() for c in inits],
        "containerStatuses": [c.status() for c in mains],
    }


# --- names -------------------------------------------------------------------------------------


def named_by_service(pod: Obj, service: Obj | None) -> bool:
    """Whether cluster DNS has a name for the pod through `service`, the Service named after its
    subdomain in its namespace (None if there is none): the Service must be headless and select
    the pod, and the pod be ready unless the Service publishes not-ready addresses."""
    spec = (service or {}).get("spec") or {}
    selector = spec.get("selector") or {}
    pod_labels = pod["metadata"].get("labels") or {}
    return (
        spec.get("clusterIP") == "None"
        and bool(selector)
        and selector.items() <= pod_labels.items()
        and bool(spec.get("publishNotReadyAddresses") or podstate.is_ready(pod))
    )


def hosts_file(node_name: str, node_ip: str, pods: Iterable[Obj], services: Iterable[Obj]) -> str:
    """/etc/hosts for one node's namespace: the DNS names a headless Service gives the pods it
    selects (hostname.subdomain.namespace.svc.cluster.local), then the node. Pods on this node
    get theirs whatever the Services say, as kubelet writes a pod's own names into its hosts, and
    are listed before their status has an IP (it is the node's); they share one file, so they
    see each other's names too. Pod lines come first, so a reverse lookup of a node's IP gives a
    pod's name."""
    by_name = {(s["metadata"]["namespace"], s["metadata"]["name"]): s for s in services}
    lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
    for pod in sorted(pods, key=lambda p: (p["metadata"]["namespace"], p["metadata"]["name"])):
        spec, status = pod["spec"], pod.get("status") or {}
        ns = pod["metadata"]["namespace"]
        here = spec.get("nodeName") == node_name
        host, sub = spec.get("hostname"), spec.get("subdomain")
        ip = node_ip if here else status.get("podIP")
        if not (host and sub and ip) or podstate.is_terminal(pod) or podstate.is_deleting(pod):
            continue
        if not (here or named_by_service(pod, by_name.get((ns, sub)))):
            continue
        base = f"{host}.{sub}.{ns}.svc"
        names = [f"{base}.cluster.local", base, *([host] if here else [])]
        lines.append(f"{ip} {' '.join(names)}")
    # A Service with a cluster IP is named by it, as cluster DNS does; kube-proxy in the node's
    # namespace takes what is sent there to a ready endpoint.
    for svc in sorted(by_name.values(), key=lambda s: (s["metadata"]["namespace"],
                                                        s["metadata"]["name"])):  # fmt: skip
        ip = (svc.get("spec") or {}).get("clusterIP")
        if ip and ip != "None":
            base = f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc"
            lines.append(f"{ip} {base}.cluster.local {base}")
    lines.append(f"{node_ip} {node_name}")
    # c10d's dual-stack server sees peers as IPv4-mapped IPv6 addresses and looks their names up;
    # without these lines each lookup misses and warns.
    mapped = [f"::ffff:{li.split()[0]} {li.split()[1]}" for li in lines[2:]]
    return "\n".join([*lines, *mapped]) + "\n"


def scrape_targets(node_ip: str, pods: Iterable[Obj]) -> list[Obj]:
    """Prometheus file_sd entries for the running pods that declare a port named `metrics` (what
    a kubernetes_sd pod role with a keep-on-port-name rule would find)."""
    out = []
    for pod in sorted(pods, key=lambda p: (p["metadata"]["namespace"], p["metadata"]["name"])):
        ports = [
            port["containerPort"]
            for c in pod["spec"].get("containers", [])
            for port in c.get("ports") or []
            if port.get("name") == "metrics"
        ]
        if ports:
            meta = pod["metadata"]
            labels = {"namespace": meta["namespace"], "pod": meta["name"]}
            out.append({"targets": [f"{node_ip}:{p}" for p in ports], "labels": labels})
    return out
