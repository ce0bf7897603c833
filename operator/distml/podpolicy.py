"""What a worker pod may ask for: the Pod Security Standards, checked before the operator creates a
pod with its own rights, so a user who may create a TrainingJob gets no more than the namespace
allows its pods (the operator is no confused deputy).

Pure: a pod template in, the violations out, each naming the field a user would fix
(`spec.template.spec.containers[0].securityContext.privileged`). The levels and their rules are
Kubernetes' own (https://kubernetes.io/docs/concepts/security/pod-security-standards/):
`privileged` allows everything, `baseline` stops known privilege escalations, `restricted` adds
the hardening best practices.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]
LEVELS = ("privileged", "baseline", "restricted")
ENFORCE_LABEL = "pod-security.kubernetes.io/enforce"
DEFAULT_SCHEDULER = "default-scheduler"

_BASELINE_CAPS = {
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
    "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}  # fmt: skip
_SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}  # fmt: skip
_SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
_RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}  # fmt: skip


@dataclass(frozen=True)
class PodRules:
    """What the chart allows beyond the level: nodeName bypasses the scheduler and the GPU
    ledger; another scheduler decides placement the ledger does not know about."""

    default_level: str = "baseline"
    allow_node_name: bool = False
    allowed_schedulers: tuple[str, ...] = (DEFAULT_SCHEDULER,)
    # hostPath folders (and what is below them) baseline lets through, e.g. a node-local
    # checkpoint disk; restricted never does.
    allowed_host_paths: tuple[str, ...] = ()

    def host_path_allowed(self, path: str) -> bool:
        clean = "/" + path.strip("/")
        return any(
            clean == (p := "/" + prefix.strip("/")) or clean.startswith(p.rstrip("/") + "/")
            for prefix in self.allowed_host_paths
        )


@dataclass(frozen=True)
class Violation:
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def namespace_level(namespace: Obj | None, default: str) -> str:
    """The namespace's own enforce level where it has one, else the chart's default."""
    lab = ((namespace or {}).get("metadata") or {}).get("labels") or {}
    level = lab.get(ENFORCE_LABEL, default)
    return level if level in LEVELS else "restricted"  # an unknown level is read strictly


def _containers(spec: Obj, base: str) -> Iterator[tuple[str, Obj]]:
    for kind in ("initContainers", "containers", "ephemeralContainers"):
        for i, c in enumerate(spec.get(kind) or []):
            yield f"{base}.{kind}[{i}]", c


def _baseline(spec: Obj, base: str, rules: PodRules) -> Iterator[Violation]:
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            yield Violation(f"{base}.{key}", "sharing the host's namespaces is not allowed")
    psc = spec.get("securityContext") or {}
    yield from _security_context_baseline(psc, f"{base}.securityContext", pod=True)
    for i, sysctl in enumerate(psc.get("sysctls") or []):
        if sysctl.get("name") not in _SAFE_SYSCTLS:
            yield Violation(
                f"{base}.securityContext.sysctls[{i}].name",
                f"sysctl {sysctl.get('name')!r} is not in the safe set",
            )
    for i, vol in enumerate(spec.get("volumes") or []):
        if "hostPath" in vol and not rules.host_path_allowed(vol["hostPath"].get("path", "")):
            yield Violation(
                f"{base}.volumes[{i}].hostPath",
                f"hostPath {vol['hostPath'].get('path')!r} is not allowed (the chart's "
                f"podPolicy.allowedHostPaths: {list(rules.allowed_host_paths)})",
            )
    for path, c in _containers(spec, base):
        sc = c.get("securityContext") or {}
        yield from _security_context_baseline(sc, f"{path}.securityContext", pod=False)
        if sc.get("privileged"):
            yield Violation(f"{path}.securityContext.privileged", "privileged is not allowed")
        added = ((sc.get("capabilities") or {}).get("add")) or []
        bad = [cap for cap in added if cap not in _BASELINE_CAPS]
        if bad:
            yield Violation(
                f"{path}.securityContext.capabilities.add", f"capabilities {bad} are not allowed"
            )
        if sc.get("procMount") not in (None, "Default"):
            yield Violation(f"{path}.securityContext.procMount", "only Default is allowed")
        for j, port in enumerate(c.get("ports") or []):
            if port.get("hostPort"):
                yield Violation(f"{path}.ports[{j}].hostPort", "host ports are not allowed")


def _security_context_baseline(sc: Obj, path: str, pod: bool) -> Iterator[Violation]:
    if sc.get("windowsOptions", {}).get("hostProcess"):
        yield Violation(f"{path}.windowsOptions.hostProcess", "host processes are not allowed")
    if (sc.get("seccompProfile") or {}).get("type") == "Unconfined":
        yield Violation(f"{path}.seccompProfile.type", "Unconfined is not allowed")
    if (sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
        yield Violation(f"{path}.appArmorProfile.type", "Unconfined is not allowed")
    se = sc.get("seLinuxOptions") or {}
    if se.get("type", "") not in _SELINUX_TYPES:
        yield Violation(f"{path}.seLinuxOptions.type", f"type {se.get('type')!r} is not allowed")
    for key in ("user", "role"):
        if se.get(key):
            yield Violation(f"{path}.seLinuxOptions.{key}", "may not be set")


def _restricted(spec: Obj, base: str) -> Iterator[Violation]:
    for i, vol in enumerate(spec.get("volumes") or []):
        kinds = [k for k in vol if k != "name"]
        if kinds and kinds[0] not in _RESTRICTED_VOLUMES:
            yield Violation(
                f"{base}.volumes[{i}].{kinds[0]}", f"{kinds[0]} volumes are not allowed"
            )
    psc = spec.get("securityContext") or {}
    if psc.get("runAsUser") == 0:
        yield Violation(f"{base}.securityContext.runAsUser", "may not be 0 (root)")
    for path, c in _containers(spec, base):
        sc = c.get("securityContext") or {}
        where = f"{path}.securityContext"
        if sc.get("allowPrivilegeEscalation") is not False:
            yield Violation(f"{where}.allowPrivilegeEscalation", "must be false")
        if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
            yield Violation(f"{where}.runAsNonRoot", "must be true (here or in the pod's)")
        if sc.get("runAsUser") == 0:
            yield Violation(f"{where}.runAsUser", "may not be 0 (root)")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            yield Violation(
                f"{where}.seccompProfile.type", "must be RuntimeDefault or Localhost (or the pod's)"
            )
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            yield Violation(f"{where}.capabilities.drop", "must include ALL")
        extra = [cap for cap in caps.get("add") or [] if cap != "NET_BIND_SERVICE"]
        if extra:
            yield Violation(f"{where}.capabilities.add", f"only NET_BIND_SERVICE, not {extra}")


def check_template(
    template: Obj,
    level: str,
    rules: PodRules,
    scheduler_name: str | None = None,
    base: str = "spec.template.spec",
) -> list[Violation]:
    """Every way the job's pod template breaks the level or the chart's rules."""
    spec = template.get("spec") or {}
    found: list[Violation] = []
    if spec.get("nodeName") and not rules.allow_node_name:
        found.append(
            Violation(
                f"{base}.nodeName",
                "pinning a pod to a node bypasses the scheduler and the GPU ledger; use a "
                "nodeSelector (the chart's podPolicy.allowNodeName allows it)",
            )
        )
    for path, name in ((f"{base}.schedulerName", spec.get("schedulerName")),
                       ("spec.gang.schedulerName", scheduler_name)):  # fmt: skip
        if name and name not in rules.allowed_schedulers:
            found.append(
                Violation(
                    path,
                    f"scheduler {name!r} is not allowed (the chart's podPolicy.allowedSchedulers: "
                    f"{list(rules.allowed_schedulers)})",
                )
            )
    if level in ("baseline", "restricted"):
        found += _baseline(spec, base, rules)
    if level == "restricted":
        found += _restricted(spec, base)
    return found
