"""ServingJob's pure side: render its replicas and Service, decide the rolling update. The
operator core (distml.handlers.operator) is the I/O around it, shared with TrainingJob."""

from distml.servingjob.demand import demand
from distml.servingjob.planner import Signals, plan_reconcile

__all__ = ["Signals", "demand", "plan_reconcile"]
