"""The preflight all-reduce: real gloo ranks measure busbw and each link of their ring, write the
verdict the operator reads, and exit 3 naming the slowest link when below the minimum."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from distml.trainingjob.policies.preflight import EXIT_PREFLIGHT_SLOW
from distml_runtime.preflight import EXIT_SLOW


def _preflight(tmp_path: Path, *extra: str) -> tuple[int, dict, str]:
    log = tmp_path / "termination-log"
    out = subprocess.run(
        [sys.executable, "-m", "distml_runtime.preflight", "--nproc", "3", "--bytes", "256K",
         "--iters", "3", "--warmup", "1", "--termination-log", str(log), *extra],
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    return out.returncode, json.loads(log.read_text()), out.stdout + out.stderr


def test_preflight_measures_busbw_and_every_link_of_the_ring(tmp_path: Path) -> None:
    code, verdict, output = _preflight(tmp_path)
    assert code == 0, output
    assert verdict["passed"] is True and verdict["worldSize"] == 3
    assert verdict["busBwGbps"] > 0 and verdict["algBwGbps"] > 0
    assert len(verdict["links"]) == 3  # 0<->1, 1<->2, 2<->0
    assert all(link["gbps"] > 0 for link in verdict["links"])
    assert verdict["links"] == sorted(verdict["links"], key=lambda link: link["gbps"])
    assert "all-reduce busbw" in output
    assert len(json.dumps(verdict)) < 4096  # fits a termination message


def test_preflight_below_the_minimum_exits_3_and_names_the_slowest_link(tmp_path: Path) -> None:
    code, verdict, output = _preflight(tmp_path, "--min-busbw-gbps", "1000000")
    assert code == EXIT_SLOW == EXIT_PREFLIGHT_SLOW, output
    assert verdict["passed"] is False and verdict["minBusBwGbps"] == 1e6
    assert verdict["slowestLink"] in verdict["message"]
    assert "below minBusBwGbps 1e+06" in verdict["message"]
