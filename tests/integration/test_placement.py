"""Topology-aware placement on the real control plane, with the operator as a real process: a
pipeline job's stages land in network blocks (the scheduler binds the pods where the plan pinned
them), the plan is in status, and a SameBlock job that cannot fit waits with the reason, holding
no pod, until its block frees."""

from __future__ import annotations

import pytest

from . import jobs
from .helpers import gpu_pod, wait_for

pytestmark = pytest.mark.usefixtures("operator")
BLOCK = "topology.distml.io/block"


def _blocks(core, names: list[str]) -> dict[str, str]:
    return {n: core.read_node(n).metadata.labels[BLOCK] for n in names}


def _busy(core, namespace: str, node: str, gpus: int, name: str) -> None:
    body = gpu_pod(name, gpus)
    body["spec"]["nodeName"] = node
    core.create_namespaced_pod(namespace, body)


def test_a_four_stage_job_on_two_node_blocks_lands_with_neighbouring_stages_together(
    core, custom, namespace, node_pool
):
    sel, names = node_pool(6, nodes_per_block=2)  # 3 blocks of 2 nodes, 8 GPUs each
    # Half of the first node is taken: a pod-by-pod best fit would start the pipeline on the
    # next free nodes in name order and cross blocks twice.
    _busy(core, namespace, names[0], 4, "other")
    job = jobs.training_job("pp4", 4, 8, sel, parallelism={"pipeline": 4})
    jobs.create(custom, namespace, job)
    st = jobs.wait_phase(custom, namespace, "pp4", "Running")
    pods = {int(p.metadata.labels["distml.io/rank"]): p for p in jobs.live_pods(core, namespace,
                                                                               "pp4")}  # fmt: skip
    blocks = _blocks(core, names)
    bound = [pods[r].spec.node_name for r in range(4)]
    assert bound == st["admission"]["nodes"]  # the scheduler bound them where the plan chose
    stage_blocks = [blocks[n] for n in bound]
    # Stages 0-1 share a block, 2-3 another: one boundary crosses, the fewest 4 x 8 GPUs allow.
    assert stage_blocks[0] == stage_blocks[1] and stage_blocks[2] == stage_blocks[3]
    assert stage_blocks[1] != stage_blocks[2]
    placed = st["placement"]
    assert placed["crossBlockBoundaries"] == 1 and placed["crossing"] == ["1->2"]
    assert placed["blocks"] == 2 and placed["pipelineStages"] == "PreferSameBlock"
    ranks = sorted(st["ranks"], key=lambda r: r["rank"])
    assert [(r["stages"], r["globalRanks"], r["node"], r["block"]) for r in ranks] == [
        (str(r), f"{8 * r}-{8 * r + 7}", bound[r], stage_blocks[r]) for r in range(4)
    ]
    # The admission's Event says how the stages lie.
    jobs.reasons_once(core, namespace, "pp4", "Admitted")
    said = [e.message for e in jobs.events(core, namespace, "pp4") if e.reason == "Admitted"]
    assert any("4 stages in 2 blocks, 1 crossing" in m for m in said), said


def test_a_same_block_job_waits_with_the_reason_and_starts_when_its_block_frees(
    core, custom, namespace, node_pool
):
    sel, names = node_pool(4, nodes_per_block=2)  # 2 blocks of 2 nodes
    # One node of each block is busy: 16 GPUs are free, but not 16 in one block.
    _busy(core, namespace, names[1], 8, "busy-a")
    _busy(core, namespace, names[3], 8, "busy-b")
    wait_for("the busy pods bound", lambda: all(
        core.read_namespaced_pod(n, namespace).spec.node_name for n in ("busy-a", "busy-b")
    ))  # fmt: skip
    job = jobs.training_job(
        "pp2", 2, 8, sel, parallelism={"pipeline": 2}, placement={"pipelineStages": "SameBlock"}
    )
    jobs.create(custom, namespace, job)
    st = wait_for(
        "pp2 Queued waiting for a block",
        lambda: (
            (s := jobs.status(custom, namespace, "pp2")).get("reason") == "WaitingForBlock" and s
        ),
    )
    assert st["phase"] == "Queued"
    assert "needs 2 replicas of 8 nvidia.com/gpu in one block" in st["message"]
    assert "has room for 1" in st["message"]
    jobs.reasons_once(core, namespace, "pp2", "WaitingForBlock")
    assert jobs.pods(core, namespace, "pp2") == []
    # The second block's busy node frees: the job starts there, both stages in one block.
    core.delete_namespaced_pod("busy-b", namespace, grace_period_seconds=0)
    st = jobs.wait_phase(custom, namespace, "pp2", "Running", timeout=90)
    assert sorted(st["admission"]["nodes"]) == sorted(names[2:4])
    assert st["placement"]["crossBlockBoundaries"] == 0


def test_a_same_block_job_larger_than_every_block_is_told_it_never_fits(
    core, custom, namespace, node_pool
):
    sel, _ = node_pool(4, nodes_per_block=2)
    job = jobs.training_job(
        "pp4", 4, 8, sel, parallelism={"pipeline": 4}, placement={"pipelineStages": "SameBlock"}
    )
    jobs.create(custom, namespace, job)
    st = wait_for(
        "pp4 told it never fits",
        lambda: (s := jobs.status(custom, namespace, "pp4")).get("reason") == "NoBlockFits" and s,
    )
    assert "no block can ever run it" in st["message"]
    jobs.reasons_once(core, namespace, "pp4", "NoBlockFits")
    said = [e for e in jobs.events(core, namespace, "pp4") if e.reason == "NoBlockFits"]
    assert [e.type for e in said] == ["Warning"]
    assert jobs.pods(core, namespace, "pp4") == []
