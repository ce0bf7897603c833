"""Pipeline-split ServingJob replicas, decided: the split (balanced by multiply-adds, even, or
explicit), the stage pods a replica renders to, their gang admission in one block and across
zones, readiness that needs the whole group, and a lost stage replacing the whole group."""

from __future__ import annotations

import itertools

import pytest
import yaml
from pydantic import ValidationError

from distml import labels, placement
from distml.api.serving import Pipeline, ServingJobSpec
from distml.reconcile import Settings
from distml.servingjob import rendering, split
from distml.servingjob.planner import plan_reconcile

from .builders import make_node
from .test_servingjob import SETTINGS, Sim, available, revisions, serving_job

BLOCK, ZONE = placement.Keys().block, placement.Keys().zone


def pipeline_job(replicas: int = 1, stages: int = 2, gpus: int = 2, **pipeline: object) -> dict:
    return serving_job(replicas, gpus, model={"widths": [256, 512, 128]},
                       pipeline={"stages": stages, **pipeline})  # fmt: skip


def _stage_pods(sim: Sim) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for name, pod in sorted(sim.pods.items()):
        groups.setdefault(pod["metadata"]["labels"][labels.REPLICA], []).append(name)
    return groups


# --- the split -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "widths", [[128, 128], [512, 2048, 256, 1024], [100] * 7, [1, 1, 1, 1000], [4096, 8, 4096]]
)
def test_a_balanced_split_has_the_smallest_slowest_stage_of_any_split(widths):
    costs = split.layer_costs(widths)
    for k in range(2, len(costs) + 1):
        got = split.balanced(costs, k)
        assert [a for a, _ in got] == sorted({a for a, _ in got}) and got[0][0] == 0
        assert got[-1][1] == len(costs) and all(b > a for a, b in got)
        best = min(
            max(sum(costs[a:b]) for a, b in itertools.pairwise((0, *cuts, len(costs))))
            for cuts in itertools.combinations(range(1, len(costs)), k - 1)
        )
        assert max(sum(costs[a:b]) for a, b in got) == best


@pytest.mark.parametrize(
    ("widths", "limit"),
    [([512, 2048, 256, 1024], 9_000_000), ([100] * 7, 130_000), ([4096, 8, 4096], 1_200_000)],
)
def test_a_balanced_split_within_gpu_memory_is_the_best_that_fits(widths, limit):
    costs, rows = split.layer_costs(widths), 32

    def fits(a: int, b: int) -> bool:
        return split.stage_bytes(widths, a, b, rows) <= limit

    for k in range(2, len(costs) + 1):
        splits = [
            list(itertools.pairwise((0, *cuts, len(costs))))
            for cuts in itertools.combinations(range(1, len(costs)), k - 1)
        ]
        fitting = [r for r in splits if all(fits(a, b) for a, b in r)]
        got = split.balanced(costs, k, fits)
        if not fitting:
            assert got is None
            continue
        assert got is not None and all(fits(a, b) for a, b in got)
        best = min(max(sum(costs[a:b]) for a, b in r) for r in fitting)
        assert max(sum(costs[a:b]) for a, b in got) == best


def test_a_split_that_does_not_fit_the_gpu_is_refused_naming_the_stage():
    widths = [512, 2048, 256, 1024]
    roomy = Pipeline(stages=2, gpuMemory="1Gi")
    assert split.describe(widths, roomy, 32).per_stage[1].memory_bytes > 0
    with pytest.raises(split.SplitError, match=r"stage 0 .* needs .* bytes .* 4 stages fits"):
        split.split(widths, Pipeline(stages=4, gpuMemory="2Mi"), 32)
    with pytest.raises(split.SplitError, match="cut it otherwise"):
        split.split(widths, Pipeline(stages=2, boundaries=[1], gpuMemory="4Mi"), 32)
    assert split.parse_bytes("1.5Ki") == 1536 and split.parse_bytes("2G") == 2 * 10**9
    job = pipeline_job(stages=2, gpuMemory="100Ki")
    plan = plan_reconcile(Sim(job, [make_node("n0", 8)]).world(), SETTINGS)
    assert (
        plan.status["reason"] == "InvalidPipeline"
        and "gpuMemory is 100Ki" in plan.status["message"]
    )
    assert not [o for o in plan.create if o["kind"] == "Pod"]


def test_the_split_is_described_for_status_and_explicit_cuts_are_kept():
    got = split.describe([512, 2048, 256, 1024], Pipeline(stages=2))
    assert got.split == "Balanced" and got.layers == 5 and got.text == "0-1 | 2-4"
    assert [s.share for s in got.per_stage] == [0.5758, 0.4242]
    even = split.describe([512, 2048, 256, 1024], Pipeline(stages=2, split="Even"))
    assert even.text == "0-2 | 3-4" and even.slowest_share > got.slowest_share
    mine = split.describe([512, 2048, 256, 1024], Pipeline(stages=3, boundaries=[1, 4]))
    assert mine.split == "Explicit" and mine.text == "0 | 1-3 | 4"
    with pytest.raises(split.SplitError, match="every stage needs"):
        split.split([8, 8], Pipeline(stages=4))


def test_the_spec_refuses_a_pipeline_of_one_stage():
    with pytest.raises(ValidationError):
        ServingJobSpec.model_validate({"pipeline": {"stages": 1}})


# --- rendering -----------------------------------------------------------------------------


def test_a_replica_renders_to_stage_pods_of_which_only_stage_0_serves():
    job = pipeline_job(gpus=4, stages=2, microbatches=6)
    spec = ServingJobSpec.model_validate(job["spec"])
    meta = job["metadata"]
    rev = rendering.revision(spec)
    pods = [rendering.render_pod(meta, spec, rev, "sj-r-0", 3, s, f"n{s}", "img", s, "0:2,2:4")
            for s in range(2)]  # fmt: skip
    head, later = pods
    assert [p["metadata"]["name"] for p in pods] == ["sj-r-0-s0", "sj-r-0-s1"]
    assert head["metadata"]["labels"][labels.SERVING] == "true"
    assert labels.SERVING not in later["metadata"]["labels"]  # never in the Service
    assert all(p["metadata"]["labels"][labels.REPLICA] == "sj-r-0" for p in pods)
    env = {e["name"]: e.get("value") for e in later["spec"]["containers"][0]["env"]}
    assert env["DISTML_STAGE"] == "1" and env["DISTML_STAGE_RANGES"] == "0:2,2:4"
    assert env["DISTML_STAGE_LISTEN"] == "29601" and env["DISTML_MICROBATCHES"] == "6"
    assert env["DISTML_STAGE_NEXT"] == "sj-r-0-s0.sj-stages.team.svc.cluster.local:29600"
    assert env["DISTML_MODEL_WIDTHS"] == "256,512,128"
    gpus = [p["spec"]["containers"][0]["resources"]["limits"][labels.GPU] for p in pods]
    assert gpus == ["2", "2"]  # gpusPerReplica split over the stages
    assert "readinessProbe" in head["spec"]["containers"][0]
    assert "readinessProbe" not in later["spec"]["containers"][0]
    assert later["spec"]["subdomain"] == "sj-stages" and later["spec"]["hostname"] == "sj-r-0-s1"
    svc = rendering.render_stage_service(meta, spec)
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"]


def test_a_job_without_a_pipeline_keeps_its_revision():
    plain = ServingJobSpec.model_validate({"replicas": 2})
    assert rendering.revision(plain) == rendering.revision(
        ServingJobSpec.model_validate({"replicas": 2, "model": {"widths": [128, 128]}})
    )
    split_one = ServingJobSpec.model_validate({"replicas": 2, "pipeline": {"stages": 2}})
    assert rendering.revision(split_one) != rendering.revision(plain)


# --- the planner -----------------------------------------------------------------------------


def test_replicas_start_as_gangs_of_stage_pods_and_are_ready_only_whole():
    sim = Sim(pipeline_job(replicas=2, stages=3, gpus=3), [make_node(f"n{i}", 4) for i in range(2)])
    first = sim.step()
    kinds = sorted(o["kind"] for o in first.create)
    assert kinds == ["Pod"] * 6 + ["Service", "Service"]
    adm = first.status["admission"]
    assert adm["replicas"] == 2 and adm["gpusPerReplica"] == 1 and len(adm["pods"]) == 6
    assert first.status["pipeline"]["text"] == "0 | 1 | 2-3"
    groups = _stage_pods(sim)
    assert len(groups) == 2 and all(len(g) == 3 for g in groups.values())
    # Each replica's stages on one node where they fit (a node is a block of its own here).
    for names in groups.values():
        assert len({sim.pods[n]["spec"]["nodeName"] for n in names}) == 1
    # Every stage but one Ready: not Ready.
    sim.ready_after = 1e9
    for name in [g[0] for g in groups.values()] + [g[1] for g in groups.values()]:
        ready = [{"type": "Ready", "status": "True"}]
        sim.pods[name]["status"] = {"phase": "Running", "conditions": ready}
    plan = sim.step()
    assert plan.status["readyReplicas"] == 2  # stage 0 says Ready only after its warm-up...
    sim.pods.pop(groups[sorted(groups)[0]][2])  # ...but a stage pod gone breaks the group
    plan = sim.step()
    assert plan.status["readyReplicas"] == 1 and plan.status["replaced"] == 1
    assert sorted(d.name for d in plan.delete) == sorted(groups[sorted(groups)[0]][:2])
    sim.ready_after = 2
    sim.run(available)
    assert len(sim.pods) == 6


def test_one_stage_failing_replaces_the_whole_group_and_says_which_stage():
    sim = Sim(pipeline_job(replicas=2, stages=2, gpus=2), [make_node(f"n{i}", 2) for i in range(3)])
    sim.run(available)
    groups = _stage_pods(sim)
    victim = sorted(groups)[0]
    dead = groups[victim][1]
    sim.pods[dead]["status"] = {
        "phase": "Failed",
        "containerStatuses": [{"name": "server", "state": {"terminated": {"exitCode": 75}}}],
    }
    plan = sim.step()
    assert sorted(d.name for d in plan.delete) == sorted(groups[victim])
    events = [m for r, m in sim.events if r == "ReplicaFailed"]
    assert events and f"stage 1 ({dead}): exit code 75" in events[0]
    assert "(all its stages)" in events[0]
    assert sum(o["kind"] == "Pod" for o in plan.create) == 2  # the new group, at once
    plan = sim.run(available)
    assert victim not in _stage_pods(sim) and len(_stage_pods(sim)) == 2


def test_scaling_down_drains_through_stage_0_then_stops_every_stage():
    job = pipeline_job(replicas=2, stages=2, gpus=2)
    job["spec"]["rollout"] = {"drainSeconds": 3}
    sim = Sim(job, [make_node(f"n{i}", 2) for i in range(4)])
    sim.run(available)
    sim.job["spec"]["replicas"] = 1
    plan = sim.step()
    assert len(plan.patch) == 1 and plan.patch[0].name.endswith("-s0")
    assert plan.patch[0].labels == {labels.SERVING: "false"}
    gone = plan.patch[0].name[: -len("-s0")]
    sim.run(lambda p: gone not in _stage_pods(sim))
    assert len(sim.pods) == 2


def test_a_replica_waits_for_one_block_when_told_to_and_spreads_across_zones():
    nodes = [
        make_node("a0", 1, **{BLOCK: "a", ZONE: "z1"}),
        make_node("a1", 1, **{BLOCK: "a", ZONE: "z1"}),
        make_node("b0", 1, **{BLOCK: "b", ZONE: "z2"}),
        make_node("c0", 1, **{BLOCK: "c", ZONE: "z2"}),
    ]
    job = pipeline_job(replicas=2, stages=2, gpus=2, placement="SameBlock")
    sim = Sim(job, nodes)
    plan = sim.step()
    # One block (a) holds a whole replica; the second would cross blocks b and c: it waits.
    assert plan.status["admission"]["replicas"] == 1
    assert {sim.pods[n]["spec"]["nodeName"] for n in sim.pods} == {"a0", "a1"}
    assert plan.status["reason"] == "ScalingUp" and "in one block" in plan.status["message"]
    # PreferSameBlock takes the crossing rather than wait.
    sim = Sim(pipeline_job(replicas=2, stages=2, gpus=2), nodes)
    sim.step()
    assert len(sim.pods) == 4
    # Zones: with room in both, replicas go one per zone.
    wide = [make_node(f"{z}{i}", 2, **{BLOCK: f"{z}{i}", ZONE: z}) for z in ("x", "y")
            for i in range(2)]  # fmt: skip
    sim = Sim(pipeline_job(replicas=2, stages=2, gpus=2), wide)
    sim.step()
    zones = {
        g: {sim.pods[n]["spec"]["nodeName"][0] for n in names}
        for g, names in _stage_pods(sim).items()
    }
    assert sorted(z for zs in zones.values() for z in zs) == ["x", "y"]


def test_a_split_the_model_cannot_take_is_said_and_nothing_starts():
    job = pipeline_job(stages=3, boundaries=[3, 2])
    plan = plan_reconcile(Sim(job, [make_node("n0", 8)]).world(), SETTINGS)
    assert not [o for o in plan.create if o["kind"] == "Pod"]
    assert plan.status["reason"] == "InvalidPipeline" and plan.status["phase"] == "Degraded"
    assert "must increase" in plan.status["message"]


def test_the_operator_restarting_mid_create_makes_no_second_group():
    sim = Sim(pipeline_job(replicas=1, stages=2, gpus=2), [make_node("n0", 4)])
    first = sim.step()
    # Only stage 1's create reached the API before the operator died.
    head = next(n for n in list(sim.pods) if n.endswith("-s0"))
    del sim.pods[head]
    again = plan_reconcile(sim.world(), Settings(queued_recheck_seconds=5))
    made = [o["metadata"]["name"] for o in again.create if o["kind"] == "Pod"]
    assert made == [head] and not again.delete
    assert again.status["admission"] == first.status["admission"]


def test_the_plan_command_prints_the_split_status_will_show(tmp_path, capsys):
    from distml import plan

    job = pipeline_job(replicas=1, stages=3, gpus=3)
    job["metadata"]["name"] = "big"
    (tmp_path / "sj.yaml").write_text(yaml.safe_dump(job))
    assert plan.main([str(tmp_path / "sj.yaml")]) == 0
    out = capsys.readouterr().out
    shown = plan_reconcile(Sim(job, [make_node("n0", 4)]).world(), SETTINGS).status["pipeline"]
    assert f"4 layers in 3 stages (Balanced): {shown['text']}" in out
    assert "3 pods of 1 nvidia.com/gpu" in out
    job["spec"]["pipeline"]["boundaries"] = [2, 2]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(job))
    assert plan.main([str(tmp_path / "bad.yaml")]) == 2
    assert "must increase" in capsys.readouterr().err


@pytest.mark.parametrize(("before", "after"), [(2, 3), (3, 1), (None, 2)])
def test_a_rollout_that_changes_the_stages_keeps_serving_within_its_bounds(before, after):
    job = pipeline_job(replicas=2, stages=before or 2, gpus=6)
    if before is None:
        del job["spec"]["pipeline"]
    sim = Sim(job, [make_node(f"n{i}", 6) for i in range(4)])
    sim.run(available)
    if after == 1:
        del sim.job["spec"]["pipeline"]
    else:
        sim.job["spec"]["pipeline"] = {"stages": after}
    sim.job["metadata"]["generation"] += 1
    plan = sim.run(lambda p: available(p) and p.status["currentRevision"] == revisions(sim).pop())
    assert plan.status["replaced"] == 0  # no old group taken for a broken one
    assert sim.min_ready_seen == 2  # maxUnavailable 0: two serving throughout
    sizes = sorted(int(p["metadata"]["labels"].get(labels.STAGES, 1)) for p in sim.pods.values())
    assert sizes == [after] * (2 * after)
