"""Kubernetes-style conditions: one per phase-like state, True or False, with the time it last
changed. Pure."""

from __future__ import annotations

from typing import Any

PHASE_CONDITIONS = ("Queued", "Running", "Restarting", "Succeeded", "Failed", "Suspended")


def set_condition(
    conditions: list[dict[str, Any]], type_: str, status: bool, reason: str, message: str, now: str
) -> list[dict[str, Any]]:
    value = "True" if status else "False"
    out = []
    found = False
    for c in conditions:
        if c["type"] == type_:
            found = True
            changed = c["status"] != value
            c = {**c, "status": value, "reason": reason, "message": message}
            if changed:
                c["lastTransitionTime"] = now
        out.append(c)
    if not found:
        out.append(
            {
                "type": type_,
                "status": value,
                "reason": reason,
                "message": message,
                "lastTransitionTime": now,
            }
        )
    return out


def set_phase_condition(
    conditions: list[dict[str, Any]], phase: str, reason: str, message: str, now: str
) -> list[dict[str, Any]]:
    """Makes `phase`'s condition True and every other phase condition present False."""
    out = conditions
    for c in list(conditions):
        if c["type"] in PHASE_CONDITIONS and c["type"] != phase and c["status"] == "True":
            out = set_condition(out, c["type"], False, reason, message, now)
    if phase in PHASE_CONDITIONS:
        out = set_condition(out, phase, True, reason, message, now)
    return out
