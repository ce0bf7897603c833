"""Disruption: when many nodes go NotReady together, it is the control plane or the network that
failed, not the nodes, and restarting every job for it would throw away work the nodes are still
doing (their heartbeats could not land; their pods kept running).

The rule follows the node lifecycle controller, which stops evicting in the same cases:
- the cluster: every node NotReady, or more than two and at least `threshold` of them (the
  controller's unhealthy-zone-threshold, 0.55);
- a zone (`topology.kubernetes.io/zone`): more than two of its nodes and at least `threshold` of
  them NotReady while some are still Ready (a partial disruption). A zone that went down entirely
  while the others answer is a lost zone, as the controller takes it: its pods are lost.
A pod on a NotReady node the disruption covers is not counted as lost; a node that is deleted,
or NotReady on its own, still is. Nodes report back one by one, so the disruption ends while some
are still NotReady: those stay held for `grace` seconds after it ended (`hold`), and only a node
still silent then is taken as lost.

Nodes do not go NotReady at the same instant in an outage either: each heartbeat stops at its own
point of its interval, so the controller marks them one by one over about one heartbeat interval
plus its monitor period. A node NotReady for less than `NODE_LOSS_SECONDS` is therefore not lost
yet (`loss_pending`): if it is the first of many, the disruption is seen before its pods are
restarted for nothing. The price is that long on a real node loss.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from distml import podstate

Obj = dict[str, Any]
ZONE_LABEL = "topology.kubernetes.io/zone"
UNHEALTHY_ZONE_THRESHOLD = 0.55


@dataclass(frozen=True)
class Disruption:
    scopes: tuple[str, ...] = ()  # "the cluster", or "zone X" per disrupted zone
    not_ready: tuple[str, ...] = ()  # the NotReady nodes it covers
    total: int = 0  # nodes in its scopes

    def __bool__(self) -> bool:
        return bool(self.scopes)

    def covers(self, node_name: str) -> bool:
        """Whether `node_name` is NotReady because of the disruption, not on its own."""
        return node_name in self.not_ready

    @property
    def message(self) -> str:
        return (
            f"{len(self.not_ready)} of {self.total} nodes in {', '.join(self.scopes)} went "
            "NotReady together: taken for a control-plane or network outage, not node loss; "
            "no restarts for it until they report again"
        )


def zone(node: Obj) -> str:
    return str((node["metadata"].get("labels") or {}).get(ZONE_LABEL, ""))


def _many(down: int, total: int, threshold: float) -> bool:
    return down > 2 and down / total >= threshold


def find(nodes: Iterable[Obj], threshold: float = UNHEALTHY_ZONE_THRESHOLD) -> Disruption:
    nodes = list(nodes)
    down = sorted(n["metadata"]["name"] for n in nodes if not podstate.node_ready(n))
    if down and (len(down) == len(nodes) or _many(len(down), len(nodes), threshold)):
        return Disruption(("the cluster",), tuple(down), len(nodes))
    by_zone: dict[str, list[Obj]] = {}
    for node in nodes:
        by_zone.setdefault(zone(node), []).append(node)
    scopes: list[str] = []
    covered: list[str] = []
    total = 0
    for name, members in sorted(by_zone.items()):
        zone_down = [n["metadata"]["name"] for n in members if not podstate.node_ready(n)]
        if len(zone_down) < len(members) and _many(len(zone_down), len(members), threshold):
            scopes.append(f"zone {name}" if name else "the nodes without a zone")
            covered.extend(zone_down)
            total += len(members)
    return Disruption(tuple(scopes), tuple(sorted(covered)), total)


RECOVERY_GRACE_SECONDS = 60.0
# Kubelets renew their lease every 10 s and the controller looks every 5 s: 15 s covers the spread.
NODE_LOSS_SECONDS = 15.0


def loss_pending(node: Obj, now: dt.datetime, after: float = NODE_LOSS_SECONDS) -> float:
    """Seconds until a NotReady node's pods are taken for lost (0: now, or the node is Ready)."""
    went = podstate.parse_time(podstate.not_ready_since(node))
    if went is None:
        return 0.0
    return max(0.0, after - (now - went).total_seconds())


def hold(
    before: Mapping[str, float | None],
    found: Disruption,
    nodes: Iterable[Obj],
    now: float,
    grace: float = RECOVERY_GRACE_SECONDS,
) -> dict[str, float | None]:
    """The NotReady nodes whose pods are held, each with when that ends (None: while the
    disruption lasts): every node `found` covers, and every node held `before` that has not
    reported since, until `grace` after the disruption let it go. A node Ready again, or
    deleted, is dropped."""
    not_ready = {n["metadata"]["name"] for n in nodes if not podstate.node_ready(n)}
    out: dict[str, float | None] = dict.fromkeys(found.not_ready)
    for name, until in before.items():
        if name in out or name not in not_ready:
            continue
        until = now + grace if until is None else until
        if until > now:
            out[name] = until
    return out
