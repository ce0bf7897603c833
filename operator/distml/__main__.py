"""`python -m distml`: run the operator.

python -m distml                      # every namespace, metrics on :8080/metrics
python -m distml -n team-a -n team-b  # only these namespaces
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import sys
from typing import Any

import kopf
from kubernetes import client, config
from prometheus_client import start_http_server

from distml.handlers.settings import NoDiffBase
from distml.handlers.trainingjob import Operator, register
from distml.kube import Kube
from distml.planning import Settings


def _api_client() -> client.ApiClient:
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    cfg = client.Configuration.get_default_copy()
    cfg.connection_pool_maxsize = 64  # a gang's pods are created concurrently
    return client.ApiClient(cfg)


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
    ap.add_argument("--liveness", default="http://0.0.0.0:8081/healthz")
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
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    op = Operator(
        Kube(_api_client()),
        Settings(
            backoff_base_seconds=args.backoff_base_seconds,
            backoff_cap_seconds=args.backoff_cap_seconds,
        ),
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
        if args.peering:
            settings.peering.name = args.peering
            settings.peering.mandatory = True
            # kopf pauses *every* replica when peers share a priority, so each draws its own:
            # the highest is active, the rest wait and take over when it leaves.
            settings.peering.priority = random.SystemRandom().randint(1, 2**31 - 1)
            logging.getLogger("distml").info(
                "peering %r with priority %d", args.peering, settings.peering.priority
            )
        if args.metrics_port:
            start_http_server(args.metrics_port)

    asyncio.run(
        kopf.operator(
            clusterwide=not args.namespace,
            namespaces=list(args.namespace),
            standalone=not args.peering,
            liveness_endpoint=args.liveness or None,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
