"""All-reduce microbenchmark in the spirit of nccl-tests: native, ring, tree, hierarchical and
parameter-server all-reduce over a range of message sizes, with algbw, busbw and a #wrong check.

    python -m distml_runtime.bench.allreduce -b 1K -e 64M -f 4 --algo all --nproc 4
    torchrun --nproc-per-node 8 -m distml_runtime.bench.allreduce --algo ring --backend nccl
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from distml_runtime import distenv
from distml_runtime.bench.report import Result, format_table, make_result, message_sizes
from distml_runtime.collectives import (
    AllReduce,
    hierarchical_allreduce,
    native_allreduce,
    param_server_allreduce,
    ring_allreduce,
    tree_allreduce,
)

ALGOS = ("native", "ring", "tree", "hierarchical", "ps")
DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_bytes(text: str) -> int:
    text = text.strip().upper().removesuffix("B")
    unit = text[-1] if text and text[-1] in "KMG" else ""
    try:
        value = int(text[: len(text) - len(unit)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 8, 1K, 64M)") from None
    return value * _UNITS[unit]


def fill(t: torch.Tensor, rank: int) -> None:
    """Small integers, so every summation order gives the exact same sum in any float type: any
    difference from the expected sum is an algorithm error, never rounding."""
    idx = torch.arange(t.numel(), dtype=torch.int64, device=t.device)
    t.copy_(((idx + rank) % 5 + 1).to(t.dtype))


def expected_sum(count: int, world: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    idx = torch.arange(count, dtype=torch.int64, device=device)
    total = sum(((idx + r) % 5 + 1) for r in range(world))
    return torch.as_tensor(total).to(dtype)


def pick_algorithm(name: str, ranks_per_node: int, ps_servers: int) -> AllReduce:
    algorithms: dict[str, AllReduce] = {
        "native": native_allreduce,
        "ring": ring_allreduce,
        "tree": tree_allreduce,
        "hierarchical": functools.partial(hierarchical_allreduce, ranks_per_node=ranks_per_node),
        "ps": functools.partial(param_server_allreduce, servers=ps_servers),
    }
    return algorithms[name]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    algo: str,
    fn: AllReduce,
    count: int,
    dtype: torch.dtype,
    device: torch.device,
    iters: int,
    warmup: int,
) -> Result:
    """Times `iters` calls after `warmup`, each on a fresh copy of the input; the reported time is
    the slowest rank's average. Then checks one more result against the exact expected sum."""
    rank, world = dist.get_rank(), dist.get_world_size()
    ranks = list(range(world))
    source = torch.empty(count, dtype=dtype, device=device)
    fill(source, rank)
    work = torch.empty_like(source)
    elapsed = 0.0
    for i in range(warmup + iters):
        work.copy_(source)
        _sync(device)
        dist.barrier()
        t0 = time.perf_counter()
        fn(work, ranks)
        _sync(device)
        if i >= warmup:
            elapsed += time.perf_counter() - t0
    work.copy_(source)
    fn(work, ranks)
    wrong = int((work != expected_sum(count, world, dtype, device)).sum().item())
    stats = torch.tensor([elapsed / max(iters, 1), float(wrong)], dtype=torch.float64)
    slowest = stats.clone()
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    dist.all_reduce(stats, op=dist.ReduceOp.SUM)
    return make_result(
        algo,
        count,
        str(dtype).removeprefix("torch."),
        source.element_size(),
        world,
        float(slowest[0]),
        int(stats[1]),
    )


def run(args: argparse.Namespace) -> list[Result]:
    backend = distenv.pick_backend(args.backend)
    device = distenv.init(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    ranks_per_node = args.ranks_per_node or int(os.environ.get("LOCAL_WORLD_SIZE", world))
    dtype = DTYPES[args.dtype]
    elem = torch.empty((), dtype=dtype).element_size()
    algos = list(ALGOS) if args.algo == "all" else [args.algo]
    results: list[Result] = []
    for algo in algos:
        fn = pick_algorithm(algo, ranks_per_node, args.ps_servers)
        for nbytes in message_sizes(args.minbytes, args.maxbytes, args.stepfactor):
            count = max(1, nbytes // elem)
            r = measure(algo, fn, count, dtype, device, args.iters, args.warmup)
            results.append(r)
            if rank == 0 and args.progress:
                print(
                    f"[allreduce] {algo:>12} {r.bytes:>11} B  busbw {r.busbw_gbps:8.3f} GB/s",
                    file=sys.stderr,
                    flush=True,
                )
    if rank == 0:
        publish(results, args)
    return results


def publish(results: list[Result], args: argparse.Namespace) -> None:
    print(format_table(results), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            for r in results:
                f.write(json.dumps(r.to_json()) + "\n")
    if args.plot:
        plot(results, Path(args.plot))
        print(f"# plot: {args.plot}")
    if args.metrics_port:
        serve_metrics(results, args.metrics_port, args.serve_seconds)


def plot(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for algo in dict.fromkeys(r.algo for r in results):
        rows = [r for r in results if r.algo == algo]
        ax.plot([r.bytes for r in rows], [r.busbw_gbps for r in rows], marker="o", label=algo)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("message size (bytes)")
    ax.set_ylabel("bus bandwidth (GB/s)")
    world = results[0].world_size if results else 0
    ax.set_title(f"all-reduce bus bandwidth, {world} ranks, {results[0].dtype if results else ''}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def serve_metrics(results: list[Result], port: int, seconds: float) -> None:
    from prometheus_client import Gauge, start_http_server

    labels = ["algo", "bytes", "dtype", "world_size"]
    busbw = Gauge("distml_allreduce_busbw_gbps", "All-reduce bus bandwidth, GB/s", labels)
    algbw = Gauge("distml_allreduce_algbw_gbps", "All-reduce algorithm bandwidth, GB/s", labels)
    took = Gauge("distml_allreduce_time_seconds", "All-reduce time per call", labels)
    wrong = Gauge(
        "distml_allreduce_wrong_elements", "Elements that differ from the exact sum", labels
    )
    for r in results:
        key = (r.algo, str(r.bytes), r.dtype, str(r.world_size))
        busbw.labels(*key).set(r.busbw_gbps)
        algbw.labels(*key).set(r.algbw_gbps)
        took.labels(*key).set(r.time_us / 1e6)
        wrong.labels(*key).set(r.wrong)
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        start_http_server(port)  # else the launcher already serves every worker's metrics there
    print(f"# metrics on :{port}/metrics for {seconds:.0f}s", flush=True)
    time.sleep(seconds)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m distml_runtime.bench.allreduce",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("-b", "--minbytes", type=parse_bytes, default=parse_bytes("1K"))
    ap.add_argument("-e", "--maxbytes", type=parse_bytes, default=parse_bytes("64M"))
    ap.add_argument("-f", "--stepfactor", type=int, default=2)
    ap.add_argument("-n", "--iters", type=int, default=20)
    ap.add_argument("-w", "--warmup", type=int, default=5)
    ap.add_argument("--algo", choices=[*ALGOS, "all"], default="native")
    ap.add_argument(
        "--backend",
        choices=["gloo", "nccl"],
        default=None,
        help="default: nccl when a GPU is visible, else gloo",
    )
    ap.add_argument("--dtype", choices=list(DTYPES), default="float32")
    ap.add_argument(
        "--nproc",
        type=int,
        default=0,
        help="spawn N local ranks (ignored under torchrun, which sets the ranks)",
    )
    ap.add_argument(
        "--ranks-per-node",
        type=int,
        default=0,
        help="ranks sharing a node, for hierarchical (default: LOCAL_WORLD_SIZE)",
    )
    ap.add_argument("--ps-servers", type=int, default=1)
    ap.add_argument("--json", default="", help="write one JSON object per result line")
    ap.add_argument("--plot", default="", help="write busbw against size as a PNG")
    ap.add_argument(
        "--metrics-port",
        type=int,
        default=int(os.environ.get("DISTML_METRICS_PORT", "0") or 0),
        help="serve the results as Prometheus metrics on this port (rank 0)",
    )
    ap.add_argument(
        "--serve-seconds",
        type=float,
        default=30.0,
        help="how long to keep serving metrics after the run",
    )
    ap.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.nproc and not distenv.under_launcher():
        distenv.spawn(run, args.nproc, args, ranks_per_node=args.ranks_per_node or None)
    else:
        run(args)
        if dist.is_initialized():
            distenv.leave(clean=True)
    return 0


if __name__ == "__main__":
    distenv.exit_process(main())
