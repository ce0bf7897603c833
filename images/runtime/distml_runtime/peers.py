"""Finding a dead peer fast, and saying so: the process group's failure-detection timeout, and
the exit code a rank uses when it lost a peer (not its own fault).

A collective with a peer that died fails in the survivors within about a second when the peer's
host closes its sockets (a killed process), and after the process group's timeout when it does
not (a host cut off the network). torch's defaults wait 30 minutes (gloo) or 10 (NCCL); the
operator sets DISTML_PEER_TIMEOUT_SECONDS from spec.peerTimeoutSeconds instead.

A rank that lost a peer exits EXIT_PEER_LOST. The launcher takes that as a change of membership,
not a failure: the group meets again (one rendezvous round) without spending one of torchrun's
restarts. Its termination message names the peer's address, which the operator maps to a pod
and a node.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import sys

EXIT_PEER_LOST = 76
TIMEOUT_ENV = "DISTML_PEER_TIMEOUT_SECONDS"
TERMINATION_LOG_ENV = "DISTML_TERMINATION_LOG"

# What gloo, NCCL and the c10d store say when the other end is gone or silent. An error in the
# program's own code (a shape mismatch, a bad argument) says none of these, and stays a failure.
_LOST = re.compile(
    r"Connection closed by peer|Connection reset by peer|Broken pipe|Connection refused|"
    r"connectFullMesh failed|Timed out waiting|timed out connecting|Socket Timeout|"
    r"NCCL communicator was aborted|remote process exited|Watchdog caught collective operation "
    r"timeout|failed to recv, got 0 bytes|Connection timed out",
)
_ADDRESS = re.compile(r"(?:remote=)?\[([0-9a-fA-F.:]+)\]:(\d+)")


def timeout() -> dt.timedelta | None:
    """The process group's timeout from the environment, or None for torch's default."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return None
    seconds = float(raw)
    if seconds <= 0:
        raise ValueError(f"{TIMEOUT_ENV} must be > 0, got {raw!r}")
    return dt.timedelta(seconds=seconds)


def is_peer_loss(err: BaseException) -> bool:
    """Whether `err` (or what it wraps) is a peer that vanished or went silent."""
    seen: set[int] = set()
    cur: BaseException | None = err
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        names = {c.__name__ for c in type(cur).__mro__}
        if "DistNetworkError" in names or _LOST.search(str(cur)):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def peer_address(err: BaseException) -> str:
    """The peer's address as the error names it (`10.242.3.2`), or "" when it does not."""
    match = _ADDRESS.search(str(err))
    return match.group(1) if match else ""


def describe(err: BaseException) -> str:
    """One line for the termination message: which peer, and what the transport said."""
    first = next(
        (line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__
    )
    first = first[-300:]
    peer = peer_address(err)
    return f"lost peer {peer}: {first}" if peer else f"lost a peer: {first}"


def report(err: BaseException, rank: int) -> int:
    """Writes why to the termination log (when the pod has one) and to stderr; returns the exit
    code for the rank."""
    line = f"rank {rank} {describe(err)}"
    path = os.environ.get(TERMINATION_LOG_ENV, "")
    if path:
        try:
            with open(path, "a") as f:
                f.write(line + "\n")
        except OSError:
            pass
    print(
        f"[distml] {line}; exiting {EXIT_PEER_LOST} (a peer was lost)", flush=True, file=sys.stderr
    )
    return EXIT_PEER_LOST
