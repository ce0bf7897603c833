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


def nodes_usable(core, selector: dict, count: int) -> bool:
    """Whether `count` nodes match `selector`, all Ready and free of the node lifecycle
    controller's taints (not-ready, unreachable), so that a gang may be admitted there."""
    sel = ",".join(f"{k}={v}" for k, v in selector.items())
    ns = core.list_node(label_selector=sel).items
    return len(ns) == count and all(
        any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])
        and not any(t.key.startswith("node.kubernetes.io/") for t in n.spec.taints or [])
        for n in ns
    )


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


def settled(core, namespace: str, timeout: float = 120.0) -> None:
    """After an API server restart: waits until the scheduler and the simulated nodes act again
    (their own clients back off while it is away), so that the next test does not pay for it."""
    import uuid

    name = f"settle-{uuid.uuid4().hex[:6]}"
    core.create_namespaced_pod(namespace, gpu_pod(name, 0, {"type": "kwok"}))
    wait_for(
        "a pod scheduled and Running again",
        lambda: core.read_namespaced_pod(name, namespace).status.phase == "Running",
        timeout=timeout,
    )
    core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
