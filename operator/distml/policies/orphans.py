"""Orphans: pods and Services the operator made for a job that no longer exists.

The garbage collector deletes a job's dependents through their owner references, but not always
in time: after an API server restart its graph can miss a deletion, and a job recreated under the
same name then waits on its predecessor's pod names for as long as they stay. The operator keeps
its own account: an object it labelled with an owner UID (or, from an operator before the label,
whose controller reference names one) that is not the UID of a live job of that kind is an orphan.

The caller lists the objects *before* the jobs: a job that owns a listed object existed when it
was listed, so if it is still alive the later list of jobs has it, and nothing live is ever taken
for an orphan.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from distml import labels

Obj = dict[str, Any]


@dataclass(frozen=True)
class Orphan:
    kind: str  # Pod | Service
    namespace: str
    name: str
    uid: str  # the object's own UID: a precondition on its deletion
    owner_uid: str


def owner(obj: Obj, kind: str) -> str:
    """The UID of the `kind` job that owns `obj`, "" when it is not one of that kind's."""
    meta = obj["metadata"]
    lab = meta.get("labels") or {}
    if lab.get(labels.MANAGED_BY) != labels.OPERATOR:
        return ""
    if lab.get(labels.OWNER_UID):
        return str(lab[labels.OWNER_UID]) if lab.get(labels.OWNER_KIND, kind) == kind else ""
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == kind:
            return str(ref.get("uid", ""))
    return ""


def find(
    objects: Iterable[Obj], kind: str, live: Collection[str], object_kind: str = "Pod"
) -> list[Orphan]:
    """The objects (of `object_kind`, as a LIST returns them) of `kind`'s jobs whose owner is not
    in `live` (UIDs of jobs not being deleted); objects already being deleted are left to
    finish."""
    out = []
    for obj in objects:
        meta = obj["metadata"]
        uid = owner(obj, kind)
        if not uid or uid in live or meta.get("deletionTimestamp"):
            continue
        out.append(
            Orphan(
                object_kind, meta["namespace"], meta["name"],
                str(meta.get("uid", "")), uid,
            )
        )  # fmt: skip
    return out
