"""Elastic TrainingJobs on process nodes (real DDP training, one network host per node): a node
cut off, or removed, with no spare node shrinks the job, which grows back when the node returns
(or a new one joins), with no pod duplicated; kubectl scale moves it within its bounds and is
refused outside them; a killed worker process is restarted in its pod. None of it is a restart
of the group, and training never starts again from step 0."""

from __future__ import annotations

import os
import signal
import time

import pytest
from kubernetes import client

from distml.localcluster import faults
from distml.podstate import parse_time

from . import jobs
from .helpers import wait_for
from .procnodes import GPUS_PER_NODE, Census, ddp_job, events_of, training_pids


def elastic_job(name: str, ckpt: str, steps: int, replicas: int = 3) -> dict:
    body = ddp_job(name, ckpt, steps=steps, delay=0.1, replicas=replicas, peerTimeoutSeconds=5)
    body["spec"]["elastic"] = {"minReplicas": 2, "maxReplicas": 3}
    return body


def rank0_events(core: client.CoreV1Api, ns: str, job: str) -> list[dict]:
    """What rank 0 printed, in time order. Rank 0 is whichever pod the rendezvous ranked first
    in each round, so every pod's log is read."""
    seen: dict[tuple, dict] = {}
    for pod in jobs.live_pods(core, ns, job):
        for e in events_of(core, ns, pod.metadata.name):
            seen[(e["event"], e.get("step"), e["time"])] = e
    return sorted(seen.values(), key=lambda e: e["time"])


def resumed_at(core, ns: str, job: str, world: int, after: float = 0.0) -> list[dict]:
    return [
        e
        for e in rank0_events(core, ns, job)
        if e["event"] == "resume" and e["world_size"] == world and e["time"] > after
    ]


def history(custom, ns: str, job: str) -> list[tuple[int, int, str]]:
    st = jobs.status(custom, ns, job)
    return [(r["fromReplicas"], r["toReplicas"], r["reason"]) for r in st.get("resizeHistory", [])]


def training(core, ns: str, job: str, world: int) -> None:
    """Waits for rank 0 to train at `world` ranks (after having started)."""
    wait_for(
        f"training at {world} ranks",
        lambda: any(e["event"] == "step" and e["step"] >= 10 for e in rank0_events(core, ns, job)),
        timeout=240,
        every=1,
    )


def started(core, custom, ns: str, job: str, ckpt: str, steps: int) -> None:
    """Creates an elastic job of 3 and waits until it is Running and rank 0 trains."""
    jobs.create(custom, ns, elastic_job(job, ckpt, steps=steps))
    jobs.wait_phase(custom, ns, job, "Running", timeout=240)
    training(core, ns, job, 3)


def waiting_for_capacity(
    custom, ns: str, job: str, timeout: float, workers: int | None = None
) -> dict:
    """Waits for the job's status to say it waits for capacity (at `workers` workers, when
    given); returns that status."""

    def probe():
        s = jobs.status(custom, ns, job)
        waits = s.get("reason") == "WaitingForCapacity"
        return waits and (workers is None or s.get("workers") == workers) and s

    return jobs.wait_reporting(
        custom, ns, job, "the job to wait for capacity", probe, timeout=timeout
    )


def grows_back_and_succeeds(core, custom, ns: str, job: str, since: float, shrunk: dict):
    """After a shrink to 2: training at 3 again after `since`, from no earlier a step than the
    shrink's, recorded as Replaced; then Succeeded with no restart and two resizes. Returns
    the resume at 3."""
    (grown,) = wait_for(
        "training at 3 again", lambda: resumed_at(core, ns, job, 3, since), timeout=240, every=1
    )
    assert grown["step"] >= shrunk["step"]
    wait_for(
        "the grow in status", lambda: (2, 3, "Replaced") in history(custom, ns, job), timeout=60
    )
    st = jobs.wait_phase(custom, ns, job, "Succeeded", timeout=400)
    assert st["restarts"] == 0 and st["restartGeneration"] == 0 and st["resizes"] == 2
    return grown


def removed_and_resumed(cluster, core, ns: str, job: str, node: str, timeout: float):
    """Removes `node` (its machine, its pods and its Node object: faults.process_node_gone) and
    waits for the job's ranks to resume at 2 after it, from a checkpoint, not from scratch.
    Returns when the node went, and that resume."""
    gone_at = time.time()
    faults.process_node_gone(cluster, node)
    (resumed,) = wait_for(
        f"training at 2 without {node}",
        lambda: resumed_at(core, ns, job, 2, gone_at),
        timeout=timeout,
        every=1,
    )
    assert resumed["step"] >= 10
    return gone_at, resumed


def test_a_node_cut_off_shrinks_the_job_and_it_grows_back_when_the_node_returns(
    cluster, process_nodes, operator, core, custom, namespace, checkpoints, capsys
):
    path, _folder = checkpoints
    started(core, custom, namespace, "el", path, steps=1800)
    victim = next(p for p in jobs.pods(core, namespace, "el") if p.metadata.name == "el-worker-2-0")
    node = victim.spec.node_name
    with Census(core, namespace, "el") as census:
        cut_at = time.time()
        faults.node_cut(cluster, node)
        try:
            # The ranks find the silent peer (peerTimeoutSeconds 5) and go on without it.
            (shrunk,) = wait_for(
                "training without the cut-off node",
                lambda: resumed_at(core, namespace, "el", 2, cut_at),
                timeout=120,
                every=1,
            )
            assert shrunk["step"] >= 10  # from a checkpoint, not from scratch
            # The operator hears it from the ranks (their launchers' group size), while the node
            # controller still calls the node Ready.
            wait_for(
                "the shrink in status",
                lambda: (3, 2, "LeftGroup") in history(custom, namespace, "el"),
                timeout=60,
            )
            (left,) = [r for r in jobs.status(custom, namespace, "el")["resizeHistory"]
                       if r["reason"] == "LeftGroup"]  # fmt: skip
            recorded = parse_time(left["time"]).timestamp() - cut_at  # the operator's own clock
            ready = next(c for c in core.read_node(node).status.conditions if c.type == "Ready")
            if ready.status != "True":  # the node controller has spoken since: it was not first
                assert parse_time(left["time"]) <= ready.last_transition_time, (left, ready)
            assert "without el-worker-2-0" in left["message"]
            # Once the node counts as lost its pod goes: no restart, no spare node.
            st = waiting_for_capacity(custom, namespace, "el", timeout=150)
            waiting = next(c for c in st["conditions"] if c["type"] == "WaitingForCapacity")
            noticed = parse_time(waiting["lastTransitionTime"]).timestamp() - cut_at
            assert st["phase"] == "Running" and st["restarts"] == 0 and st["restartGeneration"] == 0
            assert [h[2] for h in history(custom, namespace, "el")] == ["LeftGroup"]  # one shrink
            assert "waiting for capacity for 1 x 2 nvidia.com/gpu" in st["message"]
            jobs.reasons_once(core, namespace, "el", "Shrunk")
        finally:
            faults.node_cut(cluster, node, off=False)
        back_at = time.time()
        grown = grows_back_and_succeeds(core, custom, namespace, "el", back_at, shrunk)
    assert census.reads > 100 and census.most <= 3 and census.most_in_a_slot == 1
    assert [e["world_size"] for e in rank0_events(core, namespace, "el") if e["event"] == "done"]
    with capsys.disabled():
        print(
            f"\n[elastic] node cut off: training at 2 after {shrunk['time'] - cut_at:.1f}s, "
            f"in status (LeftGroup) after {recorded:.0f}s, the node lost (WaitingForCapacity) "
            f"after {noticed:.0f}s; node back: training at 3 after "
            f"{grown['time'] - back_at:.1f}s"
        )


def test_a_node_removed_shrinks_the_job_and_it_grows_back_when_a_node_joins(
    cluster, process_nodes, operator, core, custom, namespace, checkpoints, capsys
):
    path, _folder = checkpoints
    started(core, custom, namespace, "gone", path, steps=1500)
    victim = next(p for p in jobs.pods(core, namespace, "gone") if p.metadata.name.endswith("-2-0"))
    node = victim.spec.node_name
    with Census(core, namespace, "gone") as census:
        gone_at, shrunk = removed_and_resumed(cluster, core, namespace, "gone", node, 120)
        # No node of that name, no room elsewhere: the job runs smaller and says what it needs.
        st = waiting_for_capacity(custom, namespace, "gone", timeout=60)
        assert st["phase"] == "Running" and st["workers"] == 2 and st["restarts"] == 0
        (shrink,) = history(custom, namespace, "gone")  # one membership change, one record
        assert shrink[:2] == (3, 2) and shrink[2] in ("LeftGroup", "NodeLost"), shrink
        assert "waiting for capacity for 1 x 2 nvidia.com/gpu" in st["message"]
        # The removed node's pod is gone from the API, not left Terminating on a missing node.
        wait_for(
            "the lost pod deleted",
            lambda: victim.metadata.name not in {p.metadata.name for p in
                                                 jobs.pods(core, namespace, "gone")},
            timeout=30,
        )  # fmt: skip
        back_at = time.time()
        cluster.sync_process_nodes(len(process_nodes), gpus=GPUS_PER_NODE)  # a machine joins
        grown = grows_back_and_succeeds(core, custom, namespace, "gone", back_at, shrunk)
    assert census.reads > 100 and census.most <= 3 and census.most_in_a_slot == 1
    with capsys.disabled():
        print(
            f"\n[elastic] node removed: training at 2 after {shrunk['time'] - gone_at:.1f}s; "
            f"a node joined: training at 3 after {grown['time'] - back_at:.1f}s"
        )


def test_the_rendezvous_hosts_node_removed_its_slot_moves_and_the_group_meets_again(
    cluster, process_nodes, operator, core, custom, namespace, checkpoints, capsys
):
    """Slot 0's pod hosts the rendezvous store: with a spare node its replacement goes there,
    the other pod's launcher joins the new store, and nothing restarts."""
    path, _folder = checkpoints
    body = ddp_job("host", path, steps=1200, delay=0.1, replicas=2, peerTimeoutSeconds=5)
    body["spec"]["elastic"] = {"minReplicas": 1, "maxReplicas": 2}
    jobs.create(custom, namespace, body)
    jobs.wait_phase(custom, namespace, "host", "Running", timeout=240)
    training(core, namespace, "host", 2)
    (victim,) = [p for p in jobs.pods(core, namespace, "host") if p.metadata.name.endswith("-0-0")]
    node = victim.spec.node_name
    try:
        with Census(core, namespace, "host") as census:
            gone_at, back = removed_and_resumed(cluster, core, namespace, "host", node, 180)
            live = jobs.live_pods(core, namespace, "host")
            assert sorted(p.metadata.name for p in live) == ["host-worker-0-0", "host-worker-1-0"]
            assert node not in {p.spec.node_name for p in live}
            st = jobs.wait_phase(custom, namespace, "host", "Succeeded", timeout=400)
        assert st["restarts"] == 0 and st["restartGeneration"] == 0
        assert [h[2] for h in history(custom, namespace, "host")][-1] == "Replaced"
        assert census.reads > 100 and census.most <= 2 and census.most_in_a_slot == 1
        with capsys.disabled():
            print(f"\n[elastic] rendezvous host's node removed: training at 2 again after "
                  f"{back['time'] - gone_at:.1f}s (slot 0 moved to the spare node)")  # fmt: skip
    finally:
        cluster.sync_process_nodes(len(process_nodes), gpus=GPUS_PER_NODE)


def test_the_rendezvous_hosts_node_removed_with_no_spare_the_highest_slot_gives_it_its_node(
    cluster, process_nodes, operator, core, custom, namespace, checkpoints, capsys
):
    path, _folder = checkpoints
    started(core, custom, namespace, "nospare", path, steps=1500)
    was = {p.metadata.name: p.spec.node_name for p in jobs.pods(core, namespace, "nospare")}
    node = was["nospare-worker-0-0"]
    with Census(core, namespace, "nospare") as census:
        gone_at, back = removed_and_resumed(cluster, core, namespace, "nospare", node, 180)
        # Slot 0, the store's host, came back on slot 2's node; slot 2 waits for capacity.
        live = {p.metadata.name: p.spec.node_name for p in jobs.live_pods(core, namespace,
                                                                           "nospare")}  # fmt: skip
        assert live == {
            "nospare-worker-0-0": was["nospare-worker-2-0"],
            "nospare-worker-1-0": was["nospare-worker-1-0"],
        }
        st = waiting_for_capacity(custom, namespace, "nospare", timeout=60, workers=2)
        assert st["phase"] == "Running" and st["restarts"] == 0
        back_at = time.time()
        cluster.sync_process_nodes(len(process_nodes), gpus=GPUS_PER_NODE)  # a machine joins
        (grown,) = wait_for(
            "training at 3 again",
            lambda: resumed_at(core, namespace, "nospare", 3, back_at),
            timeout=240,
            every=1,
        )
        st = jobs.wait_phase(custom, namespace, "nospare", "Succeeded", timeout=400)
    assert st["restarts"] == 0 and st["restartGeneration"] == 0
    assert [h[2] for h in history(custom, namespace, "nospare")][-1] == "Replaced"
    assert census.reads > 100 and census.most <= 3 and census.most_in_a_slot == 1
    with capsys.disabled():
        print(
            f"\n[elastic] rendezvous host's node removed, no spare: training at 2 again after "
            f"{back['time'] - gone_at:.1f}s (slot 0 on slot 2's node); a node joined: training "
            f"at 3 after {grown['time'] - back_at:.1f}s"
        )


def test_kubectl_scale_resizes_within_the_bounds_and_a_killed_worker_restarts_in_its_pod(
    process_nodes, operator, core, custom, namespace, checkpoints
):
    path, folder = checkpoints
    started(core, custom, namespace, "el", path, steps=1200)
    uids = {p.metadata.name: p.metadata.uid for p in jobs.pods(core, namespace, "el")}

    # kill -9 of one worker process: torchrun restarts it in its pod, the others meet it again.
    killed_at = time.time()
    os.kill(training_pids(folder)[0], signal.SIGKILL)
    (again,) = wait_for(
        "training again after the kill",
        lambda: resumed_at(core, namespace, "el", 3, killed_at),
        timeout=120,
        every=1,
    )
    assert again["step"] >= 10
    assert {p.metadata.name: p.metadata.uid for p in jobs.pods(core, namespace, "el")} == uids
    wait_for(
        "a step after the kill",
        lambda: any(e["event"] == "step" and e["time"] > again["time"]
                    for e in rank0_events(core, namespace, "el")),
        timeout=60,
        every=1,
    )  # fmt: skip
    st = jobs.status(custom, namespace, "el")
    assert st["restarts"] == 0 and st["phase"] == "Running"
    # That restart inside the pod is in status, read from its launcher.
    wait_for(
        "the in-pod restart in status",
        lambda: jobs.status(custom, namespace, "el").get("workerRestarts") == 1,
        timeout=30,
    )
    jobs.reasons_once(core, namespace, "el", "WorkersRestarted")

    def scale(n: int) -> None:
        custom.patch_namespaced_custom_object_scale(
            jobs.GROUP, jobs.VERSION, namespace, jobs.PLURAL, "el", {"spec": {"replicas": n}}
        )

    with pytest.raises(client.ApiException) as refused:
        scale(4)
    assert refused.value.status == 422
    assert "between spec.elastic.minReplicas and maxReplicas" in refused.value.body

    down_at = time.time()
    scale(2)
    (down,) = wait_for(
        "training at 2", lambda: resumed_at(core, namespace, "el", 2, down_at), timeout=120, every=1
    )
    left = [e for e in rank0_events(core, namespace, "el") if e["event"] == "peer-left"]
    # The ranks resume from the checkpoint they all wrote as the leaver went: no step lost.
    assert left and down["step"] == left[-1]["step"]
    wait_for(
        "the shrink in status",
        lambda: (3, 2, "ScaledDown") in history(custom, namespace, "el"),
        timeout=60,
    )
    assert [p.metadata.name for p in jobs.live_pods(core, namespace, "el")] == [
        "el-worker-0-0",
        "el-worker-1-0",
    ]

    up_at = time.time()
    scale(3)
    wait_for(
        "training at 3", lambda: resumed_at(core, namespace, "el", 3, up_at), timeout=180, every=1
    )
    wait_for(
        "the grow in status",
        lambda: (2, 3, "ScaledUp") in history(custom, namespace, "el"),
        timeout=60,
    )
    st = jobs.wait_phase(custom, namespace, "el", "Succeeded", timeout=400)
    assert st["restarts"] == 0 and st["restartGeneration"] == 0
    jobs.reasons_once(core, namespace, "el", "Grown")
