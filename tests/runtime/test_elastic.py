"""Elastic training under the launcher, on this machine: three torchrun agents (the pods of an
elastic job, min 2, max 3) train DDP together with no restarts allowed (PET_MAX_RESTARTS=0).
One agent killed with its worker: the other two meet again without it in one rendezvous round
and resume from the newest checkpoint at world size 2, with no restart spent. A new agent: the
group grows back to 3. A peer that goes silent (stopped, its sockets open, as a host cut off the
network) is found within the peer timeout, not gloo's 30 minutes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from distml_runtime.peers import EXIT_PEER_LOST

from .test_ddp import _failure


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Group:
    """Launchers of one elastic job, each in its own session, logging to files."""

    def __init__(self, tmp: Path, steps: int, peer_timeout: float = 30) -> None:
        self.tmp, self.port, self.steps = tmp, _free_port(), steps
        self.ckpt = tmp / "ckpt"
        self.peer_timeout = peer_timeout
        self.procs: dict[int, subprocess.Popen] = {}
        self.alive: set[int] = set()  # launchers that must not exit with an error
        self.metrics: dict[int, int] = {}  # launcher -> its /metrics port

    def start(self, i: int) -> None:
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "PET_NNODES": "2:3",
            "PET_NPROC_PER_NODE": "1",
            "PET_RDZV_BACKEND": "c10d",
            "PET_RDZV_ENDPOINT": f"127.0.0.1:{self.port}",
            "PET_RDZV_ID": "elastic-test",
            "PET_MAX_RESTARTS": "0",
            # Launcher 0 hosts the rendezvous store, as the operator tells the pod of slot 0.
            "PET_RDZV_CONF": "last_call_timeout=2,keep_alive_interval=1,keep_alive_max_attempt=3,"
            f"is_host={'true' if i == 0 else 'false'}",
            "GLOO_SOCKET_IFNAME": "lo",
            "OMP_NUM_THREADS": "1",
            "DISTML_PEER_TIMEOUT_SECONDS": str(self.peer_timeout),
            "DISTML_TERMINATION_LOG": str(self.tmp / f"termination-{i}"),
            "DISTML_METRICS_PORT": str(self.metrics.setdefault(i, _free_port())),
        }
        argv = [
            sys.executable, "-m", "distml_runtime.launch", "--",
            "python", "-m", "distml_runtime.train.ddp", "--no-metrics",
            "--steps", str(self.steps), "--step-delay", "0.05", "--log-every", "5",
            "--checkpoint-dir", str(self.ckpt), "--checkpoint-every", "10",
        ]  # fmt: skip
        with open(self.tmp / f"agent-{i}.log", "wb") as log:
            self.procs[i] = subprocess.Popen(
                argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def gauge(self, i: int, name: str) -> float | None:
        """A series of launcher i's /metrics (None: not there, or nothing listening)."""
        try:
            url = f"http://127.0.0.1:{self.metrics[i]}/metrics"
            text = urllib.request.urlopen(url, timeout=5).read().decode()
        except OSError:
            return None
        found = [li.split()[-1] for li in text.splitlines() if li.startswith(name + "{")]
        return float(found[0]) if found else None

    def log(self, i: int) -> str:
        return (self.tmp / f"agent-{i}.log").read_text(errors="replace")

    def events(self, i: int) -> list[dict]:
        return [json.loads(li) for li in self.log(i).splitlines() if li.startswith('{"event"')]

    def worker(self, i: int) -> int:
        """The training process under launcher i (it runs in a session of its own)."""
        parent = self.procs[i].pid
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                cmd = (entry / "cmdline").read_bytes()
                if ppid == parent and b"distml_runtime.train.ddp" in cmd:
                    return int(entry.name)
        raise LookupError(f"launcher {i} has no worker")

    def wait(self, what: str, cond, timeout: float = 120):  # type: ignore[no-untyped-def]
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            got = cond()
            if got:
                return got
            for i, p in self.procs.items():
                if p.poll() not in (None, 0) and i in self.alive:
                    pytest.fail(f"launcher {i} exited {p.returncode}:\n{_failure(self.log(i))}")
            time.sleep(0.2)
        logs = "\n".join(f"--- agent {i}\n{self.log(i)[-3000:]}" for i in self.procs)
        pytest.fail(f"timed out waiting for {what}\n{logs}")

    def stop(self) -> None:
        """Every launcher, and every worker (each in a session of its own)."""
        for p in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        for entry in Path("/proc").iterdir():
            with contextlib.suppress(OSError, ValueError):
                if str(self.ckpt).encode() in (entry / "cmdline").read_bytes():
                    os.kill(int(entry.name), signal.SIGKILL)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _start_three(g: Group) -> None:
    g.alive = {0, 1, 2}
    g.start(0)  # hosts the rendezvous store (the job's slot 0, as in a pod named job-0)
    g.wait("the rendezvous store", lambda: _listening(g.port), timeout=60)
    g.start(1)
    g.start(2)
    g.wait("three ranks training", lambda: any(
        e["event"] == "step" and e["step"] >= 20 for e in g.events(0)
    ), timeout=180)  # fmt: skip


def _all_events(g: Group) -> list[dict]:
    return sorted((e for i in g.procs for e in g.events(i)), key=lambda e: e["time"])


def _resumes(g: Group, world: int, every: bool = False) -> list[dict]:
    """Rank 0's resumes at `world` ranks: launcher 0's, or (every) any launcher's."""
    seen = _all_events(g) if every else g.events(0)
    return [e for e in seen if e["event"] == "resume" and e["world_size"] == world]


def test_group_shrinks_without_a_killed_agent_and_grows_back_with_no_restart(tmp_path, capsys):
    g = Group(tmp_path, steps=700)
    try:
        _start_three(g)
        # Each launcher says what group it is in: the operator reads this.
        assert [g.gauge(i, "distml_launch_group_size") for i in range(3)] == [3.0] * 3
        worker = g.worker(2)
        killed_at = time.time()
        os.kill(g.procs[2].pid, signal.SIGKILL)  # the pod of slot 2, all of it
        os.kill(worker, signal.SIGKILL)
        g.alive.discard(2)
        (shrunk,) = g.wait("the group to resume at 2", lambda: _resumes(g, 2), timeout=120)
        assert shrunk["from_world_size"] == 3 and shrunk["step"] >= 10  # a checkpoint, not 0
        back = g.wait("a step at 2", lambda: [
            e for e in g.events(0) if e["event"] == "step" and e["time"] > shrunk["time"]
        ])  # fmt: skip
        # No restart was spent (there were none to spend): both survivors say why they met.
        for i in (0, 1):
            assert g.procs[i].poll() is None
            assert "membership change 1; not a restart" in g.log(i)
            assert "lost peer 127.0.0.1" in (tmp_path / f"termination-{i}").read_text()
            assert g.gauge(i, "distml_launch_group_size") == 2.0
            assert g.gauge(i, "distml_launch_membership_changes") == 1.0
            assert g.gauge(i, "distml_launch_worker_restarts") == 0.0

        g.start(3)
        g.alive.add(3)
        grown_at = time.time()
        (grown,) = g.wait("the group to grow back to 3", lambda: _resumes(g, 3), timeout=120)
        assert grown["from_world_size"] == 2 and grown["step"] >= shrunk["step"]
        done = g.wait("the end", lambda: [e for e in g.events(0) if e["event"] == "done"],
                      timeout=300)  # fmt: skip
        assert done[0]["world_size"] == 3 and done[0]["step"] == 700
        for i in (0, 1, 3):
            assert g.procs[i].wait(timeout=60) == 0, _failure(g.log(i))
        with capsys.disabled():
            print(
                f"\n[elastic] agent killed -> training at 2: {back[0]['time'] - killed_at:.1f}s; "
                f"agent added -> training at 3: {grown['time'] - grown_at:.1f}s (resume)"
            )
    finally:
        g.stop()


def test_the_rendezvous_host_lost_and_replaced_is_met_again_with_no_restart(tmp_path, capsys):
    g = Group(tmp_path, steps=700)
    try:
        _start_three(g)
        worker = g.worker(0)
        lost_at = time.time()
        os.kill(g.procs[0].pid, signal.SIGKILL)  # the pod of slot 0, the store's host
        os.kill(worker, signal.SIGKILL)
        g.alive.discard(0)
        for i in (1, 2):
            g.wait(f"launcher {i} to look for the store's new host",
                   lambda i=i: "joining its host's replacement" in g.log(i))  # fmt: skip
        g.start(0)  # its replacement, at the same address
        g.alive.add(0)
        # Rank 0 is now whichever launcher the new round ranked first: read them all.
        (back,) = g.wait("the group to resume at 3", lambda: _resumes(g, 3, every=True),
                         timeout=120)  # fmt: skip
        assert back["step"] >= 10  # from a checkpoint, not from scratch
        step = g.wait("a step at 3", lambda: [
            e for e in _all_events(g) if e["event"] == "step" and e["time"] > back["time"]
        ])  # fmt: skip
        for i in (1, 2):  # the survivors never ended, and spent no restart (there were none)
            assert g.procs[i].poll() is None
        done = g.wait("the end", lambda: [e for e in _all_events(g) if e["event"] == "done"],
                      timeout=300)  # fmt: skip
        assert done[0]["world_size"] == 3 and done[0]["step"] == 700
        for i in (0, 1, 2):
            assert g.procs[i].wait(timeout=60) == 0, _failure(g.log(i))
        with capsys.disabled():
            print(f"\n[elastic] rendezvous host lost, replaced: training at 3 after "
                  f"{step[0]['time'] - lost_at:.1f}s")  # fmt: skip
    finally:
        g.stop()


def test_a_silent_peer_is_lost_within_the_peer_timeout(tmp_path):
    g = Group(tmp_path, steps=100000, peer_timeout=3)
    try:
        _start_three(g)
        worker = g.worker(2)
        stopped = time.time()
        os.kill(g.procs[2].pid, signal.SIGSTOP)  # alive, sockets open, silent: a cut-off host
        os.kill(worker, signal.SIGSTOP)
        g.alive.discard(2)
        (shrunk,) = g.wait("the group to resume at 2", lambda: _resumes(g, 2), timeout=120)
        # Found by the 3 s timeout plus the rendezvous' 3 s of missed heartbeats, with the
        # time to start the ranks again: far from gloo's 30 minutes.
        assert shrunk["time"] - stopped < 60
        said = (tmp_path / "termination-0").read_text() + (tmp_path / "termination-1").read_text()
        assert "Timed out waiting 3000ms" in said
        assert g.procs[0].poll() is None and g.procs[1].poll() is None
    finally:
        g.stop()


def test_an_application_error_is_not_a_membership_change(tmp_path):
    """A worker that fails on its own (exit 1) ends its launcher with 1, and its peers' lost
    peer does not hide it: only exits of EXIT_PEER_LOST are free."""
    program = tmp_path / "fails.py"
    program.write_text("import sys\nsys.exit(1)\n")
    env = {**os.environ, "PET_MAX_RESTARTS": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "distml_runtime.launch", "--", sys.executable, str(program)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1 and "membership change" not in done.stderr
    program.write_text(f"import sys\nsys.exit({EXIT_PEER_LOST})\n")
    launch = [sys.executable, "-m", "distml_runtime.launch", "--", sys.executable, str(program)]
    # A group of fixed size cannot go on without its peer: it ends with the code at once.
    done = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == EXIT_PEER_LOST and "membership change" not in done.stderr
    # An elastic one meets again, here twice (its budget), then ends with the code.
    env.update(PET_NNODES="1:2", PET_RDZV_CONF="last_call_timeout=1",
               DISTML_MAX_MEMBERSHIP_CHANGES="2")  # fmt: skip
    done = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=120)
    assert done.stderr.count("membership change") == 2
    assert done.returncode == EXIT_PEER_LOST
