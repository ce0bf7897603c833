"""The operator creates worker pods with its own rights, so a template that breaks the
namespace's pod policy gets no pod: it waits Queued, with a Warning naming the field."""

from __future__ import annotations

from distml import podpolicy
from distml.api.models import Phase
from distml.trainingjob.model import Outcome, PhaseChange
from distml.trainingjob.observe import Observation


def decide(o: Observation) -> Outcome | None:
    if o.admission is not None:
        return None
    rules = o.settings.pod_rules
    level = podpolicy.namespace_level(o.world.namespace, rules.default_level)
    violations = podpolicy.check_template(o.spec.template, level, rules, o.spec.gang.scheduler_name)
    if not violations:
        return None
    more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
    return Outcome(
        phase=PhaseChange(
            Phase.QUEUED,
            "PodPolicyViolation",
            f"no pod created: the template breaks the {level!r} pod policy of namespace "
            f"{o.meta['namespace']}: {violations[0]}{more}",
            "Warning",
        ),
        status={"queued_time": o.status.queued_time or o.stamp},
        requeue_after=o.settings.queued_recheck_seconds * 4,
    )
