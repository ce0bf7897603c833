"""The placement planner: tensor groups on one node, the fewest stage boundaries across blocks,
checked against a brute-force oracle that knows nothing of units, components or packing: it
tries every pod -> node assignment and counts crossings rank by rank."""

from __future__ import annotations

import math
import random

import pytest

from distml import admission, placement, rendering
from distml.placement import ANY, PREFER_SAME_BLOCK, SAME_BLOCK, Layout, NoFit, Placement
from distml.trainingjob import Settings, World, plan_reconcile

from .builders import at, make_job, make_node, make_pod


def cluster(block_sizes, gpus=8, taken=None):
    """Nodes b<i>n<j> in blocks b<i>, with `gpus` each less what `taken` says."""
    free, blocks = {}, {}
    for b, size in enumerate(block_sizes):
        for j in range(size):
            name = f"b{b}n{j}"
            free[name] = gpus - (taken or {}).get(name, 0)
            blocks[name] = f"b{b}"
    return free, blocks


def oracle(replicas, nproc, pp, tp, gpus, free, blocks):
    """The fewest crossing stage boundaries over every assignment of pods to nodes that fits the
    free GPUs and keeps every tensor group on one node; None when no assignment fits."""
    world = replicas * nproc
    per_stage = world // pp
    names = sorted(free)
    best = [None]

    def crossings(assign):
        count = 0
        for s in range(pp - 1):
            for off in range(per_stage):
                a, b = s * per_stage + off, (s + 1) * per_stage + off
                if blocks[assign[a // nproc]] != blocks[assign[b // nproc]]:
                    count += 1
                    break
        return count

    def tensor_ok(assign, upto):
        for g in range(world // tp):
            pods = {r // nproc for r in range(g * tp, (g + 1) * tp)}
            if max(pods) < upto and len({assign[p] for p in pods}) > 1:
                return False
        return True

    def go(pod, assign, room):
        if pod == replicas:
            c = crossings(assign)
            if best[0] is None or c < best[0]:
                best[0] = c
            return
        tried = set()  # unused nodes of one block and room are interchangeable: try one
        for n in names:
            if n not in assign:
                if (blocks[n], room[n]) in tried:
                    continue
                tried.add((blocks[n], room[n]))
            if room[n] >= gpus:
                assign.append(n)
                room[n] -= gpus
                if tensor_ok(assign, pod + 1):
                    go(pod + 1, assign, room)
                room[n] += gpus
                assign.pop()

    go(0, [], dict(free))
    return best[0]


def check_valid(layout, gpus, free, blocks, result):
    assert isinstance(result, Placement)
    assert len(result.nodes) == layout.replicas
    for n in set(result.nodes):
        assert result.nodes.count(n) * gpus <= free[n], (n, result.nodes)
    for g in range(layout.world // layout.tensor):
        pods = {r // layout.nproc for r in range(g * layout.tensor, (g + 1) * layout.tensor)}
        assert len({result.nodes[p] for p in pods}) == 1, f"tensor group {g} spans nodes"
    # The crossings it reports are the ones its nodes give.
    unit_blocks = [blocks[result.nodes[u * layout.unit_pods]] for u in range(layout.units)]
    assert list(result.crossings) == layout.crossings(unit_blocks)


def random_case(rng):
    pp = rng.randint(2, 8)
    tp = rng.choice([1, 1, 2, 4, 8])
    nproc = rng.choice([1, 2, 4, 8])
    # the smallest pod count that holds whole pipelines x tensor groups, times 1 or 2
    base = pp * tp // math.gcd(pp * tp, nproc)
    replicas = base * rng.choice([1, 2])
    if replicas > 6:
        return None
    gpus = rng.choice([2, 4, 8, 8])
    sizes = [rng.randint(1, 2) for _ in range(rng.randint(2, 4))]
    while sum(sizes) > 6:
        sizes.pop()
    free, blocks = cluster(sizes)
    for n in free:
        free[n] -= rng.choice([0, 0, 0, 0, 4, 8])
    return replicas, nproc, pp, tp, gpus, free, blocks


def test_the_planner_matches_the_oracle_on_random_small_clusters():
    rng = random.Random(19)
    checked = same_block_waits = crossings_seen = 0
    while checked < 200:
        case = random_case(rng)
        if case is None:
            continue
        replicas, nproc, pp, tp, gpus, free, blocks = case
        want = oracle(*case)
        for mode in (PREFER_SAME_BLOCK, SAME_BLOCK):
            layout = Layout(replicas, nproc, pp, tp, mode)
            got = placement.plan(layout, gpus, free, blocks)
            if want is None:
                assert isinstance(got, NoFit) and got.reason == "InsufficientGPUs", case
                continue
            if mode == SAME_BLOCK and want > 0:
                assert isinstance(got, NoFit) and got.reason == "WaitingForBlock", (case, want)
                same_block_waits += 1
                continue
            check_valid(layout, gpus, free, blocks, got)
            assert len(got.crossings) == want, (case, mode, got)
            crossings_seen += want > 0
        checked += 1
    # The random cases reach every verdict, not only the easy one.
    assert same_block_waits > 10 and crossings_seen > 10


def test_a_four_stage_job_on_two_node_blocks_keeps_neighbouring_stages_together():
    # 4 pods of 8 GPUs, one stage each; blocks of 2 nodes: stages 0-1 and 2-3 pair up.
    free, blocks = cluster([2, 2, 2])
    got = placement.plan(Layout(4, 8, pipeline=4), 8, free, blocks)
    assert isinstance(got, Placement)
    stage = [blocks[n] for n in got.nodes]
    assert stage[0] == stage[1] and stage[2] == stage[3] and stage[1] != stage[2]
    assert got.crossings == (1,)


def test_the_best_fit_a_scheduler_would_make_crosses_more():
    # Half-busy nodes everywhere but one whole block: best-fit scatters, placement does not.
    free, blocks = cluster([2, 2, 2], taken={"b0n0": 4, "b0n1": 4, "b1n0": 4})
    layout = Layout(4, 4, pipeline=4)
    topo = placement.plan(layout, 4, free, blocks)
    anywhere = placement.plan(Layout(4, 4, pipeline=4, mode=ANY), 4, free, blocks)
    assert isinstance(topo, Placement) and isinstance(anywhere, Placement)
    assert len(topo.crossings) == 0
    assert len(anywhere.crossings) > 0


def test_dp_pipelines_may_sit_in_different_blocks():
    # dp=2 x pp=2, one rank per pod: pods (s0,d0) (s0,d1) (s1,d0) (s1,d1). Two blocks of one
    # 2-GPU node each: pipeline d0 in one block, d1 in the other, no boundary crosses.
    free, blocks = cluster([1, 1], gpus=2)
    got = placement.plan(Layout(4, 1, pipeline=2), 1, free, blocks)
    assert isinstance(got, Placement) and got.crossings == ()
    assert got.nodes[0] == got.nodes[2] and got.nodes[1] == got.nodes[3]


def test_a_tensor_group_wider_than_a_pod_keeps_its_pods_on_one_node():
    # 4 ranks a pod, tensor groups of 8: pods pair up on a node.
    free, blocks = cluster([2, 2])
    got = placement.plan(Layout(4, 4, pipeline=2, tensor=8), 4, free, blocks)
    assert isinstance(got, Placement)
    assert got.nodes[0] == got.nodes[1] and got.nodes[2] == got.nodes[3]
    # No node has room for a whole unit: it does not fit, though 16 GPUs are free.
    free = {n: 3 for n in free}
    got = placement.plan(Layout(2, 4, pipeline=1, tensor=8), 2, free, blocks)
    assert isinstance(got, NoFit) and got.reason == "InsufficientGPUs"


def test_same_block_says_what_it_needs_and_what_the_best_block_has():
    free, blocks = cluster([2, 2, 2], taken={"b0n1": 8, "b1n1": 8})
    got = placement.plan(Layout(4, 8, pipeline=4, mode=SAME_BLOCK), 8, free, blocks)
    assert isinstance(got, NoFit) and got.reason == "WaitingForBlock"
    assert "needs 4 replicas of 8 nvidia.com/gpu in one block" in got.message
    assert "the best block, b2, has room for 2" in got.message
    # It holds what the roomiest block has free, toward its 4 replicas there.
    assert got.hold == {"b2n0": 8, "b2n1": 8}


def test_a_restart_keeps_its_nodes_while_they_are_as_good():
    free, blocks = cluster([2, 2, 2])
    layout = Layout(2, 8, pipeline=2)
    got = placement.plan(layout, 8, free, blocks, prefer=("b2n1", "b2n0"))
    assert isinstance(got, Placement) and got.nodes == ("b2n1", "b2n0")
    # Split across blocks, the old nodes cost a crossing that a block with room avoids.
    got = placement.plan(layout, 8, free, blocks, prefer=("b0n0", "b1n0"))
    assert isinstance(got, Placement) and got.crossings == ()
    # One old node is gone: the new pair stays in a block, and takes the survivor's when it can.
    free.pop("b2n1")
    got = placement.plan(layout, 8, free, blocks, prefer=("b2n1", "b2n0"))
    assert isinstance(got, Placement) and got.crossings == ()


@pytest.mark.parametrize(
    ("replicas", "nproc", "pp", "tp", "pod", "want"),
    [
        (4, 8, 4, 1, 1, {"global_ranks": "8-15", "stages": "1", "data_parallel": "0-7",
                         "tensor_groups": "8-15"}),
        (2, 8, 4, 2, 1, {"global_ranks": "8-15", "stages": "2-3", "data_parallel": "0-1",
                         "tensor_groups": "4-7"}),
        (4, 2, 2, 1, 1, {"global_ranks": "2-3", "stages": "0", "data_parallel": "2-3",
                         "tensor_groups": "2-3"}),
    ],
)  # fmt: skip
def test_a_pod_is_described_by_the_runtime_rank_layout(replicas, nproc, pp, tp, pod, want):
    assert placement.describe_pod(Layout(replicas, nproc, pp, tp), pod) == want


def test_layouts_the_runtime_cannot_run_are_refused():
    with pytest.raises(ValueError, match="not divisible"):
        Layout(3, 1, pipeline=2)
    with pytest.raises(ValueError, match="mode"):
        Layout(2, 1, pipeline=2, mode="Nearby")


# --- through the reconcile: admission, pods pinned, status -------------------------------


def blocked_cluster(per_block=2, blocks=3, busy=()):
    return [
        make_node(f"g{b}{j}", **{"topology.distml.io/block": f"blk-{b}",
                                 "topology.kubernetes.io/zone": f"zone-{b % 2}"})
        for b in range(blocks)
        for j in range(per_block)
    ]  # fmt: skip


def pipeline_job(replicas=4, pp=4, mode=None, **status):
    job = make_job().replicas(replicas).spec(parallelism={"pipeline": pp})
    if mode:
        job = job.spec(placement={"pipelineStages": mode})
    return job.status(**status).obj()


def busy(node, gpus=8, name="other"):
    return make_pod(name, 0, gpus=gpus).on(node).running().obj()


def reconcile(job, cluster, others=(), pods=()):
    world = World(job=job, pods=list(pods), nodes=cluster, cluster_pods=[*pods, *others],
                  now=at(0))  # fmt: skip
    return plan_reconcile(world, Settings())


def pinned(pod):
    return admission.pinned_node(pod)


def test_a_pipeline_job_is_admitted_with_its_stages_in_blocks_and_says_so():
    # g00 and g11 are half busy: best-fit would start there and split the stages.
    cluster = blocked_cluster()
    others = [busy("g00", 4, "a"), busy("g11", 4, "b")]
    p = reconcile(pipeline_job(replicas=2, pp=2), cluster, others)
    pods = sorted((o for o in p.create if o["kind"] == "Pod"), key=lambda o: o["metadata"]["name"])
    nodes = [pinned(o) for o in pods]
    assert nodes[0][:2] == nodes[1][:2] == "g2"  # both in the one whole block
    assert "0 crossing" in p.status["message"]
    placed = p.status["placement"]
    assert placed["crossBlockBoundaries"] == 0 and placed["blocks"] == 1
    assert placed["pipelineStages"] == "PreferSameBlock"
    assert [r["stages"] for r in p.status["ranks"]] == []  # no pod exists yet to describe
    # Once the pods exist, status describes what each holds and where.
    adm = p.status["admission"]
    job = pipeline_job(replicas=2, pp=2, phase="Creating", admission=adm,
                       admittedTime=adm["time"])  # fmt: skip
    mine = [make_pod("llm", r).on(adm["nodes"][r]).obj() for r in range(2)]
    p = reconcile(job, cluster, others, mine)
    ranks = p.status["ranks"]
    assert [(r["stages"], r["globalRanks"], r["block"]) for r in ranks] == [
        ("0", "0-7", "blk-2"), ("1", "8-15", "blk-2")
    ]  # fmt: skip
    assert ranks[0]["zone"] == "zone-0"


def test_a_same_block_job_that_does_not_fit_waits_with_the_reason_and_no_pod():
    cluster = blocked_cluster()
    others = [busy("g01"), busy("g11"), busy("g21")]  # one free node in each block
    p = reconcile(pipeline_job(mode="SameBlock", replicas=2, pp=2), cluster, others)
    assert p.create == []
    assert p.status["phase"] == "Queued" and p.status["reason"] == "WaitingForBlock"
    assert (
        "needs 2 replicas of 8 nvidia.com/gpu in one block (topology.distml.io/block)"
        in (p.status["message"])
    )
    assert "has room for 1" in p.status["message"]
    assert [(e.type, e.reason) for e in p.events] == [("Normal", "WaitingForBlock")]
    # PreferSameBlock runs it now, across blocks, and says how many boundaries cross.
    p = reconcile(pipeline_job(replicas=2, pp=2), cluster, others)
    assert p.status["phase"] == "Creating"
    assert p.status["placement"]["crossing"] == ["0->1"]


def test_a_same_block_job_larger_than_any_block_is_told_it_never_fits():
    p = reconcile(pipeline_job(mode="SameBlock", replicas=4, pp=4), blocked_cluster())
    assert (
        p.status["reason"] == "NoBlockFits" and "no block can ever run it" in (p.status["message"])
    )
    assert [(e.type, e.reason) for e in p.events] == [("Warning", "NoBlockFits")]


def test_a_waiting_same_block_job_holds_its_block_from_a_smaller_job_behind_it():
    cluster = blocked_cluster()
    others = [busy("g01"), busy("g11")]  # only blk-2 is whole
    big = admission.Gang(
        "big", "team", "big", 4, 8, created="2026-01-01T12:00:00Z",
        nodes=rendering.node_filter({}, 8),
        layout=Layout(4, 8, pipeline=4, mode=SAME_BLOCK),
    )  # fmt: skip
    small = admission.Gang("small", "team", "small", 1, 8, created="2026-01-01T12:00:01Z",
                           nodes=big.nodes)  # fmt: skip
    v = admission.plan_queue([big, small], cluster, others, at(0))
    assert v["big"].reason == "NoBlockFits"
    pair = Layout(2, 8, pipeline=2, mode=SAME_BLOCK)
    big2 = admission.Gang(**{**big.__dict__, "replicas": 2, "layout": pair})
    v = admission.plan_queue([big2, small], cluster, [*others, busy("g20", 8, "c")], at(0))
    assert v["big"].reason == "WaitingForBlock"
    # It holds the free half of one block (the first of equals), so that a node freeing there
    # completes it; the small one starts elsewhere.
    assert v["small"].admitted and v["small"].nodes[0] in ("g10", "g21")


def test_sixteen_stages_on_sixty_four_nodes_cut_only_where_blocks_end():
    # 16 blocks of 4 nodes, 64 pods of 8 GPUs: 16 stages x 4 data-parallel pipelines. A block
    # holds 4 stages of one pipeline, so each pipeline crosses 3 times, all at the same stage
    # boundaries at best: 3 crossings, however the 20,000-step search budget is spent.
    free, blocks = cluster([4] * 16)
    got = placement.plan(Layout(64, 8, pipeline=16), 8, free, blocks)
    assert isinstance(got, Placement) and len(got.crossings) == 3
    check_valid(Layout(64, 8, pipeline=16), 8, free, blocks, got)
    # A seventeenth block with only half its nodes free: it can take no 4-stage segment, so
    # the optimum is still 3, and the planner must leave that block out.
    free, blocks = cluster([4] * 17, taken={"b16n0": 8, "b16n1": 8})
    got = placement.plan(Layout(64, 8, pipeline=16), 8, free, blocks)
    assert isinstance(got, Placement) and len(got.crossings) == 3
    assert not {"b16n2", "b16n3"} & set(got.nodes)
