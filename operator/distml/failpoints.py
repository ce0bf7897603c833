"""Failpoints for fault-injection tests, in the manner of etcd's gofail: inert unless the
environment variable DISTML_FAILPOINTS names one. `after-status-write:Restarting` makes the
operator die abruptly (as SIGKILL would leave it) right after it has recorded a decision whose
phase is Restarting, and before it acts on it: the moment a crash is most likely to lose work."""

from __future__ import annotations

import os

_POINTS = [p.partition(":") for p in os.environ.get("DISTML_FAILPOINTS", "").split(",") if p]


def hit(name: str, detail: str = "") -> None:
    for point, _, when in _POINTS:
        if point == name and (not when or when == detail):
            os._exit(137)
