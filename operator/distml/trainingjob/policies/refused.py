"""The API refused some of the gang's objects (quota, Pod Security admission, a webhook, a name
taken): a half gang would hold its GPUs for nothing, so it is released whole and tried again
after a backoff, with the API's own words in status and a Warning."""

from __future__ import annotations

from distml.trainingjob import actions
from distml.trainingjob.model import Outcome, Signals
from distml.trainingjob.observe import Observation


def decide(o: Observation) -> Outcome | None:
    refused = o.world.refused
    if o.admission is None or not refused:
        return None
    more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
    return actions.release(
        o,
        "CreateRefused",
        lambda wait: (
            f"the API refused the gang's pods: {refused[0]}{more}; released "
            f"{len(o.current)} pods, next attempt in {wait:.0f}s"
        ),
        signals=Signals(refused=True),
    )
