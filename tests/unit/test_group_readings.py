"""What the operator reads from an elastic job's launchers: the group size and worker restarts
of the pod it asked, never those of another pod that answers on the same address."""

from __future__ import annotations

from distml import labels
from distml.handlers.groups import _identity, _parse

EXPOSITION = """\
# HELP distml_launch_group_size Pods in this pod's latest rendezvous round
# TYPE distml_launch_group_size gauge
distml_launch_group_size{generation="0",rank="1",trainingjob="other"} 4.0
distml_launch_group_size{generation="2",rank="1",trainingjob="el"} 2.0
# HELP distml_launch_worker_restarts Worker restarts spent from torchrun's max restarts
# TYPE distml_launch_worker_restarts gauge
distml_launch_worker_restarts{generation="2",rank="1",trainingjob="el"} 1.0
"""


def pod(rank: int, generation: int) -> dict:
    return {"metadata": {"name": f"el-worker-{rank}-{generation}",
                         "labels": {labels.RANK: str(rank),
                                    labels.GENERATION: str(generation)}}}  # fmt: skip


def test_a_pods_own_series_are_read():
    job = {"metadata": {"name": "el"}}
    assert _parse(EXPOSITION, _identity(job, pod(1, 2))) == (2, 1)
    # Another generation of the same slot, or another job, is not this pod.
    assert _parse(EXPOSITION, _identity(job, pod(1, 3))) is None
    assert _parse(EXPOSITION, _identity({"metadata": {"name": "x"}}, pod(1, 2))) is None


def test_a_launcher_that_has_not_met_its_group_or_no_metrics_says_nothing():
    job = {"metadata": {"name": "el"}}
    before = 'distml_launch_group_size{generation="0",rank="0",trainingjob="el"} 0.0\n'
    assert _parse(before, _identity(job, pod(0, 0))) is None
    assert _parse(None, _identity(job, pod(0, 0))) is None
    assert _parse("<html>not an exposition</html>", _identity(job, pod(0, 0))) is None
