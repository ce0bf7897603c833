"""Benchmark: the all-reduce algorithms against torch's native all-reduce, measured in one run.

    make bench-allreduce            # 4 gloo ranks, 1 KiB .. 64 MiB
    python bench/allreduce_compare.py --nproc 4 -e 64M --out bench/results

Prints the nccl-tests tables, then the ratios the book's chapters predict: ring ~ native at large
messages (both bandwidth-optimal), tree beating ring at small ones (fewer latency-bound steps),
and a parameter server whose bottleneck shrinks as servers are added. Writes JSON lines and a plot.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from distml_runtime.bench import allreduce


def run(out: Path, nproc: int, maxbytes: str, iters: int, extra: list[str]) -> list[dict]:
    rows: list[dict] = []
    for tag, args in (("", ["--algo", "all"]), ("-2", ["--algo", "ps", "--ps-servers", "2"])):
        path = out / f"allreduce{tag}.jsonl"
        allreduce.main(
            [
                "--nproc",
                str(nproc),
                "-b",
                "1K",
                "-e",
                maxbytes,
                "-f",
                "4",
                "-n",
                str(iters),
                "-w",
                "3",
                "--json",
                str(path),
                "--no-progress",
                *args,
                *extra,
            ]
        )
        for line in path.read_text().splitlines():
            row = json.loads(line)
            row["algo"] += tag
            rows.append(row)
    return rows


def ratios(rows: list[dict]) -> list[tuple[str, float]]:
    by = {(r["algo"], r["bytes"]): r for r in rows}
    big = max(r["bytes"] for r in rows)
    small = [b for b in sorted({r["bytes"] for r in rows}) if b <= 8192]
    out = [
        (
            f"ring / native busbw at {big} B",
            by["ring", big]["busbw_gbps"] / by["native", big]["busbw_gbps"],
        )
    ]
    for b in small:
        out.append(
            (
                f"tree / ring speed at {b} B (time ratio ring/tree)",
                by["ring", b]["time_us"] / by["tree", b]["time_us"],
            )
        )
    out.append(
        (
            f"ps 2 servers / 1 server busbw at {big} B",
            by["ps-2", big]["busbw_gbps"] / by["ps", big]["busbw_gbps"],
        )
    )
    out.append(
        (
            f"ps 1 server / ring busbw at {big} B",
            by["ps", big]["busbw_gbps"] / by["ring", big]["busbw_gbps"],
        )
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--nproc", type=int, default=4)
    ap.add_argument("-e", "--maxbytes", default="64M")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("extra", nargs="*", help="more flags for the benchmark, e.g. --dtype bfloat16")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = run(out, args.nproc, args.maxbytes, args.iters, args.extra)
    from distml_runtime.bench.allreduce import plot
    from distml_runtime.bench.report import Result

    plot([Result(**r) for r in rows], out / "allreduce-busbw.png")
    print(f"\n# ratios ({args.nproc} ranks, same run)")
    for name, value in ratios(rows):
        print(f"{name:<55} {value:6.2f}x")
    print(f"# plot: {out / 'allreduce-busbw.png'}")


if __name__ == "__main__":
    main()
