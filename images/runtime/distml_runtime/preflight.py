"""Preflight: before a job trains, its pods measure the network they will train over.

    python -m distml_runtime.preflight --bytes 32M --min-busbw-gbps 10

One process per pod (the operator runs it as an init container, RANK = the pod's node rank) runs
the all-reduce benchmark on `--bytes`, then times each link of the ring of pods (pod i <-> pod
i+1) with point-to-point transfers, so a slow job names its slow link instead of training slowly
for days. Bandwidths are in gigabits per second (nccl-tests' busbw in GB/s x 8), the unit links
are sold in.

The verdict goes to the termination log as JSON, which the operator reads from the pod's status.
Exit codes: 0 passed (or no threshold), 3 below the threshold (the job fails at once), 75 the
ranks could not meet (retryable).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from distml_runtime import distenv
from distml_runtime.bench.allreduce import measure, parse_bytes, pick_algorithm

EXIT_SLOW = 3  # the operator's distml.trainingjob.policies.preflight.EXIT_PREFLIGHT_SLOW
EXIT_NO_PEERS = 75
MAX_LINKS_REPORTED = 8  # the termination message holds 4 KiB


def link_gbps(peer: int, nbytes: int, device: torch.device, first: bool, rounds: int) -> float:
    """Round trips of `nbytes` with `peer`; the side that sends first times them."""
    buf = torch.ones(max(nbytes // 4, 1), dtype=torch.float32, device=device)
    seconds = 0.0
    for i in range(rounds + 1):
        t0 = time.perf_counter()
        if first:
            dist.send(buf, peer)
            dist.recv(buf, peer)
        else:
            dist.recv(buf, peer)
            dist.send(buf, peer)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:  # the first round trip sets the connection up
            seconds += time.perf_counter() - t0
    return 2 * rounds * buf.numel() * 4 * 8 / seconds / 1e9 if seconds > 0 else 0.0


def ring_links(
    nodes: list[str], nbytes: int, device: torch.device, rounds: int
) -> list[dict[str, Any]]:
    """Each link of the ring of ranks in turn (others wait), as [{a, b, gbps}], slowest first."""
    rank, world = dist.get_rank(), dist.get_world_size()
    pairs = [(i, (i + 1) % world) for i in range(world if world > 2 else 1)]
    mine = torch.zeros(len(pairs), dtype=torch.float64)
    for k, (a, b) in enumerate(pairs):
        dist.barrier()
        if rank in (a, b):
            gbps = link_gbps(b if rank == a else a, nbytes, device, rank == a, rounds)
            if rank == a:
                mine[k] = gbps
    dist.all_reduce(mine)  # only the timing side wrote its link: the sum is every link
    links = [
        {"a": nodes[a], "b": nodes[b], "gbps": round(float(mine[k]), 3)}
        for k, (a, b) in enumerate(pairs)
    ]
    return sorted(links, key=lambda link: link["gbps"])


def verdict(
    busbw_gbps: float, algbw_gbps: float, nbytes: int, world: int,
    links: list[dict[str, Any]], minimum: float | None,
) -> dict[str, Any]:  # fmt: skip
    """The JSON the operator reads; `passed` is False only below a threshold."""
    slowest = links[0] if links else None
    passed = minimum is None or busbw_gbps >= minimum
    out: dict[str, Any] = {
        "busBwGbps": round(busbw_gbps, 3),
        "algBwGbps": round(algbw_gbps, 3),
        "bytes": nbytes,
        "worldSize": world,
        "passed": passed,
        "links": links[:MAX_LINKS_REPORTED],
        "measuredAt": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if minimum is not None:
        out["minBusBwGbps"] = minimum
    if slowest:
        out["slowestLink"] = f"{slowest['a']} <-> {slowest['b']}"
        out["slowestLinkGbps"] = slowest["gbps"]
    if passed:
        out["message"] = f"all-reduce busbw {busbw_gbps:.2f} Gbps over {world} pods"
    else:
        where = (
            f"; slowest link {out['slowestLink']} at {slowest['gbps']:.2f} Gbps" if slowest else ""
        )
        out["message"] = (
            f"all-reduce busbw {busbw_gbps:.2f} Gbps is below minBusBwGbps {minimum:g}{where}"
        )
    return out


def run(args: argparse.Namespace) -> int:
    backend = distenv.pick_backend(args.backend)
    device = distenv.device_for(backend)
    try:
        if not dist.is_initialized():
            dist.init_process_group(backend, timeout=dt.timedelta(seconds=args.timeout))
    except (RuntimeError, ValueError) as err:  # a peer never came
        print(f"[preflight] ranks could not meet: {err}", file=sys.stderr)
        return EXIT_NO_PEERS
    rank, world = dist.get_rank(), dist.get_world_size()
    nodes: list[Any] = [None] * world
    dist.all_gather_object(nodes, os.environ.get("DISTML_NODE_NAME") or socket.gethostname())
    count = max(args.bytes // 4, 1)
    result = measure(
        "native", pick_algorithm("native", 1, 1), count, torch.float32, device,
        args.iters, args.warmup,
    )  # fmt: skip
    links = ring_links(nodes, args.bytes, device, args.iters) if world > 1 else []
    out = verdict(
        result.busbw_gbps * 8, result.algbw_gbps * 8, result.bytes, world, links, args.min_busbw
    )
    if args.termination_log:
        Path(args.termination_log).write_text(json.dumps(out, separators=(",", ":")))
    if rank == 0:
        print(f"[preflight] {out['message']}", flush=True)
        for link in links:
            print(f"[preflight]   {link['a']} <-> {link['b']}: {link['gbps']:.2f} Gbps", flush=True)
    return 0 if out["passed"] else EXIT_SLOW


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m distml_runtime.preflight",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--bytes", type=parse_bytes, default=parse_bytes("32M"))
    ap.add_argument("--min-busbw-gbps", dest="min_busbw", type=float, default=None)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for peers")
    ap.add_argument("--termination-log", default=None, help="where the JSON verdict goes")
    distenv.add_rank_arguments(ap)
    return ap


def main(argv: list[str] | None = None) -> int:
    return distenv.run_ranks(run, parser().parse_args(argv))


if __name__ == "__main__":
    distenv.exit_process(main())
