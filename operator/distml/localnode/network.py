"""Each process node is its own network host: a network namespace joined to one bridge (the
"top-of-rack switch") by a veth pair. Pods on a node share its namespace, the way hostNetwork pods
share a server's; pods on different nodes talk over the veths, whose bandwidth `tc` can shape
(token bucket) and whose host end can be taken down to cut the node off.

Only this machine's own namespaces and a private /24 per cluster are used. Needs root
(CAP_NET_ADMIN).

The names and addresses are pure functions of the cluster and the node's index
(`ClusterNet.node`); `setup`, `teardown`, `shape` and `cut` run `ip` and `tc`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

SUBNETS = ipaddress.ip_network("10.242.0.0/16")  # each cluster takes one free /24 of these
FIRST_NODE = 10  # node i gets .10+i
ROUTER = 2  # the Service router's namespace gets .2 (the bridge, this machine's end, has .1)
HOSTS_DIR = Path("/etc/netns")
_RATE = re.compile(r"^\d+(\.\d+)?(bit|kbit|mbit|gbit)$")
_RATE_BITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9}


class NetworkError(RuntimeError):
    pass


@dataclass(frozen=True)
class ClusterNet:
    """One local cluster's node network: its own bridge, namespaces and /24, named after the
    cluster's folder, so the clusters of two checkouts on one machine (a demo and a CI run)
    never meet."""

    id: str  # 4 hex digits
    subnet: str  # e.g. 10.242.7.0/24

    @classmethod
    def for_folder(cls, folder: Path, subnet: str) -> ClusterNet:
        return cls(hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:4], subnet)

    @property
    def bridge(self) -> str:
        return f"dml{self.id}"  # interface names are at most 15 characters

    @property
    def netns_prefix(self) -> str:
        return f"distml-{self.id}-"

    @property
    def gateway(self) -> str:
        return f"{ipaddress.ip_network(self.subnet).network_address + 1}/24"

    @property
    def service_cidr(self) -> str:
        """The cluster's Service IPs: 10.243.N.0/24 for nodes on 10.242.N.0/24, so two clusters
        on one machine route their Services each to its own router."""
        net = ipaddress.ip_network(self.subnet)
        return str(ipaddress.ip_network((int(net.network_address) + (1 << 16), 24)))

    @property
    def router(self) -> NodeNet:
        """The namespace that takes this machine's packets for Service IPs: kube-proxy runs in
        it (as on a node), and this machine routes the Service range through it."""
        net = ipaddress.ip_network(self.subnet)
        return NodeNet(
            index=-1,
            netns=f"{self.netns_prefix}svc",
            host_veth=f"dml{self.id}s",
            address=str(net.network_address + ROUTER),
            cluster=self,
        )

    def node(self, index: int) -> NodeNet:
        net = ipaddress.ip_network(self.subnet)
        if not 0 <= index < net.num_addresses - FIRST_NODE - 1:
            raise ValueError(f"node index {index} does not fit in {self.subnet}")
        return NodeNet(
            index=index,
            netns=f"{self.netns_prefix}{index}",
            host_veth=f"dml{self.id}v{index}",
            address=str(net.network_address + FIRST_NODE + index),
            cluster=self,
        )


def free_subnet(in_use: Iterable[str]) -> str:
    """The first /24 of SUBNETS that no address on this machine is in."""
    taken = [ipaddress.ip_interface(a).network for a in in_use]
    for candidate in SUBNETS.subnets(new_prefix=24):
        if not any(candidate.overlaps(net) for net in taken):
            return str(candidate)
    raise NetworkError(f"every /24 of {SUBNETS} is in use on this machine")


def free_port() -> int:
    """A TCP port free on this machine's loopback now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def addresses_in_use() -> list[str]:
    out = _run("ip", "-o", "-4", "addr", "show", check=False).stdout
    return [line.split()[3] for line in out.splitlines() if len(line.split()) > 3]


@dataclass(frozen=True)
class NodeNet:
    index: int
    netns: str  # network namespace, also the name of its /etc/netns folder
    host_veth: str  # the bridge's end, in this machine's namespace
    address: str  # the node's (and its pods') IP
    cluster: ClusterNet

    @property
    def hosts_file(self) -> Path:
        """`ip netns exec` bind-mounts this over /etc/hosts for what runs in the namespace."""
        return HOSTS_DIR / self.netns / "hosts"

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns]


def rate_bits(rate: str) -> int:
    """'10gbit' -> 10_000_000_000; tc's own syntax, checked here so errors name the value."""
    m = _RATE.match(rate)
    if not m:
        raise ValueError(f"rate {rate!r} is not like 100mbit or 10gbit")
    return int(float(rate[: -len(m.group(2))]) * _RATE_BITS[m.group(2)])


def tbf_args(rate: str) -> list[str]:
    """A token bucket at `rate`, with a burst of 10 ms of traffic (at least 64 KiB) so a fast
    link is not throttled by the timer tick, and 50 ms of queue."""
    burst = max(rate_bits(rate) // 8 // 100, 64 * 1024)
    return ["tbf", "rate", rate, "burst", str(burst), "latency", "50ms"]


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and out.returncode != 0:
        raise NetworkError(f"`{' '.join(argv)}` failed: {out.stderr.strip()}")
    return out


def available() -> str | None:
    """None when this machine can make node networks, else why not."""
    if os.geteuid() != 0:
        return "process nodes need root for network namespaces (ip netns, veth, tc)"
    for tool in ("ip", "tc", "unshare"):
        if shutil.which(tool) is None:
            return f"process nodes need `{tool}` (Debian: iproute2, util-linux)"
    return None


def _link_exists(name: str, netns: str | None = None) -> bool:
    argv = ["ip", *(["-n", netns] if netns else []), "link", "show", name]
    return _run(*argv, check=False).returncode == 0


def ensure_bridge(cluster: ClusterNet) -> None:
    """Idempotent, and safe when several agents start at once: each step may find its work done
    by another, and only what is still missing afterwards is an error."""
    _run("ip", "link", "add", cluster.bridge, "type", "bridge", check=False)
    if not _link_exists(cluster.bridge):
        raise NetworkError(f"cannot create bridge {cluster.bridge}")
    _run("ip", "addr", "replace", cluster.gateway, "dev", cluster.bridge)
    _run("ip", "link", "set", cluster.bridge, "up")


def setup(net: NodeNet, rate: str | None = None) -> None:
    """Creates (or repairs) the node's namespace and link; idempotent."""
    ensure_bridge(net.cluster)
    added = _run("ip", "netns", "add", net.netns, check=False).returncode == 0
    if not added and net.netns not in _run("ip", "netns", "list").stdout.split():
        raise NetworkError(f"cannot create network namespace {net.netns}")
    if not _link_exists(net.host_veth):
        _run("ip", "link", "add", net.host_veth, "type", "veth", "peer", "name", "eth0", "netns",
             net.netns)  # fmt: skip
        _run("ip", "-n", net.netns, "addr", "add", f"{net.address}/24", "dev", "eth0")
    _run("ip", "link", "set", net.host_veth, "master", net.cluster.bridge, "up")
    _run("ip", "-n", net.netns, "link", "set", "lo", "up")
    _run("ip", "-n", net.netns, "link", "set", "eth0", "up")
    gateway = net.cluster.gateway.split("/")[0]
    _run("ip", "-n", net.netns, "route", "replace", "default", "via", gateway)
    net.hosts_file.parent.mkdir(parents=True, exist_ok=True)
    if not net.hosts_file.exists():
        net.hosts_file.write_text(f"127.0.0.1 localhost\n{net.address} {net.netns}\n")
    # Names resolve from the hosts file alone. This machine's DNS server is not reachable from
    # the node (the bridge routes nowhere else), and glibc would wait 10 s on every lookup that
    # misses (c10d reverse-resolves each peer); a local server that refuses at once fails fast.
    (net.hosts_file.parent / "resolv.conf").write_text(
        "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"
    )
    shape(net, rate)


def setup_router(cluster: ClusterNet) -> NodeNet:
    """The Service router: a namespace on the bridge that forwards, and a route for the
    cluster's Service range through it from this machine. Idempotent."""
    router = cluster.router
    setup(router)
    _run("ip", "netns", "exec", router.netns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
    _run("ip", "route", "replace", cluster.service_cidr, "via", router.address)
    return router


def shape(net: NodeNet, rate: str | None) -> None:
    """Limits the node's link to `rate` both ways (None: as fast as the veth goes)."""
    # Out of the node (its eth0, inside its namespace) and into it (the bridge's end).
    for argv, dev in (([*net.exec_prefix(), "tc"], "eth0"), (["tc"], net.host_veth)):
        if rate is None:
            _run(*argv, "qdisc", "del", "dev", dev, "root", check=False)
        else:
            _run(*argv, "qdisc", "replace", "dev", dev, "root", *tbf_args(rate))


def shape_toward(net: NodeNet, peers: Iterable[str], rate: str | None) -> None:
    """Limits what the node sends to `peers` (addresses) to `rate`, and nothing else: a slow
    link between two network blocks, while the node's links inside its block stay fast. Each
    node shapes its own side, so a pair of nodes that both do is slow both ways. It replaces the
    node's outgoing `shape` (its incoming side, on the bridge, keeps it). None: unshaped."""
    tc = [*net.exec_prefix(), "tc"]
    _run(*tc, "qdisc", "del", "dev", "eth0", "root", check=False)
    peers = list(peers)
    if rate is None or not peers:
        return
    # htb sends what no filter classifies straight out, unshaped; the one class holds the
    # bucket (this machine's kernel has htb, tbf and u32, not prio or flower).
    burst = str(max(rate_bits(rate) // 8 // 100, 64 * 1024))
    _run(*tc, "qdisc", "add", "dev", "eth0", "root", "handle", "1:", "htb")
    _run(*tc, "class", "add", "dev", "eth0", "parent", "1:", "classid", "1:30", "htb", "rate",
         rate, "ceil", rate, "burst", burst, "cburst", burst)  # fmt: skip
    for peer in peers:
        _run(*tc, "filter", "add", "dev", "eth0", "parent", "1:", "protocol", "ip", "prio", "1",
             "u32", "match", "ip", "dst", f"{peer}/32", "flowid", "1:30")  # fmt: skip


def current_rate(net: NodeNet) -> str | None:
    out = _run("tc", "qdisc", "show", "dev", net.host_veth, check=False).stdout
    m = re.search(r"tbf .*?rate (\S+)", out)
    return m.group(1) if m else None


def cut(net: NodeNet, off: bool) -> None:
    """Takes the node's link down (off=True) or back up: packets stop both ways at once."""
    _run("ip", "link", "set", net.host_veth, "down" if off else "up")


def is_cut(net: NodeNet) -> bool:
    try:
        flags = Path(f"/sys/class/net/{net.host_veth}/flags").read_text()
    except OSError:
        return True
    return not int(flags, 16) & 0x1  # IFF_UP


def kill_all(net: NodeNet, rounds: int = 20) -> int:
    """SIGKILLs every process in the node's namespace (its pods' processes, its kube-proxy), as
    when the machine is switched off; again until none is left (one may fork in between).
    Returns how many it killed."""
    killed = 0
    for _ in range(rounds):
        pids = [int(p) for p in _run("ip", "netns", "pids", net.netns, check=False).stdout.split()]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
    return killed


def teardown(net: NodeNet) -> None:
    _run("ip", "link", "del", net.host_veth, check=False)
    _run("ip", "netns", "del", net.netns, check=False)
    if net.hosts_file.parent.is_dir():
        for f in net.hosts_file.parent.iterdir():
            f.unlink()
        net.hosts_file.parent.rmdir()


def teardown_all(cluster: ClusterNet) -> list[str]:
    """Removes this cluster's node namespaces and its bridge; returns the namespaces removed."""
    prefix = cluster.netns_prefix
    names = [
        n for n in _run("ip", "netns", "list", check=False).stdout.split()
        if n.startswith(prefix) and n[len(prefix):].isdigit()
    ]  # fmt: skip
    for name in names:
        teardown(cluster.node(int(name[len(prefix) :])))
    if teardown_router(cluster):
        names.append(cluster.router.netns)
    _run("ip", "link", "del", cluster.bridge, check=False)
    return names


def teardown_router(cluster: ClusterNet) -> bool:
    """Removes the Service router and its route; whether there was one."""
    if cluster.router.netns not in _run("ip", "netns", "list", check=False).stdout.split():
        return False
    _run("ip", "route", "del", cluster.service_cidr, check=False)
    teardown(cluster.router)
    return True
