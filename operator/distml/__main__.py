"""`python -m distml`: run the operator.

python -m distml                      # every namespace, metrics on :8080/metrics
python -m distml -n team-a -n team-b  # only these namespaces
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import random
import sys
from typing import Any

import kopf
from prometheus_client import start_http_server

from distml import health, placement, podpolicy
from distml.handlers.operator import Operator, register
from distml.handlers.settings import NoDiffBase
from distml.kube import AsyncWriter
from distml.trainingjob import Settings

# CPython collects cycles every 700 allocations, and its full collections walk every object in
# the caches: a fifth of the operator's CPU in a burst of 50 gangs, as every watch event parsed
# allocates a few hundred. What the operator keeps (JSON from the API server) has no cycles,
# so it collects every 50,000, and in full rarely (`make bench-startup`).
GC_THRESHOLDS = (50_000, 20, 10)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m distml",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch only these namespaces (default: all)",
    )
    ap.add_argument("--metrics-port", type=int, default=int(os.environ.get("METRICS_PORT", 8080)))
    ap.add_argument(
        "--health-port",
        type=int,
        default=int(os.environ.get("HEALTH_PORT", 8081)),
        help="serve /healthz and /readyz here (0: off)",
    )
    ap.add_argument("--peering", default="", help="kopf peering name for HA (one active replica)")
    ap.add_argument(
        "--backoff-base-seconds",
        type=float,
        default=float(os.environ.get("DISTML_BACKOFF_BASE_SECONDS", 10)),
    )
    ap.add_argument(
        "--backoff-cap-seconds",
        type=float,
        default=float(os.environ.get("DISTML_BACKOFF_CAP_SECONDS", 300)),
    )
    ap.add_argument(
        "--node-loss-seconds",
        type=float,
        default=float(os.environ.get("DISTML_NODE_LOSS_SECONDS", 15)),
        help="how long a node must be NotReady before its pods count as lost, unless many nodes "
        "are at once (an outage)",
    )
    ap.add_argument(
        "--backfill-seconds",
        type=float,
        default=float(os.environ.get("DISTML_BACKFILL_SECONDS", 300)),
        help="how long the gang at the head of the queue lets smaller gangs start on GPUs it "
        "cannot use yet; after that nothing that could use its nodes starts before it",
    )
    ap.add_argument(
        "--pod-security-level",
        choices=podpolicy.LEVELS,
        default=os.environ.get("DISTML_POD_SECURITY_LEVEL", "baseline"),
        help="Pod Security Standard worker pods must meet in a namespace without its own "
        f"{podpolicy.ENFORCE_LABEL} label",
    )
    ap.add_argument(
        "--allow-node-name",
        action="store_true",
        default=os.environ.get("DISTML_ALLOW_NODE_NAME", "") == "true",
        help="let templates set nodeName (it bypasses the scheduler and the GPU ledger)",
    )
    ap.add_argument(
        "--allowed-scheduler",
        action="append",
        default=[],
        help="a schedulerName templates may use (repeatable; default-scheduler always)",
    )
    ap.add_argument(
        "--allowed-host-path",
        action="append",
        default=[p for p in os.environ.get("DISTML_ALLOWED_HOST_PATHS", "").split(":") if p],
        help="a hostPath folder worker pods may mount under baseline (repeatable)",
    )
    ap.add_argument(
        "--block-label",
        default=os.environ.get("DISTML_BLOCK_LABEL", placement.Keys.block),
        help="the node label that names a node's network block (pipeline stages of a job are "
        "kept inside one); a node without it is a block of its own",
    )
    ap.add_argument(
        "--zone-label",
        default=os.environ.get("DISTML_ZONE_LABEL", placement.Keys.zone),
        help="the node label that names a node's zone (shown in a job's status)",
    )
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    op = Operator(
        AsyncWriter(),  # in the cluster: its ServiceAccount; outside: $KUBECONFIG
        Settings(
            backoff_base_seconds=args.backoff_base_seconds,
            backoff_cap_seconds=args.backoff_cap_seconds,
            backfill_seconds=args.backfill_seconds,
            node_loss_seconds=args.node_loss_seconds,
            topology=placement.Keys(block=args.block_label, zone=args.zone_label),
            pod_rules=podpolicy.PodRules(
                default_level=args.pod_security_level,
                allow_node_name=args.allow_node_name,
                allowed_schedulers=(podpolicy.DEFAULT_SCHEDULER, *args.allowed_scheduler),
                allowed_host_paths=tuple(args.allowed_host_path),
            ),
        ),
        namespaces=tuple(args.namespace),
        peering=bool(args.peering),
    )
    register(op)

    @kopf.on.startup()
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.level = logging.WARNING  # our own Events describe what happened
        if not args.verbose:  # one "Handler succeeded" line per pod event is noise, and costs CPU
            logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        settings.persistence.diffbase_storage = NoDiffBase()
        settings.watching.server_timeout = 300
        settings.networking.connect_timeout = 10
        # Retries of kopf's own requests (its job watch above all) at most 2 s apart, so that
        # a job created just after an API outage is seen within a couple of seconds, not after
        # kopf's default backoff has grown to 5-8 s.
        settings.networking.error_backoffs = (0.5, 1, *([2] * 13))
        if args.peering:
            settings.peering.name = args.peering
            settings.peering.mandatory = True
            # kopf pauses *every* replica when peers share a priority, so each draws its own:
            # the highest is active, the rest wait and take over when it leaves.
            settings.peering.priority = random.SystemRandom().randint(1, 2**31 - 1)
            logging.getLogger("distml").info(
                "peering %r with priority %d", args.peering, settings.peering.priority
            )

    async def run() -> None:
        # Metrics and probes answer from the start, while the caches wait for the API server.
        if args.metrics_port:
            start_http_server(args.metrics_port)
        if args.health_port:
            await health.serve(args.health_port, op.ready)
        await kopf.operator(
            clusterwide=not args.namespace,
            namespaces=list(args.namespace),
            standalone=not args.peering,
        )

    gc.set_threshold(*GC_THRESHOLDS)
    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
