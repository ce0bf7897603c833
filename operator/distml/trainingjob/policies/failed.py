"""A worker that failed, or whose node is gone or lost (not merely disrupted): the group
restarts, or the job fails, as its restart policy and backoffLimit say."""

from __future__ import annotations

from distml import podstate
from distml.policies.restart import Failure
from distml.trainingjob import actions
from distml.trainingjob.model import Outcome
from distml.trainingjob.observe import Observation


def failures(o: Observation) -> list[Failure]:
    out = []
    for pod in o.current:
        name = pod["metadata"]["name"]
        if podstate.phase(pod) == "Failed":
            code = podstate.exit_code(pod)
            why = podstate.failure_reason(pod)
            out.append(Failure(podstate.rank(pod), name, code if code is not None else 1, why))
        elif not podstate.is_terminal(pod) and o.node_dead(pod) and not o.held(pod):
            node = podstate.node_name(pod)
            why = "gone" if node not in o.nodes else "NotReady"
            out.append(Failure(podstate.rank(pod), name, None, f"its node {node} is {why}"))
    return out


def decide(o: Observation) -> Outcome | None:
    if o.admission is None:
        return None
    found = failures(o)
    return actions.restart(o, found) if found else None
