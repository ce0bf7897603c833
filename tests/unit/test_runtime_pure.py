"""Pure pieces of the runtime: bandwidth arithmetic, the launcher's exit codes and argv, and the
global sample order that makes resume independent of the world size."""

from __future__ import annotations

import pytest
import torch

from distml_runtime.bench.report import (
    bus_bandwidth_gbps,
    format_table,
    make_result,
    message_sizes,
)
from distml_runtime.launch import exit_code_for, torchrun_argv
from distml_runtime.train.data import batch_indices


@pytest.mark.parametrize(("world", "factor"), [(1, 0.0), (2, 1.0), (4, 1.5), (8, 1.75)])
def test_busbw_is_algbw_times_2_n_minus_1_over_n(world, factor):
    assert bus_bandwidth_gbps(10.0, world) == pytest.approx(10.0 * factor)


def test_result_uses_decimal_gigabytes():
    r = make_result(
        "ring", count=250_000_000, dtype="float32", elem_size=4, world_size=4, seconds=0.5, wrong=0
    )
    assert r.bytes == 1_000_000_000
    assert r.algbw_gbps == pytest.approx(2.0)
    assert r.busbw_gbps == pytest.approx(3.0)
    assert r.time_us == pytest.approx(500_000)


def test_sizes_and_table():
    assert message_sizes(1024, 8192, 2) == [1024, 2048, 4096, 8192]
    with pytest.raises(ValueError, match="stepfactor"):
        message_sizes(1, 2, 1)
    table = format_table([make_result("tree", 2, "float32", 4, 2, 1e-5, 1)])
    assert "#wrong" in table and "FAILED" in table


@pytest.mark.parametrize(
    ("failures", "code"),
    [
        ({0: 3}, 3),
        ({0: 1, 1: -9}, 137),  # any signal death means a restart can help
        ({1: -15, 0: 2}, 143),
        ({0: 0, 1: 300}, 255),
        ({}, 1),
    ],
)
def test_launcher_exit_code(failures, code):
    assert exit_code_for(failures) == code


def test_torchrun_argv_standalone_without_rendezvous_endpoint():
    assert torchrun_argv(["python", "-m", "x"], {}) == [
        "--standalone",
        "--no-python",
        "python",
        "-m",
        "x",
    ]
    assert torchrun_argv(["train.py", "--a"], {"PET_RDZV_ENDPOINT": "w-0:29400"}) == [
        "train.py",
        "--a",
    ]


def test_global_sample_stream_does_not_depend_on_world_size():
    def stream(world: int, batch: int, steps: int) -> list[int]:
        return [
            i
            for s in range(steps)
            for r in range(world)
            for i in batch_indices(s, r, world, batch, n=50, seed=7).tolist()
        ]

    assert stream(2, 8, 6) == stream(4, 4, 6) == stream(1, 16, 6)
    first_epoch = stream(1, 50, 1)
    assert sorted(first_epoch) == list(range(50))
    assert torch.equal(batch_indices(0, 0, 1, 3, 50, 7), batch_indices(0, 0, 1, 3, 50, 7))


class _Payload:
    """Unpickling this would run code: what a poisoned checkpoint carries."""

    def __reduce__(self):
        return (print, ("pwned",))


def test_checkpoints_load_weights_only_and_refuse_code(tmp_path, capsys):
    from distml_runtime.train import checkpoint

    good = checkpoint.save(tmp_path, 3, {"model": {"w": torch.ones(2)}, "step": 3})
    state = checkpoint.load(good)
    assert state["step"] == 3 and torch.equal(state["model"]["w"], torch.ones(2))

    bad = tmp_path / "step-000000009.pt"
    torch.save({"step": 9, "model": _Payload()}, bad)
    with pytest.raises(Exception, match=r"[Ww]eights only load failed"):
        checkpoint.load(bad)
    assert "pwned" not in capsys.readouterr().out
