"""A gang admitted by an operator that kept no admission record (admittedTime, pods, no
admission): the record is made from the spec, and what it started is carried on."""

from __future__ import annotations

from distml.api.models import Admission
from distml.trainingjob.model import Outcome
from distml.trainingjob.observe import Observation


def decide(o: Observation) -> Outcome | None:
    if o.admission is not None or not o.current or not o.status.admitted_time:
        return None
    adm = Admission(
        restart_generation=o.generation,
        replicas=o.spec.replicas,
        gpus_per_replica=o.spec.gpus_per_replica,
        time=o.status.admitted_time,
    )
    return Outcome(status={"admission": adm}, final=False)
