"""Data-parallel training really learns, checkpoints, and resumes where it stopped after a hard
kill, also with a different number of ranks."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distml_runtime.peers import EXIT_PEER_LOST

TRAIN = [sys.executable, "-m", "distml_runtime.train.ddp", "--no-metrics"]


def _run(args: list[str]) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, _failure(done.stderr)
    return done.stdout


def _failure(stderr: str) -> str:
    """All of a failed run's stderr that says why: from the first faulthandler report or
    traceback on (a rank's stacks come before the parent's summary), else its end."""
    marks = [i for m in ("Fatal Python error", "Traceback", "terminate called")
             if (i := stderr.find(m)) >= 0]  # fmt: skip
    return stderr[min(marks) :][:20000] if marks else stderr[-3000:]


def _ranks(parent: int) -> list[int]:
    """The spawned rank processes of a `--nproc` run."""
    kids = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return [int(k) for k in kids if b"spawn_main" in Path(f"/proc/{k}/cmdline").read_bytes()]


def _events(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_loss_goes_down_with_two_ranks(tmp_path):
    out = _run([*TRAIN, "--nproc", "2", "--steps", "80", "--log-every", "10"])
    losses = [e["loss"] for e in _events(out) if e["event"] == "step"]
    assert len(losses) == 8
    assert losses[-1] < 0.5 * losses[0], losses


def test_killed_run_resumes_from_its_checkpoint_with_another_world_size(tmp_path):
    ckpt = tmp_path / "ckpt"
    first = subprocess.Popen(
        [
            *TRAIN,
            "--nproc",
            "2",
            "--steps",
            "400",
            "--checkpoint-dir",
            str(ckpt),
            "--checkpoint-every",
            "20",
            "--step-delay",
            "0.02",
        ],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    saved = []
    deadline = time.monotonic() + 240
    assert first.stdout is not None
    for line in first.stdout:
        if line.startswith("{") and json.loads(line)["event"] == "checkpoint":
            saved.append(json.loads(line)["step"])
            if len(saved) == 2:
                break
        assert time.monotonic() < deadline, "no checkpoints written"
    os.killpg(first.pid, signal.SIGKILL)  # no chance to checkpoint again
    first.wait()
    assert saved == [20, 40]

    out = _run(
        [
            *TRAIN,
            "--nproc",
            "3",
            "--steps",
            "120",
            "--checkpoint-dir",
            str(ckpt),
            "--checkpoint-every",
            "20",
        ]
    )
    events = _events(out)
    resumed = next(e for e in events if e["event"] == "resume")
    assert (resumed["step"], resumed["from_world_size"], resumed["world_size"]) == (40, 2, 3)
    steps = [e["step"] for e in events if e["event"] == "step"]
    assert steps[0] == 50 and steps[-1] == 120
    assert {k: v for k, v in events[-1].items() if k != "time"} == {
        "event": "done",
        "step": 120,
        "world_size": 3,
    }


def test_ranks_signalled_at_different_steps_stop_together_at_one_step(tmp_path):
    """SIGTERM reaches each rank when it reaches it: one rank alone must not enter a
    collective its peers skip. Both stop at the same step and checkpoint once. The rank told to
    stop exits 143; one whose peer was told first may stop before its own SIGTERM arrives, and
    exits 76 (a peer left: under torchrun, its group meets again without the leaver)."""
    proc = subprocess.Popen(
        [*TRAIN, "--nproc", "2", "--steps", "100000", "--step-delay", "0.03",
         "--log-every", "100000", "--checkpoint-dir", str(tmp_path), "--checkpoint-every", "10"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        seen: list[dict] = []  # what it printed before the signals, kept for the end
        for line in proc.stdout:  # training has begun on both ranks
            if line.startswith("{"):
                seen.append(json.loads(line))
                if seen[-1]["event"] == "checkpoint":
                    break
        first, second = _ranks(proc.pid)
        os.kill(first, signal.SIGTERM)
        time.sleep(0.1)  # some steps later, as a second SIGTERM reaches a second node
        with contextlib.suppress(ProcessLookupError):  # unless both have stopped already
            os.kill(second, signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode in (143, EXIT_PEER_LOST), _failure(err)
    # Both may stop at the very step of the checkpoint read above: it is not written twice.
    events = [*seen, *_events(out)]
    assert events[-2]["event"] == "checkpoint"
    assert events[-1]["event"] in ("preempted", "peer-left")  # as rank 0 was told, or its peer
    assert events[-2]["step"] == events[-1]["step"]


LAUNCH = [sys.executable, "-m", "distml_runtime.launch", "--"]


@pytest.mark.parametrize(
    ("program", "code"),
    [
        ("import sys; sys.exit(0)", 0),
        ("import sys; sys.exit(3)", 3),  # an application error: a restart will not help
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", 137),  # killed: retryable
    ],
)
def test_launcher_exit_code_says_whether_a_restart_can_help(program, code):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(
        [*LAUNCH, "python", "-c", program], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == code, done.stderr[-2000:]


def test_a_worker_that_aborts_logs_where_it_was():
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("PYTHONFAULTHANDLER", None)
    program = "import os\ndef tidy_up():\n    os.abort()\ntidy_up()\n"
    done = subprocess.run(
        [*LAUNCH, "python", "-c", program], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 134  # 128 + SIGABRT: retryable
    assert "Fatal Python error: Aborted" in done.stderr
    assert "line 3 in tidy_up" in done.stderr


def test_launcher_forwards_sigterm_so_training_checkpoints(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.Popen(
        [
            *LAUNCH,
            "python",
            "-m",
            "distml_runtime.train.ddp",
            "--no-metrics",
            "--steps",
            "5000",
            "--step-delay",
            "0.02",
            "--checkpoint-dir",
            str(tmp_path),
            "--checkpoint-every",
            "1000",
            "--log-every",
            "5",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("{") and json.loads(line)["event"] == "step":
            break
    proc.send_signal(signal.SIGTERM)
    rest = proc.stdout.read()
    assert proc.wait(timeout=60) == 143
    preempted = next(e for e in _events(rest) if e["event"] == "preempted")
    assert (tmp_path / f"step-{preempted['step']:09d}.pt").exists()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int, want: str, proc: subprocess.Popen, timeout: float = 120) -> str:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the process ended before its metrics showed"
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
            if want in text.decode():
                return text.decode()
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{want} never appeared on :{port}/metrics")


def test_launcher_serves_the_workers_training_metrics(tmp_path):
    port = _free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distml_runtime.launch",
            "--metrics-port",
            str(port),
            "--",
            "python",
            "-m",
            "distml_runtime.train.ddp",
            "--steps",
            "100000",
            "--step-delay",
            "0.01",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        text = _scrape(port, "distml_train_loss{", proc)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    for name in (
        "distml_train_samples_per_second",
        "distml_train_step_duration_seconds",
        "distml_train_allreduce_duration_seconds",
        "distml_train_steps_total",
    ):
        lines = [line for line in text.splitlines() if line.startswith(name + "{")]
        assert any('trainingjob="local"' in line and 'rank="0"' in line for line in lines), name


def test_allreduce_benchmark_serves_its_results_as_metrics():
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distml_runtime.bench.allreduce",
            "--nproc",
            "2",
            "-b",
            "1K",
            "-e",
            "4K",
            "-f",
            "4",
            "--algo",
            "ring",
            "-n",
            "1",
            "-w",
            "0",
            "--no-progress",
            "--metrics-port",
            str(port),
            "--serve-seconds",
            "30",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        text = _scrape(port, "distml_allreduce_busbw_gbps{", proc)
    finally:
        proc.kill()
        proc.wait()
    assert 'distml_allreduce_wrong_elements{algo="ring",bytes="4096"' in text
