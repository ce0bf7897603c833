"""The GPU ledger and the queue: no GPU promised twice, an order users can predict, and a head of
the queue that a stream of small gangs cannot starve."""

from __future__ import annotations

import random

import pytest

from distml import admission, rendering
from distml.admission import Gang, build_ledger, plan_queue
from distml.nodefit import NodeFilter

from .builders import at, make_node, make_pod, nodes


def gang(name, replicas=1, gpus=8, ns="team", created=0, node_selector=(), **kw) -> Gang:
    """A gang whose template has `node_selector` and the GPU toleration rendering adds."""
    template = {"nodeSelector": dict(node_selector), "tolerations": [rendering.GPU_TOLERATION]}
    return Gang(
        uid=f"{ns}-{name}",
        namespace=ns,
        name=name,
        replicas=replicas,
        gpus_per_replica=gpus,
        created=f"2026-01-01T12:00:{created:02d}Z",
        nodes=NodeFilter.of(template),
        **kw,
    )


def admitted(g: Gang, placement) -> Gang:
    return Gang(**{**g.__dict__, "admitted": tuple(placement)})


def verdict(gangs, cluster=None, pods=(), now=0.0, backfill=300.0):
    return plan_queue(list(gangs), nodes(4) if cluster is None else cluster, list(pods), at(now),
                      backfill)  # fmt: skip


@pytest.mark.parametrize(
    ("replicas", "gpus", "busy", "ok", "reason"),
    [
        (4, 8, [], True, "Admitted"),
        (5, 8, [], False, "InsufficientGPUs"),
        (4, 8, [("n0", 1)], False, "InsufficientGPUs"),  # 7 free on n0 cannot hold 8
        (8, 4, [], True, "Admitted"),
        (7, 4, [("n0", 4)], True, "Admitted"),
        (1, 16, [], False, "NoNodeFits"),
        (3, 0, [], True, "Admitted"),
    ],
)
def test_admission_counts_whole_node_fits(replicas, gpus, busy, ok, reason):
    pods = [make_pod("other", i, gpus=g).on(n).running().obj() for i, (n, g) in enumerate(busy)]
    v = verdict([gang("llm", replicas, gpus)], pods=pods)["team-llm"]
    assert (v.admitted, v.reason) == (ok, reason)


def test_refusal_says_its_place_what_it_needs_and_what_is_free():
    pods = [make_pod("other", 0, gpus=6).on("n0").running().obj()]
    v = verdict([gang("llm", 2, 8)], cluster=nodes(2), pods=pods)["team-llm"]
    assert v.message == (
        "1st in the queue: waiting for 2 x 8 nvidia.com/gpu on whole nodes: room for 1 now; "
        "free GPUs: n0=2, n1=8"
    )
    assert v.position == 1


def test_an_admission_is_a_placement_that_packs_nodes_before_opening_new_ones():
    v = verdict([gang("llm", 3, 4)], cluster=nodes(2))["team-llm"]
    assert v.admitted and sorted(v.nodes) == ["n0", "n0", "n1"]


def test_same_name_in_two_namespaces_is_two_jobs():
    # team-b's llm holds 3 nodes; team-a's llm must not mistake those pods for its own.
    theirs = [
        make_pod("llm", r).on(f"n{r}").owned_by("team-b-llm").running().obj() for r in range(3)
    ]
    for p in theirs:
        p["metadata"]["namespace"] = "team-b"
    v = verdict([gang("llm", 2, 8, ns="team-a")], pods=theirs)["team-a-llm"]
    assert not v.admitted and "room for 1 now" in v.message


def test_an_admitted_gang_whose_pods_are_not_seen_yet_keeps_its_gpus_reserved():
    first = admitted(gang("a", 3), ["n0", "n1", "n2"])
    v = verdict([first, gang("b", 2)])["team-b"]
    assert not v.admitted and "room for 1 now" in v.message
    # Its pods appear (one bound, one pinned but not yet scheduled): still counted once each.
    pods = [
        make_pod("a", 0).on("n0").owned_by("team-a").obj(),
        make_pod("a", 1).unscheduled().owned_by("team-a").obj(),
    ]
    ledger = build_ledger(nodes(4), pods, [first])
    assert sum(ledger.free.values()) == 8


def test_pods_of_a_job_count_by_owner_uid_not_by_name():
    # A pod named like the job's but owned by another incarnation is still someone's pod.
    ghost = make_pod("a", 0).on("n0").owned_by("old-uid").running().obj()
    ledger = build_ledger(nodes(1), [ghost], [admitted(gang("a"), ["n0"])])
    assert ledger.free == {"n0": -8} and ledger.overbooked == 0


def test_a_pinned_pod_not_yet_scheduled_counts_on_its_node():
    pod = make_pod("x", 0, gpus=4).unscheduled().obj()
    pod["spec"]["affinity"] = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n3"]}]}
                ]
            }
        }
    }
    assert build_ledger(nodes(4), [pod], []).free == {"n0": 8, "n1": 8, "n2": 8, "n3": 4}


def test_a_pod_left_on_a_deleted_node_holds_nothing_on_the_nodes_that_remain():
    """Its node is gone (it waits, Terminating, for the pod garbage collector): it holds GPUs
    nowhere the ledger gives, and a new gang fits on the nodes there are (CI: a job waited
    InsufficientGPUs for 30 s behind the 32 pods of a deleted pool)."""
    orphans = [make_pod("old", r, gpus=1).on("gone").running().deleting().obj() for r in range(8)]
    assert build_ledger(nodes(1), orphans, []).free == {"n0": 8}
    assert verdict([gang("new", 1, 8)], cluster=nodes(1), pods=orphans)["team-new"].admitted


def test_not_ready_tainted_and_unselected_nodes_offer_nothing():
    cluster = [make_node("a", ready=False), make_node("b", zone="x"), make_node("c", zone="y")]
    cluster[1]["spec"]["taints"].append({"key": "maintenance", "effect": "NoSchedule"})
    g = gang("llm", 1, 8, node_selector=(("zone", "y"),))
    assert verdict([g], cluster=cluster)["team-llm"].nodes == ("c",)
    assert not verdict([gang("z", 2)], cluster=cluster)["team-z"].admitted


def test_queue_order_is_restarting_then_priority_then_creation_time():
    gangs = [
        gang("late", 4, created=3),
        gang("early", 4, created=1),
        gang("urgent", 4, created=5, priority=10),
        gang("restarting", 4, created=9, restarting=True),
    ]
    v = verdict(gangs)
    assert {n: v[f"team-{n}"].position for n in ("restarting", "urgent", "early", "late")} == {
        "restarting": 1,
        "urgent": 2,
        "early": 3,
        "late": 4,
    }
    assert [n for n in ("restarting", "urgent", "early", "late") if v[f"team-{n}"].admitted] == [
        "restarting"
    ]


def test_the_head_holds_what_it_can_use_and_smaller_gangs_backfill_only_the_rest():
    # 3 nodes busy with 4 GPUs each: the 2-node head can use none of them yet; it holds n3.
    busy = [make_pod("busy", i, gpus=4).on(f"n{i}").running().obj() for i in range(3)]
    gangs = [gang("head", 2, 8, created=0), gang("whole", 1, 8, created=1),
             gang("half", 1, 4, created=2)]  # fmt: skip
    v = verdict(gangs, pods=busy, now=10)
    assert not v["team-head"].admitted and "room for 1 now" in v["team-head"].message
    assert not v["team-whole"].admitted  # n3 is the head's
    assert v["team-half"].admitted and v["team-half"].nodes[0] in ("n0", "n1", "n2")


def test_after_the_backfill_bound_nothing_that_could_use_the_heads_nodes_starts_before_it():
    busy = [make_pod("busy", i, gpus=4).on(f"n{i}").running().obj() for i in range(3)]
    pool_a = (("pool", "a"),)
    head = gang("head", 2, 8, created=0, waiting_since=at(0), node_selector=pool_a)
    cluster = [make_node(f"n{i}", pool="a") for i in range(4)] + [make_node("m0", pool="b")]
    elsewhere = gang("elsewhere", 1, 8, created=2, node_selector=(("pool", "b"),))
    half = gang("half", 1, 4, created=1, node_selector=pool_a)
    v = verdict([head, half, elsewhere], cluster=cluster, pods=busy, now=301, backfill=300)
    assert not v["team-half"].admitted and v["team-half"].reason == "WaitingInQueue"
    assert "team/head is ahead" in v["team-half"].message
    assert v["team-elsewhere"].admitted  # its nodes are not the head's


def test_a_stream_of_small_gangs_never_starves_a_large_head():
    """Four nodes run one-node gangs that finish one at a time while new ones keep arriving;
    a four-node gang waits at the head. Every freed node goes to the head."""
    running = {f"n{i}": f"small-{i}" for i in range(4)}
    head = gang("big", 4, 8, created=0, waiting_since=at(0))
    arrivals = 10
    for step in range(4):
        pods = [
            make_pod(name, 0).on(node).owned_by(f"team-{name}").running().obj()
            for node, name in running.items()
        ]
        newcomers = [gang(f"new-{step}-{k}", 1, 8, created=arrivals + k) for k in range(3)]
        arrivals += 3
        v = verdict([head, *newcomers], pods=pods, now=step)
        assert not any(v[g.uid].admitted for g in newcomers)
        assert v[head.uid].admitted == (step == 4)
        running.pop(f"n{step}")  # one small gang finishes
    pods = []
    assert verdict([head, gang("tail", 1, 8, created=99)], pods=pods, now=5)[head.uid].admitted


def test_a_burst_never_promises_more_gpus_than_there_are():
    """Gangs decided one after another, each decision assumed at once (as the operator does):
    at no point do bound pods plus reservations exceed any node's GPUs."""
    rng = random.Random(7)
    cluster = nodes(8)
    gangs = [gang(f"g{i}", rng.choice([1, 2, 4]), rng.choice([2, 4, 8]), created=i % 60)
             for i in range(20)]  # fmt: skip
    admitted_gangs: dict[str, Gang] = {}
    for g in rng.sample(gangs, len(gangs)):  # reconciled in any order
        world = [admitted_gangs.get(x.uid, x) for x in gangs]
        v = plan_queue(world, cluster, [], at(0))
        if v[g.uid].admitted:
            admitted_gangs[g.uid] = admitted(g, v[g.uid].nodes)
        ledger = build_ledger(cluster, [], list(admitted_gangs.values()))
        assert min(ledger.free.values()) >= 0 and ledger.overbooked == 0
    total = sum(g.replicas * g.gpus_per_replica for g in admitted_gangs.values())
    assert 0 < total <= 64 and len(admitted_gangs) < len(gangs)


def test_ordinals():
    assert [admission._ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 101)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st",
    ]  # fmt: skip


def test_the_admission_places_ranks_only_where_the_templates_affinity_allows():
    """The scheduler would never bind these pods to n1 or n3: the admission must not place them
    there, however free they are, and waits when the allowed nodes are full."""
    template = {
        "tolerations": [rendering.GPU_TOLERATION],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{
                "key": "kubernetes.io/hostname", "operator": "In", "values": ["n0", "n2"]}]}]}}},
    }  # fmt: skip
    cluster = [make_node(f"n{i}", **{"kubernetes.io/hostname": f"n{i}"}) for i in range(4)]
    g = Gang("u", "team", "pinned", 2, 8, nodes=NodeFilter.of(template))
    assert sorted(verdict([g], cluster=cluster)["u"].nodes) == ["n0", "n2"]
    busy = [make_pod("other", 0).on("n2").running().obj()]
    v = verdict([g], cluster=cluster, pods=busy)["u"]
    assert not v.admitted and "room for 1 now" in v.message and "n1" not in v.message


def test_gangs_of_one_queue_with_different_node_selectors_each_get_their_own_nodes():
    """One ledger answers many gangs' node filters: a gang after one with another selector (and
    one with the same selector after it) still goes only where its own selector allows."""
    cluster = [make_node(f"n{i}", pool="a" if i < 2 else "b") for i in range(4)]
    gangs = [
        gang("a1", 1, 8, created=0, node_selector=(("pool", "a"),)),
        gang("b1", 2, 8, created=1, node_selector=(("pool", "b"),)),
        gang("a2", 1, 8, created=2, node_selector=(("pool", "a"),)),
        gang("b2", 1, 8, created=3, node_selector=(("pool", "b"),)),
    ]
    v = verdict(gangs, cluster=cluster)
    assert sorted(v["team-a1"].nodes + v["team-a2"].nodes) == ["n0", "n1"]
    assert sorted(v["team-b1"].nodes) == ["n2", "n3"]
    assert not v["team-b2"].admitted and "room for 0 now" in v["team-b2"].message


def test_a_template_no_node_matches_says_so():
    g = gang("typo", 1, 8, node_selector=(("pool", "gpu-a100-typo"),))
    v = verdict([g])["team-typo"]
    assert v.reason == "NoMatchingNode" and "nodeSelector" in v.message


def test_nodes_that_match_but_are_not_ready_are_named_not_called_a_mismatch():
    """The node lifecycle controller's not-ready and unreachable taints say how a node is now,
    not where the pods may go: the gang waits for room and names the nodes it waits on."""
    cluster = [make_node(f"n{i}", ready=False) for i in range(2)]
    for n in cluster:
        n["spec"]["taints"].append({"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"})
    v = verdict([gang("g", 1, 8)], cluster=cluster)["team-g"]
    assert v.reason == "InsufficientGPUs" and not v.admitted
    assert "room for 0 now; free GPUs: none; not ready or cordoned: n0, n1" in v.message
    # A taint the template does not tolerate still rules a node out, whatever its state.
    cluster[0]["spec"]["taints"].append({"key": "dedicated", "effect": "NoSchedule"})
    cluster[1]["spec"]["taints"].append({"key": "dedicated", "effect": "NoSchedule"})
    assert verdict([gang("g", 1, 8)], cluster=cluster)["team-g"].reason == "NoMatchingNode"


def test_a_restarting_gang_keeps_its_previous_nodes_while_they_have_room():
    # Best fit alone would fill the half-busy n3 first; the gang's ranks ran on n1 and n2.
    pods = [make_pod("other", 0, gpus=4).on("n3").running().obj()]
    g = gang("llm", 2, 4, restarting=True, prefer=("n2", "n1"))
    v = verdict([g], pods=pods)["team-llm"]
    assert v.admitted and v.nodes == ("n2", "n1")
    # n2 is gone: rank 1 stays on n1, rank 0 goes where best fit says (n1's other half).
    v = verdict([g], cluster=[make_node(n) for n in ("n0", "n1", "n3")], pods=pods)["team-llm"]
    assert v.admitted and v.nodes == ("n1", "n1")
