"""Small builders and waits shared by integration tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from distml.localcluster.nodes import GPU_RESOURCE, GPU_TAINT

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T], timeout: float = 60.0, every: float = 0.25) -> T:
    """Polls `probe` until it returns something truthy; fails the test naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def gpu_pod(name: str, gpus: int, node_selector: dict | None = None, **meta: dict) -> dict:
    """A plain pod asking for `gpus` GPUs and tolerating the GPU taint."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, **meta},
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "image": "busybox:1.36",
                    "command": ["sleep", "infinity"],
                    "resources": {"limits": {GPU_RESOURCE: str(gpus)}} if gpus else {},
                }
            ],
            "tolerations": [{"key": GPU_TAINT["key"], "operator": "Exists"}],
            "nodeSelector": node_selector or {},
            "terminationGracePeriodSeconds": 30,
        },
    }
