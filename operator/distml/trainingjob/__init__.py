"""TrainingJob's pure side: observe the job and its world, decide by policies in a written
order, render its pods. The operator core (distml.handlers.operator) is the I/O around it."""

from distml.trainingjob.demand import demand
from distml.trainingjob.model import (
    Event,
    Plan,
    PodDeletion,
    Settings,
    World,
    dump_status,
    only_counts_changed,
    read_status,
    status_changed,
)
from distml.trainingjob.planner import plan_reconcile

__all__ = [
    "Event",
    "Plan",
    "PodDeletion",
    "Settings",
    "World",
    "demand",
    "dump_status",
    "only_counts_changed",
    "plan_reconcile",
    "read_status",
    "status_changed",
]
