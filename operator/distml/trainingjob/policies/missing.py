"""Workers missing from the admitted generation: while it was Running, a deleted pod is a lost
rank and the group restarts; before that, the missing pods are created (each pinned to the node
its admission gave it) and the next policies judge the gang."""

from __future__ import annotations

from distml import podstate, rendering
from distml.api.models import Phase
from distml.policies.restart import Failure
from distml.trainingjob import actions
from distml.trainingjob.model import Outcome
from distml.trainingjob.observe import Observation


def decide(o: Observation) -> Outcome | None:
    adm = o.admission
    if adm is None:
        return None
    cur, want = o.current, o.want
    if len(cur) >= want and not any(podstate.is_deleting(p) for p in cur):
        return None
    present = {podstate.rank(p) for p in cur if not podstate.is_deleting(p)}
    if o.stored.phase == Phase.RUNNING:
        lost = [
            Failure(r, rendering.pod_name(o.name, r, o.generation), None, "the pod was deleted")
            for r in range(want)
            if r not in present
        ]
        return actions.restart(o, lost)
    return Outcome(create=actions.create_missing(o, adm, present, want), final=False)
