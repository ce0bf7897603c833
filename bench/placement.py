"""Benchmark: topology-aware placement of pipeline jobs.

    make bench-placement                 # both parts
    python bench/placement.py --planner-only

1. The planner (distml.placement) on clusters of 64 and 1,000 nodes in blocks, a third of their
   GPUs taken at random: its time per decision and the stage boundaries that cross blocks,
   against a pod-by-pod best fit (what the ledger does for any other gang; the scheduler's
   NodeResourcesFit MostAllocated is alike) measured in the same run.
2. Real pipeline training on process nodes: 4 nodes in 2 blocks, the links between the blocks
   shaped slow (--between, 100mbit) and those inside them left fast; a pp=4 job (4 pods, one
   stage each, the runtime's 1F1B pipeline trainer on gloo) placed by topology
   (PreferSameBlock) against the same job placed pod by pod (pipelineStages: Any). The blocks
   are labelled so that name order alternates them (proc-node-000 and -002 in one, -001 and -003
   in the other), as racks rarely line up with names: best fit then puts consecutive stages in
   different blocks. Median step time and samples/s of each, and their ratio.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
NS = "default"
BLOCK = "topology.distml.io/block"
PROCESS = {"distml.io/simulated-node": "process"}


def say(msg: str) -> None:
    print(msg, flush=True)


# --- 1. the planner ----------------------------------------------------------------------------


def random_cluster(
    nodes: int, per_block: int, rng: random.Random
) -> tuple[dict[str, int], dict[str, str]]:
    free, blocks = {}, {}
    for i in range(nodes):
        name = f"n{i:04d}"
        free[name] = 8 - rng.choice([0, 0, 4, 8])  # a third of the GPUs taken, in whole or half
        blocks[name] = f"b{i // per_block:03d}"
    return free, blocks


def best_fit(free: dict[str, int], pods: int, gpus: int) -> list[str] | None:
    room, out = dict(free), []
    for _ in range(pods):
        fits = [n for n in room if room[n] >= gpus]
        if not fits:
            return None
        node = min(fits, key=lambda n: (room[n], n))
        room[node] -= gpus
        out.append(node)
    return out


def planner_table(repeats: int) -> list[dict[str, Any]]:
    from distml import placement

    rng = random.Random(0)
    rows = []
    cases = [  # nodes, nodes per block, pods, ranks per pod, pipeline, tensor, GPUs per pod
        (64, 4, 16, 8, 16, 1, 8),
        (64, 4, 32, 4, 8, 4, 4),
        (1000, 4, 64, 8, 16, 1, 8),
        (1000, 8, 128, 8, 16, 2, 8),
        (1000, 2, 64, 8, 16, 8, 8),
    ]
    for nodes, per_block, pods, nproc, pp, tp, gpus in cases:
        free, blocks = random_cluster(nodes, per_block, rng)
        layout = placement.Layout(pods, nproc, pp, tp)
        times, base_times = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            got = placement.plan(layout, gpus, free, blocks)
            times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            base = best_fit(free, pods, gpus)
            base_times.append(time.perf_counter() - t0)
        assert isinstance(got, placement.Placement), got
        assert base is not None
        unit_blocks = [blocks[base[u * layout.unit_pods]] for u in range(layout.units)]
        base_cross = len(layout.crossings(unit_blocks))
        rows.append({
            "nodes": nodes, "per_block": per_block, "pods": pods, "nproc": nproc,
            "pp": pp, "tp": tp, "blocks": got.blocks,
            "ms": statistics.median(times) * 1e3,
            "best_fit_ms": statistics.median(base_times) * 1e3,
            "crossings": len(got.crossings), "best_fit_crossings": base_cross,
        })  # fmt: skip
    return rows


def print_planner(rows: list[dict[str, Any]]) -> None:
    say("\nplanner: one decision (median), stage boundaries crossing blocks")
    say("| nodes | per block | pods x ranks | pp x tp | planner ms | best fit ms | ratio "
        "| crossings: planner | best fit |")  # fmt: skip
    say("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        say(f"| {r['nodes']} | {r['per_block']} | {r['pods']} x {r['nproc']} "
            f"| {r['pp']} x {r['tp']} "
            f"| {r['ms']:.1f} | {r['best_fit_ms']:.1f} | {r['ms'] / r['best_fit_ms']:.1f}x "
            f"| {r['crossings']} of {r['pp'] - 1} | {r['best_fit_crossings']} |")  # fmt: skip


# --- 2. process nodes --------------------------------------------------------------------------


class Training:
    def __init__(self, cluster: Any) -> None:
        from kubernetes import client, config

        api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    def run(self, name: str, mode: str, args: argparse.Namespace) -> dict[str, Any]:
        from distml.api.models import training_job_manifest

        pod = {
            "nodeSelector": PROCESS,
            "terminationGracePeriodSeconds": 5,
            "containers": [{
                "name": "trainer", "image": "distml-runtime:0.1.0",
                "args": ["python", "-m", "distml_runtime.train.pipeline", "--split", "even",
                         "--steps", str(args.steps), "--log-every", "1",
                         "--batch-size", str(args.batch), "--microbatches", "4",
                         "--widths", ",".join([str(args.width)] * 3), "--schedule", "1f1b"],
                "env": [{"name": "OMP_NUM_THREADS", "value": "1"}],
            }],
        }  # fmt: skip
        body = training_job_manifest(
            name, 4, 8, pod, nprocPerReplica=1, parallelism={"pipeline": 4},
            placement={"pipelineStages": mode},
        )  # fmt: skip
        self.custom.create_namespaced_custom_object("distml.io", "v1alpha1", NS, "trainingjobs",
                                                    body)  # fmt: skip
        t0 = time.monotonic()
        while True:
            st = self.status(name)
            if st.get("phase") in ("Succeeded", "Failed"):
                break
            if time.monotonic() - t0 > 600:
                raise TimeoutError(f"{name}: {st.get('phase')} {st.get('message')}")
            time.sleep(1)
        if st["phase"] != "Succeeded":
            raise RuntimeError(f"{name} failed: {st.get('message')}")
        steps = self.steps(name)
        timed = [s["step_ms"] for s in steps if s["step"] > args.warmup]
        ms = statistics.median(timed)
        out = {
            "mode": mode,
            "nodes": [r["node"] for r in sorted(st["ranks"], key=lambda r: r["rank"])],
            "blocks": [r["block"] for r in sorted(st["ranks"], key=lambda r: r["rank"])],
            "crossings": (st.get("placement") or {}).get("crossing", []),
            "step_ms": ms,
            "samples_per_s": args.batch / ms * 1e3,
        }
        self.custom.delete_namespaced_custom_object("distml.io", "v1alpha1", NS, "trainingjobs",
                                                    name)  # fmt: skip
        while self.core.list_namespaced_pod(NS, label_selector=f"distml.io/job-name={name}").items:
            time.sleep(0.5)
        return out

    def status(self, name: str) -> dict[str, Any]:
        obj = self.custom.get_namespaced_custom_object("distml.io", "v1alpha1", NS,
                                                       "trainingjobs", name)  # fmt: skip
        return dict(obj.get("status") or {})

    def steps(self, name: str) -> list[dict[str, Any]]:
        pods = self.core.list_namespaced_pod(NS, label_selector=f"distml.io/job-name={name}")
        out = []
        for p in pods.items:
            log = self.core.read_namespaced_pod_log(p.metadata.name, NS, container="trainer")
            out += [json.loads(li) for li in log.splitlines() if li.startswith('{"event": "step"')]
        return out


def process_nodes(args: argparse.Namespace) -> list[dict[str, Any]]:
    from distml.localcluster import faults
    from distml.localcluster.cluster import LocalCluster
    from distml.localcluster.nodes import ClusterShape, NodeShape
    from distml_runtime.distenv import free_port

    cluster = LocalCluster(root=REPO / ".cluster-bench-placement", bin_dir=REPO / "bin")
    cluster.up(ClusterShape(nodes=0), NodeShape(), timeout=300)
    rows = []
    try:
        cluster.apply_crds(REPO / "crds")
        cluster.sync_process_nodes(4)
        for i in range(4):  # name order alternates the blocks
            cluster.kubectl("label", "--overwrite", "node", f"proc-node-{i:03d}",
                            f"{BLOCK}=rack-{'ab'[i % 2]}")  # fmt: skip
        blocks = faults.block_rate(cluster, args.between)
        say(f"blocks: {blocks}; between them {args.between}, inside them unshaped")
        cluster.start_operator(free_port(), None)
        training = Training(cluster)
        for run in range(args.runs):
            for mode in ("PreferSameBlock", "Any"):
                name = f"pp4-{mode.lower()}-{run}"
                say(f"run {run + 1}/{args.runs}: {mode} ...")
                row = training.run(name, mode, args)
                say(f"  {row['blocks']} crossing {row['crossings']}: {row['step_ms']:.0f} ms/step")
                rows.append(row)
    finally:
        cluster.down()
    return rows


def print_training(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    say(
        f"\npp=4 pipeline training, 4 process nodes in 2 blocks, {args.between} between blocks "
        f"(median step over steps {args.warmup + 1}-{args.steps}, median of {args.runs} runs)"
    )
    say("| placement | stage blocks | crossing | step ms | samples/s |")
    say("|---|---|---|---:|---:|")
    med = {}
    for mode in ("PreferSameBlock", "Any"):
        mine = [r for r in rows if r["mode"] == mode]
        med[mode] = statistics.median(r["step_ms"] for r in mine)
        last = mine[-1]
        say(f"| {mode} | {' '.join(last['blocks'])} | {', '.join(last['crossings']) or 'none'} "
            f"| {med[mode]:.0f} | {args.batch / med[mode] * 1e3:.0f} |")  # fmt: skip
    say(
        f"throughput, placed by topology against pod by pod: "
        f"{med['Any'] / med['PreferSameBlock']:.2f}x"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--planner-only", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--between", default="100mbit", help="link rate between blocks")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--json", type=Path, help="write the figures here too")
    args = ap.parse_args()
    planner = planner_table(args.repeats)
    print_planner(planner)
    training: list[dict[str, Any]] = []
    if not args.planner_only:
        training = process_nodes(args)
        print_training(training, args)
    if args.json:
        args.json.write_text(json.dumps({"planner": planner, "training": training}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
