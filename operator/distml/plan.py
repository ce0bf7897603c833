"""`python -m distml.plan FILE`: how the operator will split a pipeline ServingJob's model into
stages, printed before anything launches (the same decision status.pipeline shows once applied).

    python -m distml.plan examples/servingjob-pipeline.yaml
"""

from __future__ import annotations

import argparse
import sys

import yaml

from distml.api.serving import KIND, ServingJobSpec
from distml.servingjob import rendering, split


def render(name: str, spec: ServingJobSpec) -> str:
    if spec.pipeline is None:
        return f"{KIND} {name}: one pod per replica (no spec.pipeline): nothing to split"
    rows = spec.batching.max_batch_size
    got = split.describe(spec.model.widths, spec.pipeline, rows)
    costs = split.layer_costs(spec.model.widths)
    gpus = rendering.gpus_per_pod(spec)
    lines = [
        f"{KIND} {name}: {got.layers} layers in {got.stages} stages ({got.split}): {got.text}",
        f"each replica: {got.stages} pods of {gpus} nvidia.com/gpu, placed "
        f"{spec.pipeline.placement}; each batch (up to {rows} rows) in "
        f"{spec.pipeline.microbatches} piece(s)",
        f"  {'stage':>5}  {'layers':>7}  {'multiply-adds/row':>17}  {'share':>6}  "
        f"{'GPU memory':>12}",
    ]
    for s in got.per_stage:
        work = sum(costs[s.first_layer : s.last_layer + 1])
        span = (
            f"{s.first_layer}-{s.last_layer}"
            if s.last_layer > s.first_layer
            else str(s.first_layer)
        )
        lines.append(f"  {s.stage:>5}  {span:>7}  {work:>17,}  {s.share:>6.1%}  "
                     f"{_mib(s.memory_bytes):>12}")  # fmt: skip
    memory = spec.pipeline.gpu_memory
    said = f"{memory}, every stage fits" if memory else "not given (gpuMemory), not checked"
    lines.append(f"GPU memory per stage: {said}")
    lines.append(
        f"the slowest stage does {got.slowest_share:.1%} of the work: a full pipeline answers "
        f"up to {1 / got.slowest_share:.2f}x the batches of one pod"
    )
    return "\n".join(lines)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m distml.plan", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("file", help="a ServingJob manifest (YAML); - for stdin")
    args = ap.parse_args(argv)
    text = sys.stdin.read() if args.file == "-" else open(args.file).read()  # noqa: SIM115
    shown = 0
    for doc in yaml.safe_load_all(text):
        if not doc or doc.get("kind") != KIND:
            continue
        try:
            spec = ServingJobSpec.model_validate(doc.get("spec") or {})
            print(render(doc.get("metadata", {}).get("name", "?"), spec))
        except (ValueError, split.SplitError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        shown += 1
    if not shown:
        print(f"error: no {KIND} in {args.file}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
