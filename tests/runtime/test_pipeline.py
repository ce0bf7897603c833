"""Pipelined and hybrid (dp x pp) training computes the same update as one process training the
whole model: real multi-process torch.distributed on gloo, for both schedules, with and without
frozen layers; and the forward-only pipeline returns the whole model's outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from distml_runtime import distenv
from distml_runtime.pipeline import split_evenly, split_layers
from distml_runtime.pipeline.models import mlp_layers
from distml_runtime.pipeline.planning import RankLayout
from distml_runtime.pipeline.stages import PipelineConfig, PipelineInference, PipelineTrainer
from distml_runtime.train.data import load_digits_tensors

WIDTHS = [96, 32, 64, 48, 80]  # uneven on purpose: 6 layers with different costs
BATCH, LR = 32, 0.1


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_digits_tensors()
    return x[step * BATCH : (step + 1) * BATCH], y[step * BATCH : (step + 1) * BATCH]


def _ranges(pp: int) -> list[tuple[int, int]]:
    # uneven costs make the planner's split differ from the even one, so both code paths run
    return split_layers([float(w) for w in [*WIDTHS, 10]], pp)


def _pipelined(out: Path, pp: int, schedule: str, freeze: int, steps: int) -> None:
    distenv.init("gloo")
    layout = RankLayout(dist.get_world_size(), pp)
    config = PipelineConfig(schedule=schedule, microbatches=4, freeze_layers=freeze, lr=LR)
    trainer = PipelineTrainer(mlp_layers(WIDTHS), _ranges(pp), layout, config, torch.device("cpu"))
    losses = [trainer.step(*_batch(s)) for s in range(steps)]
    torch.save(
        {"params": trainer.parameters_by_layer(_ranges(pp)), "losses": losses},
        out / f"rank{dist.get_rank()}.pt",
    )


def _reference(freeze: int, steps: int) -> tuple[dict[int, list[torch.Tensor]], list[float]]:
    layers = mlp_layers(WIDTHS)
    for i, layer in enumerate(layers):
        layer.requires_grad_(i >= freeze)
    model = nn.Sequential(*layers)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
    losses = []
    for s in range(steps):
        x, y = _batch(s)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return {i: [p.detach() for p in layer.parameters()] for i, layer in enumerate(layers)}, losses


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
@pytest.mark.parametrize("freeze", [0, 3])
@pytest.mark.parametrize(("dp", "pp"), [(1, 2), (2, 2), (1, 4)])
def test_pipelined_step_equals_single_process(tmp_path, dp, pp, schedule, freeze):
    steps = 2
    distenv.spawn(_pipelined, dp * pp, tmp_path, pp, schedule, freeze, steps)
    expected, ref_losses = _reference(freeze, steps)
    seen: dict[int, list[torch.Tensor]] = {}
    for rank in range(dp * pp):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for layer, params in got["params"].items():
            if layer in seen:  # another replica of the same stage: replicas stay identical
                for a, b in zip(seen[layer], params, strict=True):
                    torch.testing.assert_close(a, b)
            seen[layer] = params
        if rank in RankLayout(dp * pp, pp).pipeline_ranks(0)[-1:]:
            last_losses = got["losses"]
    assert sorted(seen) == sorted(expected), "every layer lives on exactly one stage"
    for layer, params in expected.items():
        for want, have in zip(params, seen[layer], strict=True):
            torch.testing.assert_close(have, want, rtol=1e-5, atol=1e-6)
        if layer < freeze:
            first = mlp_layers(WIDTHS)[layer]
            torch.testing.assert_close(seen[layer][0], next(first.parameters()).detach())
    # the last stage's mean loss is that replica's half of the batch, so compare with dp == 1 only
    if dp == 1:
        assert last_losses == pytest.approx(ref_losses, rel=1e-5)


def _interleaved(out: Path) -> None:
    distenv.init("gloo")
    layout = RankLayout(dist.get_world_size(), pp=2, virtual=2)
    config = PipelineConfig(schedule="interleaved", microbatches=4, lr=LR)
    ranges = split_evenly(len(WIDTHS) + 1, 4)
    trainer = PipelineTrainer(mlp_layers(WIDTHS), ranges, layout, config, torch.device("cpu"))
    trainer.step(*_batch(0))
    torch.save(trainer.parameters_by_layer(ranges), out / f"rank{dist.get_rank()}.pt")


def test_interleaved_1f1b_with_two_stages_per_rank_equals_single_process(tmp_path):
    distenv.spawn(_interleaved, 2, tmp_path)
    expected, _ = _reference(0, 1)
    seen = {**torch.load(tmp_path / "rank0.pt"), **torch.load(tmp_path / "rank1.pt")}
    assert sorted(seen) == sorted(expected)
    for layer, params in expected.items():
        for want, have in zip(params, seen[layer], strict=True):
            torch.testing.assert_close(have, want, rtol=1e-5, atol=1e-6)


def _bf16(out: Path) -> None:
    distenv.init("gloo")
    layout = RankLayout(dist.get_world_size(), pp=2)
    config = PipelineConfig(schedule="1f1b", microbatches=2, precision="bf16", lr=0.1, momentum=0.9)
    ranges = split_evenly(3, 2)
    trainer = PipelineTrainer(mlp_layers([128, 64]), ranges, layout, config, torch.device("cpu"))
    losses = [trainer.step(*_batch(s % 8)) for s in range(40)]
    if losses[-1] is not None:
        torch.save(losses, out / "losses.pt")


def test_bf16_pipeline_learns(tmp_path):
    distenv.spawn(_bf16, 2, tmp_path)
    losses = torch.load(tmp_path / "losses.pt")
    assert losses[-1] < 0.5 * losses[0], losses


def _serve(out: Path) -> None:
    distenv.init("gloo")
    ranges = split_layers([1.0] * (len(WIDTHS) + 1), dist.get_world_size())
    served = PipelineInference(mlp_layers(WIDTHS), ranges, 4, torch.device("cpu"))
    x, _ = _batch(0)
    result = served.infer(x if dist.get_rank() == 0 else None)
    if result is not None:
        torch.save(result, out / "out.pt")


def test_forward_only_pipeline_serves_the_whole_models_outputs(tmp_path):
    distenv.spawn(_serve, 3, tmp_path)
    with torch.no_grad():
        want = nn.Sequential(*mlp_layers(WIDTHS))(_batch(0)[0])
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), want, rtol=1e-5, atol=1e-6)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=300
    )


def test_hybrid_training_command_learns_with_the_planned_split():
    done = _cli(
        "distml_runtime.train.pipeline", "--nproc", "4", "--pp", "2", "--steps", "120",
        "--log-every", "20", "--no-metrics",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    plan = next(e for e in events if e["event"] == "plan")
    assert (plan["dp"], plan["pp"]) == (2, 2)
    losses = [e["loss"] for e in events if e["event"] == "step"]
    assert len(losses) == 6
    assert losses[-1] < 0.6 * losses[0], losses


def test_plan_command_prints_stages_and_refuses_a_model_that_cannot_fit():
    done = _cli("distml_runtime.plan", "--widths", "256,512,64", "--stages", "2", "--json")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["stages"][0]["layers"][0] == 0
    assert plan["stages"][-1]["layers"][1] == 4
    assert plan["fits"] and plan["theoretical_bubble"] == pytest.approx(1 / 9)
    tight = _cli("distml_runtime.plan", "--widths", "2048,2048", "--stages", "2",
                 "--gpu-memory", "8MiB")  # fmt: skip
    assert tight.returncode == 3
    assert "DOES NOT FIT" in tight.stdout and "MiB more than the GPU's memory" in tight.stdout
    wrong = _cli("distml_runtime.plan", "--widths", "8", "--stages", "5")
    assert wrong.returncode == 2
    assert "cannot split 2 layers into 5 stages" in wrong.stderr


def _frozen_prefix(out: Path) -> None:
    from distml_runtime.pipeline.models import simulated_calls, simulated_layers

    distenv.init("gloo")
    layout = RankLayout(3, pp=3)
    config = PipelineConfig(schedule="1f1b", microbatches=4, freeze_layers=2, lr=LR)
    trainer = PipelineTrainer(
        simulated_layers([0.05] * 3), split_evenly(3, 3), layout, config, torch.device("cpu")
    )
    x, y = torch.randn(8, 16), torch.randint(0, 16, (8,))
    trainer.step(x, y)  # the first step also infers shapes with one more forward
    before = simulated_calls()
    trainer.step(x, y)
    calls = {k: v - before[k] for k, v in simulated_calls().items()}
    torch.save(calls, out / f"calls{dist.get_rank()}.pt")


def test_frozen_stages_do_no_backward_work(tmp_path):
    """Stages 0 and 1 hold only frozen layers: each runs its 4 forwards (one per micro-batch)
    and no backward, while the trainable stage 2 also runs its 4 backwards."""
    distenv.spawn(_frozen_prefix, 3, tmp_path)
    calls = [torch.load(tmp_path / f"calls{r}.pt") for r in range(3)]
    assert calls[0] == {"forward": 4, "backward": 0}
    assert calls[1] == {"forward": 4, "backward": 0}, "no backward through a frozen stage"
    assert calls[2] == {"forward": 4, "backward": 4}
