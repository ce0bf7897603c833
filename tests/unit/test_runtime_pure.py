"""Pure pieces of the runtime: bandwidth arithmetic, the launcher's exit codes and argv, and the
global sample order that makes resume independent of the world size."""

from __future__ import annotations

import datetime as dt

import pytest
import torch

from distml_runtime import peers
from distml_runtime.bench.report import (
    bus_bandwidth_gbps,
    format_table,
    make_result,
    message_sizes,
)
from distml_runtime.launch import elastic_group, exit_code_for, membership_change, torchrun_argv
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


@pytest.mark.parametrize(
    ("error", "lost", "peer"),
    [
        (
            RuntimeError(
                "[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:547] Connection closed "
                "by peer [10.242.3.2]:54475"
            ),
            True,
            "10.242.3.2",
        ),
        (
            RuntimeError(
                "Got the following error when running the callback: RuntimeError: [/pytorch/"
                "third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting "
                "3000ms for recv operation to complete"
            ),
            True,
            "",
        ),
        (
            RuntimeError(
                "Gloo connectFullMesh failed with [...pair.cc:152] timed out connecting: "
                "SO_ERROR: Connection refused, remote=[127.0.0.1]:3458"
            ),
            True,
            "127.0.0.1",
        ),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied (32x64 and 65x128)"), False, ""),
        (ValueError("bad learning rate"), False, ""),
    ],
)
def test_a_lost_peer_is_told_from_a_bug(error, lost, peer):
    assert peers.is_peer_loss(error) is lost
    assert peers.peer_address(error) == peer
    if lost:
        assert peers.describe(error).startswith(f"lost peer {peer}:" if peer else "lost a peer:")


def test_a_lost_peer_is_found_behind_the_error_that_wraps_it():
    try:
        try:
            raise RuntimeError("Connection reset by peer [10.0.0.9]:1")
        except RuntimeError as inner:
            raise ValueError("the step failed") from inner
    except ValueError as outer:
        assert peers.is_peer_loss(outer)


@pytest.mark.parametrize(
    ("codes", "change"),
    [([76], True), ([76, 76], True), ([76, 1], False), ([-9], False), ([], False)],
)
def test_only_workers_that_all_lost_a_peer_are_a_membership_change(codes, change):
    assert membership_change(codes) is change


def test_peer_timeout_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(peers.TIMEOUT_ENV, raising=False)
    assert peers.timeout() is None
    monkeypatch.setenv(peers.TIMEOUT_ENV, "5")
    assert peers.timeout() == dt.timedelta(seconds=5)
    monkeypatch.setenv(peers.TIMEOUT_ENV, "0")
    with pytest.raises(ValueError, match="must be > 0"):
        peers.timeout()


@pytest.mark.parametrize(
    ("nnodes", "elastic"), [("2:4", True), ("1:2", True), ("4", False), ("4:4", False)]
)
def test_only_a_group_with_room_to_change_size_is_elastic(nnodes, elastic):
    assert elastic_group(nnodes) is elastic
