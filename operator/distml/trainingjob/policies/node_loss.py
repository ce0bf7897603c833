"""A node just gone NotReady may be the first of many in an outage (nodes go NotReady one by
one): its pods count as lost only once it has been silent for node_loss_seconds."""

from __future__ import annotations

from distml import podstate
from distml.api.models import Phase
from distml.trainingjob.model import Outcome, PhaseChange
from distml.trainingjob.observe import Observation


def decide(o: Observation) -> Outcome | None:
    if o.admission is None:
        return None
    pending = {podstate.node_name(p): left for p in o.current if (left := o.loss_pending(p))}
    if not pending:
        return None
    return Outcome(
        phase=PhaseChange(
            Phase(o.stored.phase or Phase.RUNNING),
            "NodeNotReady",
            f"NotReady: {', '.join(sorted(pending))}; a pod there counts as lost once its node "
            f"has been silent {o.settings.node_loss_seconds:.0f}s, unless many nodes are (an "
            "outage)",
            "Warning",
            announce_reason_once=True,
        ),
        requeue_after=min(pending.values()),
    )
