"""Reading pods and nodes as the API returns them (camelCase dicts). Pure."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from distml import labels

Obj = dict[str, Any]


def phase(pod: Obj) -> str:
    return str((pod.get("status") or {}).get("phase") or "Pending")


def is_terminal(pod: Obj) -> bool:
    return phase(pod) in ("Succeeded", "Failed")


def is_deleting(pod: Obj) -> bool:
    return bool(pod["metadata"].get("deletionTimestamp"))


def is_ready(pod: Obj) -> bool:
    conds = (pod.get("status") or {}).get("conditions") or []
    return phase(pod) == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in conds
    )


def node_name(pod: Obj) -> str:
    return str((pod.get("spec") or {}).get("nodeName") or "")


def rank(pod: Obj) -> int:
    return int(pod["metadata"]["labels"][labels.RANK])


def generation(pod: Obj) -> int:
    return int(pod["metadata"]["labels"].get(labels.GENERATION, "0"))


def _container_statuses(pod: Obj) -> list[Obj]:
    """Init containers' statuses, then the containers'."""
    status = pod.get("status") or {}
    return [
        *(status.get("initContainerStatuses") or []),
        *(status.get("containerStatuses") or []),
    ]


def exit_code(pod: Obj) -> int | None:
    """The first non-zero exit code of a terminated container, init containers first (0 if all
    exited 0)."""
    codes = []
    for cs in _container_statuses(pod):
        term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get(
            "terminated"
        )
        if term is not None:
            codes.append(int(term.get("exitCode", 0)))
    nonzero = [c for c in codes if c]
    if nonzero:
        return nonzero[0]
    return 0 if codes else None


def finished_at(pod: Obj) -> str | None:
    """When the pod's last container to terminate did (RFC 3339), None while none has."""
    times = [
        term.get("finishedAt")
        for cs in _container_statuses(pod)
        if (term := (cs.get("state") or {}).get("terminated")) and term.get("finishedAt")
    ]
    return max(times) if times else None


def init_result(pod: Obj, container: str) -> tuple[int, Obj | None] | None:
    """(exit code, its termination message as JSON if it is JSON) of a finished init container,
    None while it has not finished."""
    for cs in (pod.get("status") or {}).get("initContainerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated")
        if cs.get("name") != container or not term:
            continue
        try:
            message = json.loads(term.get("message") or "")
        except ValueError:
            message = None
        return int(term.get("exitCode", 0)), message if isinstance(message, dict) else None
    return None


def failure_reason(pod: Obj) -> str:
    status = pod.get("status") or {}
    for cs in _container_statuses(pod):
        term = (cs.get("state") or {}).get("terminated")
        if term and term.get("exitCode"):
            return str(term.get("reason") or "Error")
    return str(status.get("reason") or "Failed")


def container_gpus(container: Obj) -> int:
    res = container.get("resources") or {}
    value = (res.get("limits") or {}).get(labels.GPU) or (res.get("requests") or {}).get(labels.GPU)
    return int(value or 0)


def gpu_request(pod: Obj) -> int:
    return sum(container_gpus(c) for c in (pod.get("spec") or {}).get("containers") or [])


def node_ready(node: Obj) -> bool:
    conds = (node.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)


def not_ready_since(node: Obj) -> str | None:
    """When the node's Ready condition last left True (ISO time), or None while it is Ready; a
    node that never reported its condition counts as NotReady since it was created."""
    conds = (node.get("status") or {}).get("conditions") or []
    ready = next((c for c in conds if c.get("type") == "Ready"), None)
    created = node["metadata"].get("creationTimestamp")
    if ready is None:
        return str(created) if created else None
    if ready.get("status") == "True":
        return None
    since = ready.get("lastTransitionTime") or created
    return str(since) if since else None


def node_gpus(node: Obj) -> int:
    return int(((node.get("status") or {}).get("allocatable") or {}).get(labels.GPU) or 0)


def iso(t: dt.datetime) -> str:
    """A time as the API writes it (RFC 3339, seconds, UTC)."""
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(s: str | None) -> dt.datetime | None:
    """A time the API wrote (e.g. a condition's lastTransitionTime); None for none."""
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00")) if s else None
