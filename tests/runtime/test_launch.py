"""The launcher orders a group's node ranks by the pod's own rank: torch's c10d rendezvous would
order them by host name (pod job-10 before job-2) or, on one host, by process id, and the ranks
the operator placed stage by stage would run on other pods."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from .test_elastic import _free_port, _listening

PROGRAM = (
    "import os; print('ranks', os.environ['PET_NODE_RANK'], os.environ['GROUP_RANK'], "
    "os.environ['RANK'], flush=True)"
)


def test_group_ranks_follow_the_pods_ranks_not_the_order_agents_came_in(tmp_path: Path):
    port = _free_port()
    procs: dict[int, subprocess.Popen] = {}

    def start(node_rank: int) -> None:
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "PET_NNODES": "3",
            "PET_NPROC_PER_NODE": "2",
            "PET_NODE_RANK": str(node_rank),
            "PET_RDZV_BACKEND": "c10d",
            "PET_RDZV_ENDPOINT": f"127.0.0.1:{port}",
            "PET_RDZV_ID": "order-test",
            "PET_MAX_RESTARTS": "0",
        }
        argv = [sys.executable, "-m", "distml_runtime.launch", "--", "python", "-c", PROGRAM]
        with open(tmp_path / f"agent-{node_rank}.log", "wb") as log:
            procs[node_rank] = subprocess.Popen(argv, env=env, stdout=log,
                                                stderr=subprocess.STDOUT)  # fmt: skip

    try:
        start(0)  # hosts the rendezvous store, as the pod job-0 does
        end = time.monotonic() + 60
        while not _listening(port) and time.monotonic() < end:
            time.sleep(0.1)
        start(2)  # joins before rank 1, from a lower process id: torch alone would rank it 1
        time.sleep(0.5)
        start(1)
        for p in procs.values():
            p.wait(timeout=120)
    finally:
        for p in procs.values():
            p.kill()
    seen = []
    for node_rank in procs:
        log = (tmp_path / f"agent-{node_rank}.log").read_text()
        assert procs[node_rank].returncode == 0, log
        seen += [tuple(int(v) for v in li.split()[1:]) for li in log.splitlines()
                 if li.startswith("ranks ")]  # fmt: skip
    # (pod rank, group rank, global rank): pod i is group rank i with global ranks 2i, 2i + 1.
    assert sorted(seen) == [(i // 2, i // 2, i) for i in range(6)]
