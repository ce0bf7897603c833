"""Fault and lifecycle injection on simulated nodes: end a pod with an exit code, take a node down
(its heartbeat stops and its pods freeze, as when a server dies), bring it back, or make it vanish.
The KWOK stages in kwok-stages.yaml act on the annotations set here."""

from __future__ import annotations

import contextlib
import json
import os
import signal

from distml.localcluster import processes
from distml.localcluster.cluster import LocalCluster, process_node_index
from distml.localcluster.nodes import BLOCK_LABEL, SIMULATED_LABEL
from distml.localnode import network

EXIT_CODE_ANNOTATION = "sim.distml.io/exit-code"
REASON_ANNOTATION = "sim.distml.io/reason"
NODE_DOWN_ANNOTATION = "sim.distml.io/node-down"
FROZEN_ANNOTATION = "sim.distml.io/frozen"


def exit_pod(c: LocalCluster, namespace: str, pod: str, code: int, reason: str = "") -> None:
    """The pod's containers exit with `code`: 0 ends it Succeeded, anything else Failed."""
    args = [
        "annotate",
        "--overwrite",
        "-n",
        namespace,
        f"pod/{pod}",
        f"{EXIT_CODE_ANNOTATION}={code}",
    ]
    if reason:
        args.append(f"{REASON_ANNOTATION}={reason}")
    c.kubectl(*args)


def _pods_on(c: LocalCluster, node: str) -> list[tuple[str, str]]:
    out = c.kubectl(
        "get",
        "pods",
        "-A",
        "--field-selector",
        f"spec.nodeName={node}",
        "-o",
        "jsonpath={range .items[*]}{.metadata.namespace} {.metadata.name}{'\\n'}{end}",
    )
    return [tuple(line.split()) for line in out.splitlines() if line.strip()]  # type: ignore[misc]


def node_down(c: LocalCluster, node: str) -> None:
    """The node stops heartbeating and its pods freeze as they are, deletions included; the
    controller manager marks it NotReady after its grace period."""
    c.kubectl("annotate", "--overwrite", f"node/{node}", f"{NODE_DOWN_ANNOTATION}=true")
    for ns, pod in _pods_on(c, node):
        c.kubectl(
            "annotate",
            "--overwrite",
            "-n",
            ns,
            f"pod/{pod}",
            f"{FROZEN_ANNOTATION}=true",
            check=False,
        )


def node_up(c: LocalCluster, node: str) -> None:
    c.kubectl("annotate", f"node/{node}", f"{NODE_DOWN_ANNOTATION}-")
    for ns, pod in _pods_on(c, node):
        c.kubectl("annotate", "-n", ns, f"pod/{pod}", f"{FROZEN_ANNOTATION}-", check=False)


def node_remove(c: LocalCluster, node: str) -> None:
    """The Node object is deleted, as when a cloud instance is terminated."""
    c.kubectl("delete", f"node/{node}", "--wait=false")


def process_node_gone(c: LocalCluster, node: str) -> None:
    """A process node's machine is gone at once, as when its instance is terminated: its agent
    (the kubelet) and every process on it (its pods, its kube-proxy) die by SIGKILL, and its
    Node object is deleted, as the cloud's node controller does. `c.sync_process_nodes` brings
    a node of that name back, empty, as a replacement machine joins."""
    index = process_node_index(node)
    if (agent := c.process_agents().get(index)) is not None:
        os.kill(agent, signal.SIGKILL)
    network.kill_all(c.node_network().node(index))
    for pid in kube_proxies(c, node):  # in this machine's namespace, in a session of its own
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    c.kubectl("delete", f"node/{node}", "--wait=false")


def kube_proxies(c: LocalCluster, node: str) -> list[int]:
    """The kube-proxy processes of this cluster's process node `node`. They run outside the
    node's network namespace, so killing what is in it does not reach them, and the node's agent
    dying by SIGKILL leaves them behind (the node that replaces it would get a second one)."""
    wanted = {f"--kubeconfig={c.kubeconfig}", f"--hostname-override={node}"}
    return processes.matching(lambda argv: argv[0].endswith("kube-proxy") and wanted <= set(argv))


def node_cut(c: LocalCluster, node: str, off: bool = True) -> None:
    """Cuts a process node off the network (its link goes down both ways; its agent stops
    heartbeating as a partitioned kubelet would), or restores it."""
    network.cut(c.node_network().node(process_node_index(node)), off)


def link_rate(c: LocalCluster, node: str, rate: str | None) -> None:
    """Shapes a process node's link to `rate` both ways (None: unshaped)."""
    if rate is not None:
        network.rate_bits(rate)
    network.shape(c.node_network().node(process_node_index(node)), rate)


def block_rate(c: LocalCluster, rate: str | None, label: str = BLOCK_LABEL) -> dict[str, str]:
    """Shapes the links between the process nodes' network blocks (their `label`) to `rate`,
    leaving each block's own links as they are; returns each node's block."""
    if rate is not None:
        network.rate_bits(rate)
    listed = json.loads(c.kubectl("get", "nodes", "-o", "json"))["items"]
    net = c.node_network()
    blocks, address = {}, {}
    for node in listed:
        name = node["metadata"]["name"]
        if (node["metadata"].get("labels") or {}).get(SIMULATED_LABEL) != "process":
            continue
        blocks[name] = (node["metadata"].get("labels") or {}).get(label, name)
        address[name] = net.node(process_node_index(name)).address
    for name in blocks:
        others = [address[o] for o in blocks if blocks[o] != blocks[name]]
        network.shape_toward(net.node(process_node_index(name)), others, rate)
    return blocks


def compact_history(c: LocalCluster) -> int:
    """Compacts etcd at its current revision (what the API server does every few minutes, here
    at once): no watch can be served from before it. Returns the revision."""
    import base64
    import json
    import urllib.request

    base = f"http://127.0.0.1:{c.state()['etcd_port']}/v3/kv"

    def post(call: str, body: dict[str, object]) -> dict[str, object]:
        req = urllib.request.Request(f"{base}/{call}", data=json.dumps(body).encode())
        with urllib.request.urlopen(req, timeout=10) as resp:
            return dict(json.loads(resp.read()))

    key = base64.b64encode(b"/registry").decode()
    head = post("range", {"key": key, "limit": 1, "keys_only": True})["header"]
    revision = int(head["revision"])  # type: ignore[index]
    post("compaction", {"revision": str(revision), "physical": True})
    return revision
