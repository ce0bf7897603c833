"""A worker that failed, or whose node is gone or lost (not merely disrupted): the group
restarts, or the job fails, as its restart policy and backoffLimit say.

When every failed worker only lost a peer (exit PEER_LOST) and some pod of the group still looks
alive, that pod is the one they lost: it went silent (its node cut off, its worker hung), and
its node may not turn NotReady for a minute. The group restarts at once, without waiting for the
node controller: the silent pods are force-deleted (no kubelet may answer) and their nodes are
suspect, avoided by this job's admissions for a while (observe.SUSPECT_SECONDS)."""

from __future__ import annotations

from distml import podstate
from distml.api.models import SuspectNode
from distml.podstate import parse_time
from distml.policies.restart import PEER_LOST, Failure
from distml.trainingjob import actions
from distml.trainingjob.model import Outcome
from distml.trainingjob.observe import Observation


def failures(o: Observation) -> list[Failure]:
    return [f for pod in o.current if (f := o.failure(pod)) is not None]


SILENT_GRACE_SECONDS = 3.0  # peers that lost the same rank report it within moments


def decide(o: Observation) -> Outcome | None:
    if o.admission is None:
        return None
    found = failures(o)
    if not found:
        return None
    if not all(f.exit_code == PEER_LOST for f in found):
        return actions.restart(o, found)
    silent = [p for p in o.current if not podstate.is_terminal(p) and not podstate.is_deleting(p)]
    if not silent:
        return actions.restart(o, found)
    reported = [
        t for p in o.current if podstate.phase(p) == "Failed"
        if (t := parse_time(podstate.finished_at(p))) is not None
    ]  # fmt: skip
    first = min(reported, default=o.now)
    wait = SILENT_GRACE_SECONDS - (o.now - first).total_seconds()
    if wait > 0:
        return Outcome(requeue_after=wait)  # the others may still report theirs
    lost = [
        Failure(
            podstate.rank(p),
            p["metadata"]["name"],
            None,
            f"it went silent on node {podstate.node_name(p) or '(none)'}: its peers lost it",
        )
        for p in silent
    ]
    silent_nodes = {podstate.node_name(p) for p in silent}
    suspects = [
        *(s for s in o.status.suspect_nodes if s.node not in silent_nodes),
        *(
            SuspectNode(
                node=node,
                since=o.stamp,
                reason=f"pod {p['metadata']['name']} went silent while its peers lost it",
            )
            for p in silent
            if (node := podstate.node_name(p))
        ),
    ]
    return actions.restart(
        o,
        [*lost, *found],
        force=frozenset(p["metadata"]["name"] for p in silent),
        status={"suspect_nodes": suspects},
    )
