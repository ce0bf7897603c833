"""The observation a TrainingJob's policies decide from, built once per reconcile: the spec
parsed, the status typed, the job's pods told apart by owner, generation and state, the nodes by
name. Frozen: policies read it; the planner builds the next one when a policy changed the status.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from distml import admission, labels, podstate
from distml.api.models import Admission, SuspectNode, TrainingJobSpec, TrainingJobStatus
from distml.podstate import iso, parse_time
from distml.policies import disruption
from distml.policies.restart import Failure
from distml.trainingjob.model import Settings, World, read_status

Obj = dict[str, Any]
SUSPECT_SECONDS = 300.0  # how long a job's admissions avoid a node its pod went silent on


@dataclass(frozen=True)
class Observation:
    world: World
    settings: Settings
    spec: TrainingJobSpec
    stored: TrainingJobStatus  # as the API has it: what Events compare against
    status: TrainingJobStatus  # with the decisions of the policies before this one
    nodes: Mapping[str, Obj]
    disruption: disruption.Disruption
    pods: tuple[Obj, ...]  # this job's, every generation
    # Pods of an earlier job of the same name are not ours, whatever their labels say; the
    # garbage collector (or the orphan sweep) removes them, and ours wait for their names.
    predecessors: tuple[Obj, ...]

    def with_status(self, status: TrainingJobStatus) -> Observation:
        return dataclasses.replace(self, status=status)

    # --- the job --------------------------------------------------------------------------

    @property
    def meta(self) -> Obj:
        meta: Obj = self.world.job["metadata"]
        return meta

    @property
    def name(self) -> str:
        return str(self.meta["name"])

    @property
    def now(self) -> dt.datetime:
        return self.world.now

    @property
    def stamp(self) -> str:
        return iso(self.world.now)

    @property
    def generation(self) -> int:
        return self.status.restart_generation

    @property
    def admission(self) -> Admission | None:
        """The admission of the current generation, if it has one."""
        adm = self.status.admission
        if adm is not None and adm.restart_generation == self.generation:
            return adm
        return None

    @property
    def want(self) -> int:
        """How many workers the current generation runs."""
        adm = self.admission
        return self.spec.replicas if self.spec.elastic or adm is None else adm.replicas

    @cached_property
    def suspects(self) -> list[SuspectNode]:
        """The suspect nodes this job's admissions still avoid."""
        bound = dt.timedelta(seconds=SUSPECT_SECONDS)
        return [
            s
            for s in self.status.suspect_nodes
            if (since := parse_time(s.since)) is not None and self.now - since < bound
        ]

    # --- its pods -------------------------------------------------------------------------

    @cached_property
    def current(self) -> list[Obj]:
        return [p for p in self.pods if podstate.generation(p) == self.generation]

    @cached_property
    def stale(self) -> list[Obj]:
        return [p for p in self.pods if podstate.generation(p) != self.generation]

    def in_phase(self, phase: str) -> list[Obj]:
        return [p for p in self.current if podstate.phase(p) == phase]

    # --- their nodes ----------------------------------------------------------------------

    @cached_property
    def not_ready(self) -> frozenset[str]:
        if self.world.not_ready is not None:
            return self.world.not_ready
        return frozenset(n for n, node in self.nodes.items() if not podstate.node_ready(node))

    def node_dead(self, pod: Obj) -> bool:
        node = podstate.node_name(pod)
        if not node:
            return False
        return node not in self.nodes or node in self.not_ready

    def disrupted(self, pod: Obj) -> bool:
        """A live pod whose node is NotReady because of a disruption: not lost."""
        node = podstate.node_name(pod)
        return (
            node in self.not_ready
            and not podstate.is_terminal(pod)
            and (self.disruption.covers(node) or node in self.world.held_nodes)
        )

    def loss_pending(self, pod: Obj) -> float:
        """Seconds before a live pod on a NotReady node counts as lost (0: it does, or its node
        is Ready or gone)."""
        node = podstate.node_name(pod)
        if node not in self.not_ready or podstate.is_terminal(pod):
            return 0.0
        return disruption.loss_pending(
            self.nodes[node], self.world.now, self.settings.node_loss_seconds
        )

    def held(self, pod: Obj) -> bool:
        return self.disrupted(pod) or self.loss_pending(pod) > 0

    def failure(self, pod: Obj) -> Failure | None:
        """How a pod failed (its exit code), or was lost with its node (gone, or NotReady and
        not held); None while it runs or has succeeded."""
        name, rank = pod["metadata"]["name"], podstate.rank(pod)
        if podstate.phase(pod) == "Failed":
            code = podstate.exit_code(pod)
            why = podstate.failure_reason(pod)
            return Failure(rank, name, code if code is not None else 1, why)
        if not podstate.is_terminal(pod) and self.node_dead(pod) and not self.held(pod):
            node = podstate.node_name(pod)
            state = "gone" if node not in self.nodes else "NotReady"
            return Failure(rank, name, None, f"its node {node} is {state}")
        return None


def observe(world: World, settings: Settings) -> Observation:
    meta = world.job["metadata"]
    stored = read_status(world.job)
    status = stored.model_copy(deep=True)
    status.observed_generation = meta.get("generation")
    status.selector = f"{labels.JOB_NAME}={meta['name']}"
    uid = meta.get("uid")
    return Observation(
        world=world,
        settings=settings,
        spec=TrainingJobSpec.model_validate(world.job["spec"]),
        stored=stored,
        status=status,
        nodes=world.node_map
        if world.node_map is not None
        else {n["metadata"]["name"]: n for n in world.nodes},
        disruption=world.disruption
        if world.disruption is not None
        else disruption.find(world.nodes),
        pods=tuple(p for p in world.pods if admission.owner_uid(p) == uid),
        predecessors=tuple(
            p
            for p in world.pods
            if admission.owner_uid(p) != uid
            and (p["metadata"].get("labels") or {}).get(labels.MANAGED_BY) == labels.OPERATOR
        ),
    )
