"""Topology-aware placement of a gang whose ranks form a pipeline x data x tensor grid: which node
each pod goes to, so that tensor-parallel groups never span nodes and consecutive pipeline stages
stay inside one network block wherever the free GPUs allow.

Pure: a layout, free GPUs per node and each node's block in, a node per pod (or why none) out.

The rank layout is the runtime's (distml_runtime.pipeline.planning.RankLayout, with tensor groups
innermost, as Megatron-LM orders them): global rank = stage x (dp x tensor) + dp index x tensor +
tensor index, so the dp replicas of a stage are neighbouring ranks, and pod i (torchrun node
rank i) holds ranks [i x nproc, (i + 1) x nproc).

The decision, and why it is optimal. Pods whose ranks share a tensor group form a *unit* that
must go to one node; every unit asks for the same GPUs, so a node holds free // unit GPUs units,
and a block the sum over its nodes. A stage boundary s (between stages s and s + 1) *crosses*
when some activation hop (stage s, dp d, tensor t) -> (stage s + 1, d, t) joins units in two
blocks. Choose the boundaries to keep inside blocks: the units they join form components, and
the choice is possible exactly when the components pack into the blocks' capacities (bin
packing; units are interchangeable inside a block). Every placement with c crossing boundaries
is such a choice with c cuts, and every packable choice with c cuts gives a placement with at
most c crossings, so the fewest cuts that pack is the optimum. The search is a branch and bound
over the boundaries (keep first, cut second; an unpackable partial choice stays unpackable when
more is kept), with exact packing memoised by component sizes; both have a step budget, past
which the best placement found so far is used (always one: cut everything, when the GPUs are
there at all). Within a block, a component's units fill nodes one after another, the fullest
usable node first, so whole nodes stay whole for other gangs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from distml import labels

Obj = dict[str, Any]

SAME_BLOCK = "SameBlock"  # no stage boundary may cross blocks: wait until it fits
PREFER_SAME_BLOCK = "PreferSameBlock"  # the fewest crossings the free GPUs allow
ANY = "Any"  # the ledger's best fit, pod by pod (tensor groups still on one node)
MODES = (SAME_BLOCK, PREFER_SAME_BLOCK, ANY)

SEARCH_BUDGET = 20_000  # branch-and-bound steps
PACK_BUDGET = 20_000  # packing steps per component multiset


@dataclass(frozen=True)
class Keys:
    """The node labels placement reads (configurable for real clusters: the chart's placement
    values). A node without the block label is a block of its own."""

    block: str = "topology.distml.io/block"
    zone: str = "topology.kubernetes.io/zone"

    def block_of(self, node: Obj) -> str:
        meta = node["metadata"]
        return str((meta.get("labels") or {}).get(self.block) or meta["name"])

    def zone_of(self, node: Obj) -> str:
        return str((node["metadata"].get("labels") or {}).get(self.zone) or "")


@dataclass(frozen=True)
class Layout:
    """A gang of `replicas` pods of `nproc` ranks each, cut into `pipeline` stages of
    `tensor`-wide groups; the rest of the world is data parallel."""

    replicas: int
    nproc: int
    pipeline: int = 1
    tensor: int = 1
    mode: str = PREFER_SAME_BLOCK

    def __post_init__(self) -> None:
        if min(self.replicas, self.nproc, self.pipeline, self.tensor) < 1:
            raise ValueError(f"every size must be >= 1: {self}")
        if self.world % (self.pipeline * self.tensor):
            raise ValueError(
                f"world size {self.world} is not divisible by pipeline x tensor "
                f"({self.pipeline} x {self.tensor})"
            )
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")

    @property
    def world(self) -> int:
        return self.replicas * self.nproc

    @property
    def per_stage(self) -> int:
        return self.world // self.pipeline

    @property
    def dp(self) -> int:
        return self.per_stage // self.tensor

    @property
    def unit_pods(self) -> int:
        """Pods per unit: the fewest consecutive pods whose ranks hold whole tensor groups."""
        return self.tensor // math.gcd(self.nproc, self.tensor)

    @property
    def units(self) -> int:
        return self.replicas // self.unit_pods  # whole: world % tensor == 0

    def coords(self, rank: int) -> tuple[int, int, int]:
        """(stage, dp index, tensor index) of a global rank."""
        stage, rest = divmod(rank, self.per_stage)
        dp, t = divmod(rest, self.tensor)
        return stage, dp, t

    def unit_of_rank(self, rank: int) -> int:
        return rank // self.nproc // self.unit_pods

    @cached_property
    def hops(self) -> tuple[tuple[tuple[int, int], ...], ...]:
        """Per stage boundary, the pairs of units an activation hop joins (none: the boundary
        lies inside units, so it never crosses)."""
        out = []
        for s in range(self.pipeline - 1):
            pairs = set()
            for offset in range(self.per_stage):
                a = self.unit_of_rank(s * self.per_stage + offset)
                b = self.unit_of_rank((s + 1) * self.per_stage + offset)
                if a != b:
                    pairs.add((a, b))
            out.append(tuple(sorted(pairs)))
        return tuple(out)

    def pod_ranks(self, pod: int) -> range:
        return range(pod * self.nproc, (pod + 1) * self.nproc)

    def crossings(self, unit_blocks: Sequence[str]) -> list[int]:
        """The stage boundaries that cross blocks, given each unit's block."""
        return [
            s
            for s, pairs in enumerate(self.hops)
            if any(unit_blocks[a] != unit_blocks[b] for a, b in pairs)
        ]


def span(values: Iterable[int]) -> str:
    """ "3" or "0-7" (the values are contiguous in every use here), "" for none."""
    vs = sorted(set(values))
    if not vs:
        return ""
    return str(vs[0]) if vs[0] == vs[-1] else f"{vs[0]}-{vs[-1]}"


@dataclass(frozen=True)
class Placement:
    nodes: tuple[str, ...]  # the node of each pod, in pod (torchrun node rank) order
    crossings: tuple[int, ...]  # stage boundaries that cross blocks
    blocks: int  # blocks the gang uses
    message: str


@dataclass(frozen=True)
class NoFit:
    reason: str  # InsufficientGPUs | WaitingForBlock
    message: str
    units: int = 0  # units that would fit anywhere
    hold: dict[str, int] = field(default_factory=dict)  # GPUs it holds meanwhile, per node


def plan(
    layout: Layout,
    gpus: int,
    free: Mapping[str, int],
    blocks: Mapping[str, str],
    prefer: Sequence[str] = (),
    block_key: str = Keys.block,
) -> Placement | NoFit:
    """A node for every pod of `layout`, each asking for `gpus`, on the nodes of `free` (the
    usable nodes the gang may go to, with their free GPUs; `blocks` gives each one's block).
    `prefer`: the nodes its previous generation ran on, kept when that is still as good."""
    per_unit = gpus * layout.unit_pods
    cap = {n: f // per_unit for n, f in free.items() if per_unit and f >= per_unit}
    total = sum(cap.values())
    if total < layout.units:
        return NoFit("InsufficientGPUs", "", units=total)
    kept = _preferred(layout, cap, prefer)
    if layout.mode == ANY or not any(layout.hops):
        chosen = kept or _best_fit(cap, layout.units)
        return _result(layout, chosen, blocks)
    block_cap: dict[str, int] = {}
    for n, c in cap.items():
        block_cap[blocks[n]] = block_cap.get(blocks[n], 0) + c
    allowed = 0 if layout.mode == SAME_BLOCK else layout.pipeline
    found = _search(layout, block_cap, allowed)
    if found is None:
        return _no_block(layout, gpus, block_cap, cap, blocks, block_key)
    cuts, comps, where = found
    if kept is not None and len(layout.crossings([blocks[n] for n in kept])) <= cuts:
        return _result(layout, kept, blocks)
    return _result(layout, _fill(comps, where, cap, blocks, set(prefer)), blocks)


def _result(layout: Layout, unit_nodes: Sequence[str], blocks: Mapping[str, str]) -> Placement:
    unit_blocks = [blocks[n] for n in unit_nodes]
    crossing = tuple(layout.crossings(unit_blocks))
    used = len(set(unit_blocks))
    pods = tuple(unit_nodes[p // layout.unit_pods] for p in range(layout.replicas))
    stages = f"{layout.pipeline} stages" if layout.pipeline > 1 else "1 stage"
    message = f"{stages} in {used} block{'s' * (used != 1)}, {len(crossing)} crossing"
    return Placement(pods, crossing, used, message)


def _preferred(layout: Layout, cap: Mapping[str, int], prefer: Sequence[str]) -> list[str] | None:
    """The previous generation's nodes per unit, if they are all still there with room."""
    if len(prefer) != layout.replicas:
        return None
    unit_nodes = []
    for u in range(layout.units):
        pods = prefer[u * layout.unit_pods : (u + 1) * layout.unit_pods]
        if len(set(pods)) != 1 or pods[0] not in cap:
            return None
        unit_nodes.append(pods[0])
    if any(unit_nodes.count(n) > cap[n] for n in set(unit_nodes)):
        return None
    return unit_nodes


def _best_fit(cap: Mapping[str, int], units: int) -> list[str]:
    """Unit by unit, the usable node with the least room that still holds one."""
    room = dict(cap)
    out = []
    for _ in range(units):
        node = min((n for n in room if room[n] > 0), key=lambda n: (room[n], n))
        room[node] -= 1
        out.append(node)
    return out


def _components(layout: Layout, kept: Iterable[int]) -> list[list[int]]:
    """The units joined by the kept boundaries' hops, each sorted, in order of their first."""
    parent = list(range(layout.units))

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for s in kept:
        for a, b in layout.hops[s]:
            ra, rb = root(a), root(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for u in range(layout.units):
        groups.setdefault(root(u), []).append(u)
    return list(groups.values())


class _Budget:
    def __init__(self, steps: int) -> None:
        self.left = steps

    def spend(self) -> bool:
        self.left -= 1
        return self.left >= 0


def _pack(sizes: Sequence[int], caps: Sequence[int], budget: _Budget) -> list[int] | None:
    """A bin for every item within the bins' capacities, largest item first, each into the
    tightest bin that holds it first; None when none exists, or none was found within the
    budget. Bins with the same room left are interchangeable, so the search branches on
    distinct room values only, and remembers the states (item, room values) that failed."""
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i])
    smallest = sizes[order[-1]] if order else 0
    bins_with: dict[int, list[int]] = {}  # room left -> bins with that much
    for b, c in enumerate(caps):
        if c >= smallest:
            bins_with.setdefault(c, []).append(b)
    where = [-1] * len(sizes)
    failed: set[tuple[int, tuple[tuple[int, int], ...]]] = set()
    remaining = [0] * (len(order) + 1)
    for k in range(len(order) - 1, -1, -1):
        remaining[k] = remaining[k + 1] + sizes[order[k]]

    def state(k: int) -> tuple[tuple[int, int], ...]:
        # Room beyond what the items left need is as good as that much.
        counts: dict[int, int] = {}
        for room, bins in bins_with.items():
            if bins and room >= smallest:
                key = min(room, remaining[k])
                counts[key] = counts.get(key, 0) + len(bins)
        return tuple(sorted(counts.items()))

    def go(k: int) -> bool:
        if k == len(order):
            return True
        key = (k, state(k))
        if key in failed or not budget.spend():
            return False
        size = sizes[order[k]]
        for room in sorted(r for r, bins in bins_with.items() if bins and r >= size):
            b = bins_with[room].pop()
            bins_with.setdefault(room - size, []).append(b)
            where[order[k]] = b
            if go(k + 1):
                return True
            bins_with[room - size].pop()
            bins_with[room].append(b)
        failed.add(key)
        return False

    return where if go(0) else None


def _search(
    layout: Layout, block_cap: Mapping[str, int], allowed_cuts: int
) -> tuple[int, list[list[int]], list[str]] | None:
    """The fewest cut boundaries (at most `allowed_cuts`) whose components pack into the
    blocks: (cuts, components, the block of each), or None."""
    names = sorted(block_cap, key=lambda b: (block_cap[b], b))
    caps = [block_cap[b] for b in names]
    decisions = [s for s, pairs in enumerate(layout.hops) if pairs]
    packed: dict[tuple[int, ...], list[int] | None] = {}
    best: list[Any] = [None]
    bound = [allowed_cuts + 1]
    budget = _Budget(SEARCH_BUDGET)

    def packing(kept: list[int]) -> tuple[list[list[int]], list[int] | None]:
        comps = _components(layout, kept)
        sizes = tuple(len(c) for c in comps)
        key = tuple(sorted(sizes, reverse=True))
        if key not in packed:
            packed[key] = _pack(key, caps, _Budget(PACK_BUDGET))
        bins = packed[key]
        if bins is None:
            return comps, None
        # The packing is of the sorted sizes; hand each component a bin of its size.
        by_size: dict[int, list[int]] = {}
        for size, b in zip(key, bins, strict=True):
            by_size.setdefault(size, []).append(b)
        return comps, [by_size[len(c)].pop(0) for c in comps]

    def go(i: int, kept: list[int], cuts: int) -> None:
        if cuts >= bound[0] or not budget.spend():
            return
        if i == len(decisions):
            comps, bins = packing(kept)
            if bins is not None:
                best[0], bound[0] = (cuts, comps, [names[b] for b in bins]), cuts
            return
        with_it = [*kept, decisions[i]]
        if packing(with_it)[1] is not None:  # unpackable now: unpackable with more kept
            go(i + 1, with_it, cuts)
        go(i + 1, kept, cuts + 1)

    go(0, [], 0)
    if best[0] is None and allowed_cuts >= len(decisions):
        # Out of budget before any leaf: cutting everything leaves single units, which pack.
        comps, bins = packing([])
        if bins is not None:
            best[0] = (len(decisions), comps, [names[b] for b in bins])
    found: tuple[int, list[list[int]], list[str]] | None = best[0]
    return found


def _fill(
    comps: list[list[int]],
    where: list[str],
    cap: Mapping[str, int],
    blocks: Mapping[str, str],
    prefer: set[str],
) -> list[str]:
    """Each component's units on nodes of its block, one node after another: the nodes its
    previous generation used first, then the fullest that still holds a unit."""
    room = dict(cap)
    unit_nodes: dict[int, str] = {}
    by_block: dict[str, list[str]] = {}
    for n in cap:
        by_block.setdefault(blocks[n], []).append(n)
    for block in by_block:
        by_block[block].sort(key=lambda n: (n not in prefer, room[n], n))
    for comp, block in sorted(zip(comps, where, strict=True), key=lambda cw: cw[0][0]):
        for u in comp:
            node = next(n for n in by_block[block] if room[n] > 0)
            room[node] -= 1
            unit_nodes[u] = node
    return [unit_nodes[u] for u in range(len(unit_nodes))]


def _no_block(
    layout: Layout,
    gpus: int,
    block_cap: Mapping[str, int],
    cap: Mapping[str, int],
    blocks: Mapping[str, str],
    block_key: str,
) -> NoFit:
    """Why a SameBlock gang does not fit by topology now, and what it holds while it waits: for
    each of its components, largest first, what the roomiest block left has free, up to its
    size (so that what frees there next completes it)."""
    comps = _components(layout, range(len(layout.hops)))
    sizes = sorted((len(c) for c in comps), reverse=True)
    per = layout.unit_pods
    what = f"{layout.pipeline} stages"
    ranked = sorted(block_cap.items(), key=lambda bc: (-bc[1], bc[0]))
    if sizes[0] > (ranked[0][1] if ranked else 0):
        best = f"{ranked[0][0]}, has room for {ranked[0][1] * per}" if ranked else "has none"
        need = f"{sizes[0] * per} replicas of {gpus} {labels.GPU}"
        message = (
            f"needs {need} in one block ({block_key}) to keep its {what} together; the "
            f"best block, {best}"
        )
    else:
        fit = sum(1 for _b, c in ranked if c >= sizes[-1])
        message = (
            f"needs {len(sizes)} pipelines of {sizes[0] * per} replicas of {gpus} "
            f"{labels.GPU}, each in one block ({block_key}) to keep its {what} together; "
            f"{fit} block{'s' * (fit != 1)} {'have' if fit != 1 else 'has'} room for one"
        )
    if per > 1:
        message += f" (a unit of {per} replicas shares a tensor group, so a node)"
    hold: dict[str, int] = {}
    for size, (block, _c) in zip(sizes, ranked, strict=False):  # a block per component
        want = size
        for n in sorted(n for n in cap if blocks[n] == block):
            take = min(cap[n], want)
            if take:
                hold[n] = take * gpus * per
                want -= take
    return NoFit("WaitingForBlock", message, units=sum(cap.values()), hold=hold)


def describe_pod(layout: Layout, pod: int) -> dict[str, str]:
    """What a pod holds: its global ranks, stages, dp indices and tensor groups, as spans."""
    ranks = layout.pod_ranks(pod)
    coords = [layout.coords(r) for r in ranks]
    return {
        "global_ranks": span(ranks),
        "stages": span(c[0] for c in coords),
        "data_parallel": span(c[1] for c in coords),
        "tensor_groups": span(r // layout.tensor for r in ranks),
    }
