"""`python -m distml.localnode --index I --gpus N`: set up node I's network and run its agent
until SIGTERM. `make cluster PROC_NODES=2` (or `python -m distml.localcluster up
--process-nodes 2`) starts these for you."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from distml.kube import AsyncWriter
from distml.localcluster import pki
from distml.localnode import agent, network, pods, proxy


def image_contracts(repo: Path) -> dict[str, pods.ImageContract]:
    """The project's images by repository name (distml-runtime, ...), from their Dockerfiles."""
    return {
        f"distml-{d.parent.name}": pods.parse_dockerfile(d.read_text())
        for d in sorted((repo / "images").glob("*/Dockerfile"))
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m distml.localnode", description=__doc__)
    ap.add_argument("--index", type=int, required=True, help="node number: name and address")
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--name-prefix", default="proc-node")
    ap.add_argument("--rate", default=None, help="link bandwidth, e.g. 10gbit (default: unshaped)")
    ap.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    ap.add_argument("--cluster-root", type=Path, default=Path(".cluster"))
    ap.add_argument("--subnet", default="10.242.0.0/24", help="the cluster's node network (/24)")
    ap.add_argument("--kube-proxy", default="", help="kube-proxy binary to run in the node")
    args = ap.parse_args(argv)
    why = network.available()
    if why:
        print(f"distml.localnode: {why}", file=sys.stderr)
        return 2
    root = args.cluster_root.resolve()
    net = network.ClusterNet.for_folder(root, args.subnet).node(args.index)
    network.setup(net, args.rate)
    node = agent.node_object(args.name_prefix, args.index, args.gpus)
    name = node["metadata"]["name"]
    tls = pki.write_serving_cert(root / "pki", name, net.address)
    repo = Path(os.environ.get("DISTML_REPO", Path.cwd()))
    kube_proxy = None
    if args.kube_proxy:
        if why := proxy.available(args.kube_proxy):
            print(f"distml.localnode: no Services on this node: {why}", file=sys.stderr)
        else:
            kube_proxy = proxy.command(args.kube_proxy, args.kubeconfig, name, net, root / "nodes"
                                       / name, router=False)  # fmt: skip
    node_agent = agent.NodeAgent(
        kube=AsyncWriter(args.kubeconfig),
        node=node,
        net=net,
        root=root / "nodes" / name,
        shared_root=root / "shared",
        images=image_contracts(repo),
        venv_bin=Path(sys.executable).parent,
        tls=tls,
        targets_file=root / "prometheus" / "targets" / f"{name}.json",
        kube_proxy=kube_proxy,
    )
    asyncio.run(node_agent.run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
