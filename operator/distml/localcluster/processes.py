"""Starting, finding and stopping the local cluster's processes by pid file.

A pid file records the pid and the binary; a pid is only signalled while /proc says it still runs
that binary, so a recycled pid is never killed by mistake.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def start(
    name: str, argv: list[str], pid_dir: Path, log_dir: Path, env: dict[str, str] | None = None
) -> int:
    pid_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    (pid_dir / f"{name}.pid").write_text(f"{proc.pid} {os.path.realpath(argv[0])}\n")
    return proc.pid


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def _state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[-1].split()[0]


def command_line(pid: int) -> list[str]:
    """The argv `pid` runs, [] when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").split("\0")[:-1]


def matching(test: Callable[[list[str]], bool]) -> list[int]:
    """The pids of this machine's processes whose argv passes `test`."""
    return [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and (argv := command_line(int(entry.name))) and test(argv)
    ]


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    return _state(pid) not in ("Z", "X", "")


def running_pid(pid_file: Path) -> int | None:
    """The pid recorded in `pid_file` if that process still runs the recorded binary."""
    try:
        pid_text, binary = pid_file.read_text().split(maxsplit=1)
    except (OSError, ValueError):
        return None
    pid = int(pid_text)
    if _exe(pid) != binary.strip() or not alive(pid):
        return None
    return pid


def running(pid_dir: Path) -> dict[str, int]:
    """Every recorded process that is still alive, by name."""
    alive = {}
    for pid_file in sorted(pid_dir.glob("*.pid")):
        pid = running_pid(pid_file)
        if pid is not None:
            alive[pid_file.stem] = pid
    return alive


def stop_all(
    pid_dir: Path, order: list[str], grace: float = 10.0, only: str | None = None
) -> list[str]:
    """SIGTERM every recorded process (those named in `order` first, in that order; or just the
    one named `only`), SIGKILL what is left after `grace` seconds, and remove the pid files.
    Returns the names it stopped."""
    names = [p.stem for p in pid_dir.glob("*.pid") if only is None or p.stem == only]
    names.sort(key=lambda n: order.index(n) if n in order else -1)
    stopped = []
    for name in names:
        pid_file = pid_dir / f"{name}.pid"
        pid = running_pid(pid_file)
        if pid is not None:
            os.killpg(pid, signal.SIGTERM)  # each was started as its own session leader
            deadline = time.monotonic() + grace
            while running_pid(pid_file) is not None and time.monotonic() < deadline:
                time.sleep(0.05)
            if running_pid(pid_file) is not None:
                os.killpg(pid, signal.SIGKILL)
            stopped.append(name)
        pid_file.unlink(missing_ok=True)
    return stopped
