"""Which nodes a pod template may run on, by the scheduler's hard rules: its nodeSelector, its
required node affinity, and the node's NoSchedule/NoExecute taints against its tolerations.

Pure and hashable, so a gang's demand on the GPU ledger carries its template's node filter: the
admission must never reserve GPUs on a node the scheduler will refuse to bind the pod to.
Semantics follow Kubernetes: terms are ORed, the requirements of a term ANDed; `NotIn` and
`DoesNotExist` hold on a node without the label; `Gt`/`Lt` compare integers; `matchFields`
knows `metadata.name`; a toleration with no effect matches every effect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]
BLOCKING_EFFECTS = ("NoSchedule", "NoExecute")
CONDITION_TAINTS = "node.kubernetes.io/"  # not-ready, unreachable, memory-pressure, ...


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # In | NotIn | Exists | DoesNotExist | Gt | Lt
    values: tuple[str, ...] = ()

    def holds(self, fields: dict[str, str]) -> bool:
        value = fields.get(self.key)
        op = self.operator
        if op == "In":
            return value is not None and value in self.values
        if op == "NotIn":
            return value is None or value not in self.values
        if op == "Exists":
            return value is not None
        if op == "DoesNotExist":
            return value is None
        if op in ("Gt", "Lt") and value is not None and len(self.values) == 1:
            try:
                have, bound = int(value), int(self.values[0])
            except ValueError:
                return False
            return have > bound if op == "Gt" else have < bound
        return False


@dataclass(frozen=True)
class Term:
    """One nodeSelectorTerm: every label expression and every field expression must hold."""

    expressions: tuple[Requirement, ...] = ()
    fields: tuple[Requirement, ...] = ()

    def holds(self, labels: dict[str, str], name: str) -> bool:
        if not self.expressions and not self.fields:
            return False  # Kubernetes: an empty term matches no node
        return all(r.holds(labels) for r in self.expressions) and all(
            r.holds({"metadata.name": name}) for r in self.fields
        )


@dataclass(frozen=True)
class Toleration:
    key: str = ""
    operator: str = "Equal"
    value: str = ""
    effect: str = ""

    def tolerates(self, taint: Obj) -> bool:
        if self.effect and self.effect != taint.get("effect"):
            return False
        if self.operator == "Exists":
            return not self.key or self.key == taint.get("key")
        return self.key == taint.get("key") and self.value == (taint.get("value") or "")


@dataclass(frozen=True)
class NodeFilter:
    selector: tuple[tuple[str, str], ...] = ()
    terms: tuple[Term, ...] = ()  # empty: no required node affinity
    tolerations: tuple[Toleration, ...] = ()
    avoid: frozenset[str] = frozenset()  # nodes not to use now (suspect), though they match

    @classmethod
    def of(cls, pod_spec: Obj) -> NodeFilter:
        """The filter of a pod spec (or a template's spec), as the scheduler would apply it."""
        affinity = (pod_spec.get("affinity") or {}).get("nodeAffinity") or {}
        required = affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {}
        return cls(
            selector=tuple(sorted((pod_spec.get("nodeSelector") or {}).items())),
            terms=tuple(
                Term(_requirements(t.get("matchExpressions")), _requirements(t.get("matchFields")))
                for t in required.get("nodeSelectorTerms") or []
            ),
            tolerations=tuple(
                Toleration(
                    str(t.get("key") or ""),
                    str(t.get("operator") or "Equal"),
                    str(t.get("value") or ""),
                    str(t.get("effect") or ""),
                )
                for t in pod_spec.get("tolerations") or []
            ),
        )

    def matches(self, node: Obj, condition_taints: bool = True) -> bool:
        """Labels, affinity and taints: whether the scheduler could bind the pod there at all
        (readiness and free resources are the ledger's business). Without `condition_taints`,
        the taints the node lifecycle controller puts on a node while it is not ready or
        unreachable (node.kubernetes.io/...) do not count: they say how it is now, not where
        the pod may ever go."""
        meta = node["metadata"]
        labels = meta.get("labels") or {}
        if condition_taints and meta["name"] in self.avoid:
            return False
        if any(labels.get(k) != v for k, v in self.selector):
            return False
        if self.terms and not any(t.holds(labels, meta["name"]) for t in self.terms):
            return False
        return all(
            any(t.tolerates(taint) for t in self.tolerations)
            for taint in (node.get("spec") or {}).get("taints") or []
            if taint.get("effect") in BLOCKING_EFFECTS
            and (condition_taints or not str(taint.get("key", "")).startswith(CONDITION_TAINTS))
        )

    def tolerating(self, *extra: Obj) -> NodeFilter:
        """The same filter with tolerations the operator adds when it renders the pod."""
        added = NodeFilter.of({"tolerations": list(extra)}).tolerations
        return NodeFilter(self.selector, self.terms, (*self.tolerations, *added))


def _requirements(raw: list[Obj] | None) -> tuple[Requirement, ...]:
    return tuple(
        Requirement(str(r.get("key", "")), str(r.get("operator", "")),
                    tuple(str(v) for v in r.get("values") or ()))
        for r in raw or []
    )  # fmt: skip


ANY_NODE = NodeFilter()  # a template with no selector, affinity or tolerations
