"""The GPU ledger and the admission queue: which waiting gang may start now, on which nodes, and
what every other one waits for.

Pure: gangs, nodes and pods in, verdicts out. One ledger of GPUs per node holds what live pods
take (bound pods on their node, pods not yet scheduled first-fit) and what admitted gangs have
*reserved* for the ranks whose pods are not created or not seen yet, as kube-scheduler assumes a
pod before its bind is confirmed. A gang's admission is a placement (a node per rank), so the
reservation sits where its pods will go, and the pods are pinned there.

Waiting gangs are considered in one order: restarting gangs first (a gang that lost its pods
keeps its place), then by priority, then by creation time. Each one either fits into what is left
and is admitted, or *holds* every GPU it could use there, so a gang further back never takes
GPUs the one ahead could use. Backfill: a smaller gang behind may still start on GPUs the head
cannot use yet (a half-free node for a gang of whole nodes); once the head has waited longer than
`backfill_seconds`, nothing that could use the head's nodes starts before it. That bounds the
head's delay by the bound plus the runtimes of the gangs backfilled before it.

Gangs and their pods are told apart by the owner's UID, never by name.

A gang with a rank layout (pipeline and tensor parallelism) is placed by distml.placement on the
nodes it may use: tensor groups on one node, the fewest pipeline stage boundaries across network
blocks; a SameBlock gang that fits by GPU count but not inside blocks waits (WaitingForBlock) and
holds the blocks it waits for, or is told it never fits (NoBlockFits). Admission and placement
are one decision: the reservation is on the nodes the plan chose. A gang that restarts prefers
the nodes its previous generation ran on, while they are usable and have room.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from distml import labels, placement, podstate
from distml.nodefit import ANY_NODE, NodeFilter

Obj = dict[str, Any]


@dataclass(frozen=True)
class Gang:
    """One job's demand on the ledger, as its status and spec say now."""

    uid: str
    namespace: str
    name: str
    replicas: int
    gpus_per_replica: int
    generation: int = 0  # the restart generation being admitted or run
    nodes: NodeFilter = ANY_NODE  # where its pods may run: selector, affinity, taints
    priority: int = 0
    created: str = ""  # RFC 3339; orders gangs of one priority
    restarting: bool = False  # lost its pods: goes to the head of the queue
    waiting_since: dt.datetime | None = None
    # The node of each rank of the admitted generation ("" where any node will do); None while
    # the gang waits for admission.
    admitted: tuple[str, ...] | None = None
    # Its ranks' layout, when it is pipeline or tensor parallel: placed by topology.
    layout: placement.Layout | None = None
    # The node of each rank in its previous generation: kept where still usable with room.
    prefer: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[int, int, str, str, str]:
        return (
            0 if self.restarting else 1,
            -self.priority,
            self.created,
            self.namespace,
            self.name,
        )

    @property
    def title(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Verdict:
    admitted: bool
    # Admitted | InsufficientGPUs | NoNodeFits | NoMatchingNode | WaitingInQueue |
    # WaitingForBlock | NoBlockFits
    reason: str
    message: str
    position: int | None = None  # 1-based place among the waiting gangs
    nodes: tuple[str, ...] = ()  # the node of each rank, when admitted (CPU-only: "")
    free: dict[str, int] = field(default_factory=dict)  # what this gang saw free, per node


@dataclass
class Ledger:
    """Free GPUs per usable node after pods and reservations; `overbooked` counts reserved ranks
    that found no room (their node died): a sign, not an error."""

    free: dict[str, int]  # ready, schedulable nodes only (its keys never change)
    nodes: dict[str, Obj]  # every node, ready or not
    overbooked: int = 0
    # Which nodes a filter matches, worked out once per ledger: the gangs of a queue mostly
    # share one filter. Matched per gang, 200 gangs on 200 nodes took 40,000 matches, three
    # quarters of the queue's planning time.
    _candidates: dict[NodeFilter, tuple[str, ...]] = field(default_factory=dict, repr=False)
    _matching: dict[NodeFilter, tuple[Obj, ...]] = field(default_factory=dict, repr=False)

    def candidates(self, gang: Gang) -> list[str]:
        """The usable nodes the gang's pods may be bound to."""
        found = self._candidates.get(gang.nodes)
        if found is None:
            found = tuple(n for n in self.free if gang.nodes.matches(self.nodes[n]))
            self._candidates[gang.nodes] = found
        return list(found)

    def largest(self, gang: Gang) -> int | None:
        """The most GPUs any node the gang may use has at all (ready or not); None: no node
        matches its selector, affinity and tolerations."""
        sizes = [podstate.node_gpus(n) for n in self.matching(gang)]
        return max(sizes) if sizes else None

    def matching(self, gang: Gang) -> list[Obj]:
        """The nodes the gang's pods may ever go to, ready or not."""
        found = self._matching.get(gang.nodes)
        if found is None:
            found = tuple(
                n for n in self.nodes.values() if gang.nodes.matches(n, condition_taints=False)
            )
            self._matching[gang.nodes] = found
        return list(found)

    def unusable(self, gang: Gang) -> list[str]:
        """Nodes it may go to that are not ready, or cordoned, now."""
        return sorted(
            n["metadata"]["name"]
            for n in self.matching(gang)
            if n["metadata"]["name"] not in self.free
        )


def _usable(node: Obj) -> bool:
    return podstate.node_ready(node) and not (node.get("spec") or {}).get("unschedulable")


def owner_uid(pod: Obj) -> str:
    for ref in pod["metadata"].get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid", ""))
    return ""


def _best_fit(free: dict[str, int], nodes: Iterable[str], gpus: int) -> str | None:
    """The node with the least free GPUs that still holds `gpus` (fills nodes before starting
    new ones, so whole nodes stay whole for the gangs that need them)."""
    fitting = [n for n in nodes if free[n] >= gpus]
    return min(fitting, key=lambda n: (free[n], n)) if fitting else None


def build_ledger(nodes: list[Obj], pods: list[Obj], gangs: list[Gang]) -> Ledger:
    """What is free once every live GPU pod and every admitted gang's reservation is counted."""
    free = {n["metadata"]["name"]: podstate.node_gpus(n) for n in nodes if _usable(n)}
    ledger = Ledger(free=free, nodes={n["metadata"]["name"]: n for n in nodes})
    seen: set[tuple[str, int, int]] = set()  # (owner uid, generation, rank) of live pods
    unscheduled = []
    for pod in pods:
        if podstate.is_terminal(pod):
            continue
        gpus = podstate.gpu_request(pod)
        meta_labels = pod["metadata"].get("labels") or {}
        if labels.RANK in meta_labels:
            seen.add((owner_uid(pod), podstate.generation(pod), podstate.rank(pod)))
        if not gpus:
            continue
        node = podstate.node_name(pod)
        if node in free:
            free[node] -= gpus
        elif not node:
            unscheduled.append((pod, gpus))
        # Bound to a node that is gone (deleted; its pods wait for the pod garbage collector),
        # or not known here yet: it holds GPUs on no node the ledger can give.
    # A pod not yet bound goes where the admission pinned it, else first-fit.
    for pod, gpus in sorted(unscheduled, key=lambda pg: -pg[1]):
        pinned = pinned_node(pod)
        target = pinned if pinned in free else _best_fit(free, free, gpus)
        if target is not None:
            free[target] -= gpus
    for gang in gangs:
        if gang.admitted is None or not gang.gpus_per_replica:
            continue
        for rank in range(gang.replicas):
            if (gang.uid, gang.generation, rank) in seen:
                continue
            node = gang.admitted[rank] if rank < len(gang.admitted) else ""
            if node not in free:
                node = _best_fit(free, ledger.candidates(gang), gang.gpus_per_replica) or ""
            if node:
                free[node] -= gang.gpus_per_replica
            else:
                ledger.overbooked += 1
    return ledger


def pinned_node(pod: Obj) -> str:
    """The node a pod's required node affinity names by metadata.name (the admission's pin)."""
    affinity = ((pod.get("spec") or {}).get("affinity") or {}).get("nodeAffinity") or {}
    required = affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {}
    for term in required.get("nodeSelectorTerms") or []:
        for expr in term.get("matchFields") or []:
            if expr.get("key") == "metadata.name" and len(expr.get("values") or []) == 1:
                return str(expr["values"][0])
    return ""


def _place(
    free: dict[str, int], nodes: list[str], replicas: int, gpus: int, prefer: tuple[str, ...] = ()
) -> list[str]:
    """Places up to `replicas` replicas, rank by rank, taking their GPUs out of `free`: on the
    `prefer`red node of each rank where it is among `nodes` with room, else best-fit. All placed:
    the node of each rank; else the nodes of as many as fit."""
    allowed = set(nodes)
    placed: list[str | None] = [None] * replicas
    for rank, node in enumerate(prefer[:replicas]):
        if node in allowed and free[node] >= gpus:
            free[node] -= gpus
            placed[rank] = node
    for rank in range(replicas):
        if placed[rank] is None:
            best = _best_fit(free, nodes, gpus)
            if best is None:
                break
            free[best] -= gpus
            placed[rank] = best
    return [n for n in placed if n is not None]


def room_for(
    gang: Gang,
    nodes: list[Obj],
    pods: list[Obj],
    others: list[Gang],
    count: int,
    prefer: tuple[str, ...] = (),
) -> list[str]:
    """Nodes for up to `count` more replicas of a running gang (an elastic job growing back),
    on what is free once every live pod and every other gang's reservation is counted: the
    `prefer`red nodes first (where its lost pods ran, while they are usable), then best-fit."""
    ledger = build_ledger(nodes, pods, others)
    free = dict(ledger.free)
    cands = ledger.candidates(gang)
    placed: list[str] = []
    for node in prefer:
        if len(placed) < count and node in cands and free[node] >= gang.gpus_per_replica:
            free[node] -= gang.gpus_per_replica
            placed.append(node)
    return placed + _place(free, cands, count - len(placed), gang.gpus_per_replica)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def plan_queue(
    gangs: list[Gang],
    nodes: list[Obj],
    pods: list[Obj],
    now: dt.datetime,
    backfill_seconds: float = 300.0,
    until: str = "",
    keys: placement.Keys = placement.Keys(),  # noqa: B008 (frozen)
) -> dict[str, Verdict]:
    """A verdict for every waiting gang (by UID), taken in queue order against one ledger; with
    `until`, only as far as that gang (what is behind it cannot change its verdict)."""
    ledger = build_ledger(nodes, pods, gangs)
    free = ledger.free
    waiting = sorted((g for g in gangs if g.admitted is None), key=lambda g: g.key)
    verdicts: dict[str, Verdict] = {}
    starved: list[tuple[Gang, set[str]]] = []  # heads past the backfill bound, and their nodes
    for position, gang in enumerate(waiting, start=1):
        if until and until in verdicts:
            break
        cands = ledger.candidates(gang)
        place = f"{_ordinal(position)} in the queue"
        if not gang.gpus_per_replica:
            verdicts[gang.uid] = Verdict(
                True, "Admitted", f"{gang.replicas} CPU-only replicas", position,
                ("",) * gang.replicas,
            )  # fmt: skip
            continue
        largest = ledger.largest(gang)
        need = f"{gang.replicas} x {gang.gpus_per_replica} {labels.GPU}"
        if largest is None:
            verdicts[gang.uid] = Verdict(
                False,
                "NoMatchingNode",
                f"{place}: no node matches the pod template's nodeSelector, required node "
                "affinity and tolerations",
                position,
            )
            continue
        if gang.gpus_per_replica > largest:
            verdicts[gang.uid] = Verdict(
                False,
                "NoNodeFits",
                f"each replica asks for {gang.gpus_per_replica} {labels.GPU} but the largest "
                f"node has {largest}; no node can ever run it",
                position,
            )
            continue
        seen_free = {n: max(free[n], 0) for n in cands}
        blocker = next((h for h, hn in starved if hn.intersection(cands)), None)
        trial = dict(free)
        topo: placement.Placement | placement.NoFit | None = None
        if gang.layout is None:
            placed = _place(trial, cands, gang.replicas, gang.gpus_per_replica, gang.prefer)
        else:
            placed, topo = _place_by_topology(gang, trial, cands, ledger, keys)
        if isinstance(topo, placement.NoFit) and topo.reason == "WaitingForBlock":
            verdicts[gang.uid] = _no_block(gang, topo, ledger, keys, place, position, seen_free)
            for node, gpus in topo.hold.items():  # what it waits for is not given away
                free[node] -= gpus
            _starving(gang, now, backfill_seconds, starved, cands)
            continue
        if len(placed) == gang.replicas and blocker is None:
            free.update(trial)
            shown = f"room for {need}"
            if isinstance(topo, placement.Placement):
                shown += f"; {topo.message} ({keys.block})"
            verdicts[gang.uid] = Verdict(
                True, "Admitted", shown, position, tuple(placed), seen_free
            )
            continue
        if blocker is not None and len(placed) == gang.replicas:
            verdicts[gang.uid] = Verdict(
                False,
                "WaitingInQueue",
                f"{place}: {need} would fit, but {blocker.title} is ahead and has waited "
                f"longer than {backfill_seconds:.0f}s for the same nodes",
                position,
                free=seen_free,
            )
            continue
        # Blocked: hold what it could use, so nothing behind it takes those GPUs.
        free.update(trial)
        shown = ", ".join(f"{n}={f}" for n, f in sorted(seen_free.items()) if f) or "none"
        down = ledger.unusable(gang)
        more = f" and {len(down) - 3} more" if len(down) > 3 else ""
        waiting_on = f"; not ready or cordoned: {', '.join(down[:3])}{more}" if down else ""
        verdicts[gang.uid] = Verdict(
            False,
            "InsufficientGPUs",
            f"{place}: waiting for {need} on whole nodes: room for {len(placed)} now; "
            f"free GPUs: {shown}{waiting_on}",
            position,
            free=seen_free,
        )
        _starving(gang, now, backfill_seconds, starved, cands)
    return verdicts


def _starving(
    gang: Gang,
    now: dt.datetime,
    backfill_seconds: float,
    starved: list[tuple[Gang, set[str]]],
    cands: list[str],
) -> None:
    """Past the backfill bound, a blocked gang's nodes go to nothing behind it."""
    since = gang.waiting_since or now
    if (now - since).total_seconds() >= backfill_seconds:
        starved.append((gang, set(cands)))


def _place_by_topology(
    gang: Gang, trial: dict[str, int], cands: list[str], ledger: Ledger, keys: placement.Keys
) -> tuple[list[str], placement.Placement | placement.NoFit]:
    """The placement planner's nodes for a gang with a rank layout, taken out of `trial`."""
    assert gang.layout is not None
    blocks = {n: keys.block_of(ledger.nodes[n]) for n in cands}
    result = placement.plan(
        gang.layout, gang.gpus_per_replica, {n: max(trial[n], 0) for n in cands}, blocks,
        gang.prefer, keys.block,
    )  # fmt: skip
    if isinstance(result, placement.NoFit):
        # What would fit anywhere, for the message and the GPUs it holds while it waits.
        return _place(trial, cands, result.units * gang.layout.unit_pods,
                      gang.gpus_per_replica), result  # fmt: skip
    for node in result.nodes:
        trial[node] -= gang.gpus_per_replica
    return list(result.nodes), result


def _no_block(
    gang: Gang,
    topo: placement.NoFit,
    ledger: Ledger,
    keys: placement.Keys,
    place: str,
    position: int,
    seen_free: dict[str, int],
) -> Verdict:
    """A gang that fits by GPU count but not inside blocks: it waits, or never fits (not even
    with every node it may use empty, ready or not)."""
    assert gang.layout is not None
    whole = {n["metadata"]["name"]: podstate.node_gpus(n) for n in ledger.matching(gang)}
    blocks = {n: keys.block_of(ledger.nodes[n]) for n in whole}
    ever = placement.plan(gang.layout, gang.gpus_per_replica, whole, blocks, (), keys.block)
    if isinstance(ever, placement.NoFit) and ever.reason == "WaitingForBlock":
        return Verdict(False, "NoBlockFits", f"{ever.message}, even with every node empty; no "
                       "block can ever run it", position, free=seen_free)  # fmt: skip
    return Verdict(False, "WaitingForBlock", f"{place}: {topo.message}", position, free=seen_free)
