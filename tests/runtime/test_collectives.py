"""Every all-reduce algorithm, written on send/recv, gives what torch.distributed.all_reduce gives:
real multi-process gloo jobs, world sizes 2-4, odd element counts, three float types."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from distml_runtime import distenv
from distml_runtime.bench import allreduce as bench

COUNTS = (1, 7, 1_000_003)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ALGOS = {
    "ring": {},
    "tree": {},
    "hierarchical-2": {"ranks_per_node": 2},
    "hierarchical-1": {"ranks_per_node": 1},
    "ps-1": {"ps_servers": 1},
    "ps-2": {"ps_servers": 2},
}
TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 1e-2), torch.bfloat16: (2e-2, 5e-2)}


def _compare_all(out: str) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    failures = []
    for count in COUNTS:
        for dtype in DTYPES:
            gen = torch.Generator().manual_seed(1000 * rank + count)
            x = torch.randn(count, generator=gen).to(dtype)
            want = x.clone()
            dist.all_reduce(want)
            for name, kw in ALGOS.items():
                algo = name.split("-")[0]
                fn = bench.pick_algorithm(
                    algo, kw.get("ranks_per_node", 1), min(kw.get("ps_servers", 1), world)
                )
                got = x.clone()
                fn(got, list(range(world)))
                rtol, atol = TOLERANCE[dtype]
                if not torch.allclose(got.float(), want.float(), rtol=rtol, atol=atol):
                    worst = (got.float() - want.float()).abs().max().item()
                    failures.append(f"{name} count={count} {dtype}: max error {worst}")
    gathered: list = [None] * world
    dist.all_gather_object(gathered, failures)
    if rank == 0:
        Path(out).write_text(json.dumps(gathered))


@pytest.mark.parametrize("world", [2, 3, 4])
def test_every_algorithm_matches_native_all_reduce(world, tmp_path):
    out = tmp_path / "failures.json"
    distenv.spawn(lambda_free_init_and_compare, world, str(out))
    per_rank = json.loads(out.read_text())
    assert per_rank == [[] for _ in range(world)]


def lambda_free_init_and_compare(out: str) -> None:
    distenv.init("gloo")
    _compare_all(out)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_benchmark_reports_no_wrong_elements_and_busbw_by_formula(dtype, tmp_path):
    path = tmp_path / "results.jsonl"
    bench.main(
        [
            "-b",
            "4",
            "-e",
            "4M",
            "-f",
            "16",
            "--algo",
            "all",
            "--nproc",
            "3",
            "--ranks-per-node",
            "2",
            "--ps-servers",
            "2",
            "-n",
            "2",
            "-w",
            "1",
            "--dtype",
            dtype,
            "--json",
            str(path),
            "--no-progress",
        ]
    )
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert {r["algo"] for r in rows} == set(bench.ALGOS)
    assert len(rows) == len(bench.ALGOS) * 6  # 4 B, 64 B, ... 4 MiB
    for r in rows:
        assert r["wrong"] == 0, r
        assert r["world_size"] == 3 and r["dtype"] == dtype
        assert r["bytes"] == r["count"] * torch.empty((), dtype=bench.DTYPES[dtype]).element_size()
        assert math.isclose(r["algbw_gbps"], r["bytes"] / (r["time_us"] * 1e-6) / 1e9, rel_tol=1e-9)
        assert r["busbw_gbps"] == r["algbw_gbps"] * 2 * (3 - 1) / 3


def test_benchmark_writes_a_plot(tmp_path):
    png = tmp_path / "busbw.png"
    bench.main(
        [
            "-b",
            "1K",
            "-e",
            "4K",
            "--algo",
            "ring",
            "--nproc",
            "2",
            "-n",
            "1",
            "-w",
            "0",
            "--plot",
            str(png),
            "--no-progress",
        ]
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
