"""`python -m distml.localcluster up|down|status|exit-pod|node-down|node-up|node-remove`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from distml.localcluster import faults
from distml.localcluster.cluster import LocalCluster
from distml.localcluster.nodes import ClusterShape, NodeShape


def default_cluster() -> LocalCluster:
    repo = Path(os.environ.get("DISTML_REPO", Path.cwd()))
    return LocalCluster(root=repo / ".cluster", bin_dir=repo / "bin")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m distml.localcluster", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start the cluster (or make its nodes match) and wait for Ready")
    up.add_argument("--nodes", type=int, default=4)
    up.add_argument("--gpus-per-node", type=int, default=8)
    up.add_argument("--nodes-per-block", type=int, default=2)
    up.add_argument("--zones", type=int, default=2)
    up.add_argument("--timeout", type=float, default=180.0)
    up.add_argument(
        "--process-nodes", type=int, default=0, help="nodes whose pods run as real processes"
    )
    up.add_argument("--process-gpus", type=int, default=8, help="GPUs each process node offers")
    up.add_argument("--link-rate", default=None, help="process nodes' link bandwidth (10gbit)")
    sub.add_parser("down", help="stop every process the cluster started")
    sub.add_parser("status", help="say whether the cluster is up and list its nodes")
    ex = sub.add_parser("exit-pod", help="make a pod's containers exit with a code")
    ex.add_argument("pod")
    ex.add_argument("code", type=int)
    ex.add_argument("-n", "--namespace", default="default")
    ex.add_argument("--reason", default="")
    op = sub.add_parser(
        "operator", help="run the operator against the cluster, as a managed process"
    )
    op.add_argument(
        "--service-account",
        default="",
        metavar="NAMESPACE/NAME",
        help="authenticate as this ServiceAccount (e.g. the chart's), not as cluster admin",
    )
    op.add_argument("--no-crds", action="store_true", help="the CRDs are installed (by helm)")
    op.add_argument("operator_args", nargs="*", help="more `python -m distml` arguments")
    prom = sub.add_parser("prometheus", help="run Prometheus scraping the operator and pods")
    prom.add_argument("--port", type=int, default=9090)
    dcgm_cmd = sub.add_parser("dcgm", help="serve simulated dcgm-exporter metrics for the GPUs")
    dcgm_cmd.add_argument("--port", type=int, default=9401)
    for name in ("node-down", "node-up", "node-remove"):
        sub.add_parser(name).add_argument("node")
    for name, what in (
        ("node-cut", "cut a process node's link"),
        ("node-restore", "undo node-cut"),
    ):
        sub.add_parser(name, help=what).add_argument("node")
    rate = sub.add_parser("link-rate", help="shape a process node's link (or `none`)")
    rate.add_argument("node")
    rate.add_argument("rate")
    between = sub.add_parser(
        "block-rate", help="shape the links between process nodes' network blocks (or `none`)"
    )
    between.add_argument("rate")
    args = ap.parse_args(argv)

    c = default_cluster()
    if args.cmd == "up":
        shape = ClusterShape(
            nodes=args.nodes, nodes_per_block=args.nodes_per_block, zones=args.zones
        )
        c.up(shape, NodeShape(gpus=args.gpus_per_node), timeout=args.timeout)
        c.sync_process_nodes(args.process_nodes, args.process_gpus, args.link_rate)
        print(f"export KUBECONFIG={c.kubeconfig}")
    elif args.cmd == "down":
        c.down()
    elif args.cmd == "status":
        if not c.is_up():
            print("local cluster: down")
            return 1
        print(f"local cluster: up (KUBECONFIG={c.kubeconfig})")
        print(
            c.kubectl(
                "get",
                "nodes",
                "-L",
                "nvidia.com/gpu.product,topology.kubernetes.io/zone,topology.distml.io/block",
                "-o",
                "wide",
            ),
            end="",
        )
    elif args.cmd == "exit-pod":
        faults.exit_pod(c, args.namespace, args.pod, args.code, args.reason)
    elif args.cmd == "operator":
        if not args.no_crds:
            c.apply_crds(Path(os.environ.get("DISTML_REPO", Path.cwd())) / "crds")
        kubeconfig = None
        if args.service_account:
            ns, _, sa = args.service_account.partition("/")
            kubeconfig = c.token_kubeconfig(sa, ns)
        pid = c.start_operator(8080, kubeconfig, *args.operator_args)
        print(f"operator running (pid {pid}); log: {c.logs / 'operator.log'}")
    elif args.cmd == "prometheus":
        pid = c.start_prometheus(args.port)
        print(f"prometheus running (pid {pid}) on http://127.0.0.1:{args.port}")
    elif args.cmd == "dcgm":
        from distml.localcluster import dcgm

        dcgm.serve(str(c.kubeconfig), args.port)
    elif args.cmd == "node-down":
        faults.node_down(c, args.node)
    elif args.cmd == "node-up":
        faults.node_up(c, args.node)
    elif args.cmd == "node-remove":
        faults.node_remove(c, args.node)
    elif args.cmd in ("node-cut", "node-restore"):
        faults.node_cut(c, args.node, off=args.cmd == "node-cut")
    elif args.cmd == "link-rate":
        faults.link_rate(c, args.node, None if args.rate == "none" else args.rate)
    elif args.cmd == "block-rate":
        blocks = faults.block_rate(c, None if args.rate == "none" else args.rate)
        for node, block in sorted(blocks.items()):
            print(f"{node}\t{block}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
