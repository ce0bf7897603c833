"""Benchmark: from a fault to training again, on process nodes (real DDP, a network host each).

    make bench-recovery            # 3 runs of each fault; --runs N for more

Its own cluster: 3 process nodes x 2 GPUs, the node controller set like a default cluster
(--node-monitor-grace-period=40s), the operator as a process. Every figure is measured from the
fault to the first training step rank 0 logs after it (each event carries its time), with its
parts: detect (the first worker to give up on its peer, from torchrun's own log line),
rendezvous and restart (to the resume from the checkpoint), and the first step after it.

1. elastic job (3 pods, min 2), one worker process killed with SIGKILL: torchrun restarts it in
   its pod, the other pods' workers meet it again (target <= 10 s);
2. the same job, the node of slot 2 cut off the network, no spare node: the job shrinks to 2
   (target <= 20 s), and the operator records it (the resize's time in status) from the ranks'
   group size, before the node controller calls the node NotReady;
3. the node back (from the moment it is Ready): the operator puts the slot's replacement there,
   and the job grows to 3 again (target <= 20 s);
4. the same job, slot 2's node removed (its machine killed, its Node object deleted), no spare:
   the job shrinks to 2 (target <= 20 s); then a node of that name joins again (from the moment
   the node agent is Ready) and the job grows to 3 (target <= 20 s);
5. a non-elastic job (2 pods) with a spare node, the node of rank 1 cut off: the operator
   restarts the group on the other two nodes when rank 0 reports its peer lost, without waiting
   for the node controller (target <= 20 s); and the same with the node removed.

Beside them, what the node controller alone gives: the node NotReady after the grace period
(measured in the same run), then the default 300 s toleration before it evicts the pods.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
NS = "default"
GPUS = 2
PROCESS = {"distml.io/simulated-node": "process"}
# torchrun's log line when a worker ends: "E1202 19:18:57.132000 ... failed (exitcode: 76)"
_EXIT_LINE = re.compile(r"^[EWI](\d{4}) (\d\d:\d\d:\d\d\.\d+) .*failed \(exitcode: (-?\d+)\)")


def say(msg: str) -> None:
    print(msg, flush=True)


class Bench:
    def __init__(self, cluster: Any) -> None:
        from kubernetes import client, config

        self.cluster = cluster
        api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.ckpt = cluster.root / "shared" / "hostpath" / "mnt" / "bench-recovery"

    # --- the job -------------------------------------------------------------------------------

    def create(self, name: str, replicas: int, elastic: bool) -> None:
        from distml.api.models import training_job_manifest

        folder = f"/mnt/bench-recovery/{name}-{time.time_ns()}"
        pod = {
            "nodeSelector": PROCESS,
            "terminationGracePeriodSeconds": 5,
            "containers": [{
                "name": "trainer", "image": "distml-runtime:0.1.0",
                "args": ["python", "-m", "distml_runtime.train.ddp", "--steps", "100000",
                         "--step-delay", "0.1", "--log-every", "1", "--checkpoint-dir", "/ckpt",
                         "--checkpoint-every", "10"],
                "volumeMounts": [{"name": "ckpt", "mountPath": "/ckpt"}],
            }],
            "volumes": [{"name": "ckpt",
                         "hostPath": {"path": folder, "type": "DirectoryOrCreate"}}],
        }  # fmt: skip
        spec: dict[str, Any] = {"nprocPerReplica": 1, "peerTimeoutSeconds": 5}
        if elastic:
            spec["elastic"] = {"minReplicas": 2, "maxReplicas": replicas}
        body = training_job_manifest(name, replicas, GPUS, pod, **spec)
        self.custom.create_namespaced_custom_object(
            "distml.io", "v1alpha1", NS, "trainingjobs", body
        )
        self.wait(f"{name} training", lambda: self.steps_after(name, 0.0, min_step=10), 240)

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(
            "distml.io", "v1alpha1", NS, "trainingjobs", name
        )
        self.wait(f"{name}'s pods to go", lambda: not self.pods(name), 120)

    def status(self, name: str) -> dict:
        obj = self.custom.get_namespaced_custom_object(
            "distml.io", "v1alpha1", NS, "trainingjobs", name
        )
        return obj.get("status") or {}

    def pods(self, name: str) -> list:
        return self.core.list_namespaced_pod(NS, label_selector=f"distml.io/job-name={name}").items

    def logs(self, name: str) -> dict[str, str]:
        import urllib3
        from kubernetes import client

        out = {}
        for p in self.pods(name):
            if p.metadata.deletion_timestamp:
                continue
            # none from a pod whose node does not answer (cut off)
            with contextlib.suppress(client.ApiException, urllib3.exceptions.HTTPError):
                out[p.metadata.name] = (
                    self.core.read_namespaced_pod_log(
                        p.metadata.name, NS, container="trainer", _request_timeout=(3, 8)
                    )
                    or ""
                )
        return out

    def events(self, name: str) -> list[dict]:
        seen = {}
        for text in self.logs(name).values():
            for line in text.splitlines():
                if line.startswith('{"event"'):
                    e = json.loads(line)
                    seen[(e["event"], e.get("step"), e["time"])] = e
        return sorted(seen.values(), key=lambda e: e["time"])

    def steps_after(self, name: str, t: float, min_step: int = 0, world: int = 0) -> list[dict]:
        evs = self.events(name)
        if world:  # steps after a resume at that world size
            resumes = [e for e in evs if e["event"] == "resume" and e["world_size"] == world
                       and e["time"] > t]  # fmt: skip
            if not resumes:
                return []
            t = resumes[0]["time"]
        return [e for e in evs if e["event"] == "step" and e["time"] > t and e["step"] >= min_step]

    def first_exit(self, name: str, after: float) -> float | None:
        """When the first worker gave up (torchrun's log line), after `after`."""
        year = datetime.now().year
        times = []
        for text in self.logs(name).values():
            for line in text.splitlines():
                m = _EXIT_LINE.match(line)
                if m:
                    stamp = datetime.strptime(
                        f"{year}{m.group(1)} {m.group(2)}", "%Y%m%d %H:%M:%S.%f"
                    )
                    # torchrun logs in local time on this machine
                    t = stamp.timestamp()
                    if t > after:
                        times.append(t)
        return min(times) if times else None

    def wait(self, what: str, probe: Any, timeout: float) -> Any:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            got = probe()
            if got:
                return got
            time.sleep(0.5)
        raise TimeoutError(f"{what} after {timeout:.0f}s")

    def parts(self, name: str, fault: float, world: int) -> dict[str, float]:
        steps = self.wait("training again", lambda: self.steps_after(name, fault, world=world), 240)
        resume = next(e for e in self.events(name) if e["event"] == "resume" and e["time"] > fault
                      and e["world_size"] == world)  # fmt: skip
        detect = self.first_exit(name, fault) or resume["time"]
        return {
            "total": steps[0]["time"] - fault,
            "detect": detect - fault,
            "rendezvous + restart": resume["time"] - detect,
            "first step": steps[0]["time"] - resume["time"],
        }

    def recorded(self, name: str, fault: float) -> float:
        """When the operator recorded the job's latest shrink, by its own clock (the resize's
        time in status), after the fault. Read from status, not timed here: reading the logs
        of a pod on a cut-off node takes seconds each, which a wall clock would count."""
        self.wait("the operator's shrink", lambda: self.status(name).get("workers") == 2, 180)
        from distml.podstate import parse_time

        shrinks = [r for r in self.status(name).get("resizeHistory") or []
                   if r["toReplicas"] < r["fromReplicas"]]  # fmt: skip
        stamp = parse_time(shrinks[-1]["time"])
        assert stamp is not None
        return stamp.timestamp() - fault

    def node_ready(self, node: str) -> bool:
        conds = {c.type: c.status for c in self.core.read_node(node).status.conditions}
        return conds.get("Ready") == "True"

    def worker_pids(self, name: str) -> list[int]:
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                argv = (proc / "cmdline").read_bytes()
                env = (proc / "environ").read_bytes()
            except OSError:
                continue
            if b"distml_runtime.train.ddp" in argv and f"DISTML_JOB_NAME={name}\0".encode() in env:
                found.append(int(proc.name))
        return found

    # --- one run of every fault --------------------------------------------------------------

    def run(self, i: int) -> dict[str, dict[str, float]]:
        from distml.localcluster import faults

        out: dict[str, dict[str, float]] = {}
        name = f"el{i}"
        self.create(name, 3, elastic=True)
        fault = time.time()
        os.kill(self.worker_pids(name)[-1], signal.SIGKILL)
        out["worker process killed (elastic)"] = self.parts(name, fault, 3)

        victim = next(p for p in self.pods(name) if p.metadata.name == f"{name}-worker-2-0")
        node = victim.spec.node_name
        fault = time.time()
        faults.node_cut(self.cluster, node)
        try:
            out["node cut off, no spare (elastic shrink)"] = self.parts(name, fault, 2)
            # From the ranks' own group size, before the node controller has a say.
            out["node cut off, no spare (elastic shrink)"]["operator records it"] = self.recorded(
                name, fault
            )
            self.wait("the node NotReady", lambda: not self.node_ready(node), 180)
            not_ready = time.time() - fault
            out["node controller alone"] = {"total": not_ready, "NotReady": not_ready}
        finally:
            faults.node_cut(self.cluster, node, off=False)
        self.wait("the node Ready", lambda: self.node_ready(node), 120)
        out["node back (elastic grow)"] = self.grows(name, time.time())

        (victim,) = [p for p in self.pods(name) if p.metadata.name.startswith(f"{name}-worker-2-")
                     and not p.metadata.deletion_timestamp]  # fmt: skip
        node = victim.spec.node_name
        fault = time.time()
        faults.process_node_gone(self.cluster, node)
        out["node removed, no spare (elastic shrink)"] = self.parts(name, fault, 2)
        out["node removed, no spare (elastic shrink)"]["operator records it"] = self.recorded(
            name, fault
        )
        self.cluster.sync_process_nodes(3, gpus=GPUS)
        out["a node joins (elastic grow)"] = self.grows(name, time.time())
        self.delete(name)

        out["node cut off, spare node (non-elastic moves)"] = self.moves(
            f"moves{i}",
            lambda node: faults.node_cut(self.cluster, node),
            lambda node: faults.node_cut(self.cluster, node, off=False),
        )
        out["node removed, spare node (non-elastic moves)"] = self.moves(
            f"gone{i}",
            lambda node: faults.process_node_gone(self.cluster, node),
            lambda node: self.cluster.sync_process_nodes(3, gpus=GPUS),
        )
        return out

    def grows(self, name: str, back: float) -> dict[str, float]:
        """From a node's return (Ready) to training at 3 again, with its replacement pod."""
        steps = self.wait("training at 3", lambda: self.steps_after(name, back, world=3), 240)
        resume = next(e for e in self.events(name) if e["event"] == "resume" and e["time"] > back
                      and e["world_size"] == 3)  # fmt: skip
        new = [p for p in self.pods(name) if p.metadata.name.startswith(f"{name}-worker-2-")]
        created = max(p.metadata.creation_timestamp.timestamp() for p in new)
        return {
            "total": steps[0]["time"] - back,
            "replacement created": created - back,
            "pod start + rendezvous": resume["time"] - created,
            "first step": steps[0]["time"] - resume["time"],
        }

    def moves(self, name: str, fault_on: Any, restore: Any) -> dict[str, float]:
        """A non-elastic job of 2 pods with a spare node: `fault_on(node)` hits rank 1's node;
        from then to the first step on the other two nodes."""
        self.create(name, 2, elastic=False)
        victim = next(p for p in self.pods(name) if p.metadata.name.startswith(f"{name}-worker-1-"))
        node = victim.spec.node_name
        fault = time.time()
        fault_on(node)
        try:
            st = self.wait(
                "the restart", lambda: (s := self.status(name)).get("restarts") and s, 120
            )
            restarted = time.time() - fault
            steps = self.wait("training again", lambda: [
                e for e in self.events(name) if e["event"] == "step" and e["time"] > fault
            ], 240)  # fmt: skip
            resume = next(e for e in self.events(name) if e["event"] == "resume")
            assert node not in {p.spec.node_name for p in self.pods(name)
                                if not p.metadata.deletion_timestamp}, st  # fmt: skip
        finally:
            restore(node)
        self.wait("the node Ready", lambda: self.node_ready(node), 120)
        self.delete(name)
        return {
            "total": steps[0]["time"] - fault,
            "detect + restart decided": restarted,
            "new pods + rendezvous": resume["time"] - fault - restarted,
            "first step": steps[0]["time"] - resume["time"],
        }


TARGETS = {
    "worker process killed (elastic)": 10.0,
    "node cut off, no spare (elastic shrink)": 20.0,
    "node back (elastic grow)": 20.0,
    "node removed, no spare (elastic shrink)": 20.0,
    "a node joins (elastic grow)": 20.0,
    "node cut off, spare node (non-elastic moves)": 20.0,
    "node removed, spare node (non-elastic moves)": 20.0,
}


def report(runs: list[dict[str, dict[str, float]]]) -> str:
    lines = ["| fault | to training again (median) | parts (median) | target |",
             "| --- | --- | --- | --- |"]  # fmt: skip
    for fault in runs[0]:
        parts = {k: statistics.median(r[fault][k] for r in runs) for k in runs[0][fault]}
        total = parts.pop("total")
        shown = ", ".join(f"{k} {v:.1f} s" for k, v in parts.items())
        target = TARGETS.get(fault)
        verdict = f"<= {target:.0f} s: {'met' if total <= target else 'NOT met'}" if target else ""
        if fault == "node controller alone":
            shown = "then a 300 s toleration before eviction by default"
        lines.append(f"| {fault} | {total:.1f} s | {shown} | {verdict} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", type=Path, help="write the figures here too")
    args = ap.parse_args()

    from distml.localcluster.cluster import LocalCluster
    from distml.localcluster.nodes import ClusterShape, NodeShape
    from distml_runtime.distenv import free_port

    cluster = LocalCluster(
        root=REPO / ".cluster-bench-recovery", bin_dir=REPO / "bin", node_grace_seconds=40
    )
    cluster.up(ClusterShape(nodes=0), NodeShape(), timeout=300)
    runs = []
    try:
        cluster.apply_crds(REPO / "crds")
        cluster.sync_process_nodes(3, gpus=GPUS)
        cluster.start_operator(free_port(), None, "--allowed-host-path=/mnt/bench-recovery")
        bench = Bench(cluster)
        for i in range(args.runs):
            say(f"run {i + 1}/{args.runs} ...")
            runs.append(bench.run(i))
            for fault, parts in runs[-1].items():
                say(f"  {fault}: {parts['total']:.1f} s")
    finally:
        cluster.down()
    say("\nfrom the fault to the first training step after it (node controller grace 40 s):")
    say(report(runs))
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
