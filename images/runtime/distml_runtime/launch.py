"""The pod entrypoint: turns the operator's env contract into a torchrun launch.

    python -m distml_runtime.launch -- python -m distml_runtime.train.ddp --steps 1000

torchrun reads its settings from the PET_* variables the operator sets (PET_NNODES,
PET_NPROC_PER_NODE, PET_NODE_RANK, PET_RDZV_BACKEND, PET_RDZV_ENDPOINT, PET_RDZV_ID,
PET_MAX_RESTARTS); without them it runs standalone on this host. On top of torchrun it
- serves /metrics for every worker (prometheus_client's multiprocess mode) on DISTML_METRICS_PORT,
  and its own view of the group: distml_launch_group_size (the pods in its latest rendezvous
  round; the operator reads it to see a shrink when the ranks make it, not when a node is
  declared lost), distml_launch_worker_restarts (restarts of its workers it spent from
  torchrun's max restarts) and distml_launch_membership_changes;
- passes SIGTERM on to the workers so they can checkpoint (torchrun's agent does the forwarding);
- turns on Python's faulthandler in the workers, so one that dies of SIGABRT, SIGSEGV or the like
  (a C++ library aborting, say) logs every thread's Python stack, and the log says where;
- exits with a code that tells the operator whether a restart can help: 0 success; 128+N when a
  worker died of signal N (killed, OOM-killed, preempted: retryable); a worker's own exit code
  1-127 otherwise (an application error: restarting will not help); 75 (EX_TEMPFAIL) when the
  rendezvous itself failed (retryable); 76 when the workers lost a peer (retryable);
- in an elastic group (PET_NNODES min:max), takes workers that all exited 76 (they lost a peer,
  or a peer left: see distml_runtime.peers) for a change of membership, not a failure: the
  group meets again in one rendezvous round at the new size without spending one of torchrun's
  max restarts, at most DISTML_MAX_MEMBERSHIP_CHANGES times (default 1000); a group of fixed
  size ends with 76 instead, for the operator to restart it elsewhere;
- leaves the rendezvous open when its own workers failed for good, so its peers can go on;
- in an elastic group, outlives the pod that hosts the rendezvous store (slot 0, told so by
  is_host in PET_RDZV_CONF): when the store goes with its pod, a new agent joins the store its
  replacement brings up under the same name (HostLoss), instead of ending this pod;
- gives every rendezvous round a fresh store (TORCH_DISABLE_SHARE_RDZV_TCP_STORE): ranks of a
  new round must never read the addresses the ranks of an earlier one left in a shared store;
- orders the group's node ranks by the pod's own rank (PET_NODE_RANK, which the operator sets):
  torch's c10d rendezvous orders them by host name, so pod job-10 would come before job-2 and
  the ranks the operator placed stage by stage would run elsewhere. Pod i holds global ranks
  [i x nproc, (i + 1) x nproc), as the operator's placement assumes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any

from distml_runtime.peers import EXIT_PEER_LOST

EXIT_RENDEZVOUS = 75
MEMBERSHIP_ENV = "DISTML_MAX_MEMBERSHIP_CHANGES"


def exit_code_for(failures: dict[int, int]) -> int:
    """Chooses the pod's exit code from workers' exit codes {rank: code}, where a negative code
    is a signal death (Python's convention): any signal death wins, since a restart can help;
    else the lowest rank's own code."""
    codes = [code for _rank, code in sorted(failures.items())]
    signals = [-c for c in codes if c < 0]
    if signals:
        return 128 + signals[0]
    return next((min(c, 255) for c in codes if c > 0), 1)


def torchrun_argv(command: list[str], env: dict[str, str]) -> list[str]:
    """torchrun's own options come from the PET_* env; only the program and standalone mode here."""
    argv = [] if env.get("PET_RDZV_ENDPOINT") else ["--standalone"]
    if command and command[0].endswith(".py"):
        return [*argv, *command]
    return [*argv, "--no-python", *command]


def membership_change(exit_codes: list[int]) -> bool:
    """Whether a worker group that ended with these codes only lost or shed a peer."""
    return bool(exit_codes) and all(code == EXIT_PEER_LOST for code in exit_codes)


def elastic_group(nnodes: str) -> bool:
    """Whether torchrun's --nnodes (PET_NNODES) lets the group change size ("2:4" does, "4" and
    "4:4" do not). A group of fixed size that lost a peer cannot go on: its pods end with 76 and
    the operator restarts the group elsewhere."""
    low, _, high = nnodes.partition(":")
    return bool(high) and int(low) < int(high)


def elastic_agent() -> type[Any]:
    """torchrun's agent, told apart failures from changes of membership (see the module doc)."""
    from torch.distributed.elastic.agent.server.api import WorkerState
    from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent

    budget = int(os.environ.get(MEMBERSHIP_ENV, "1000"))
    if not elastic_group(os.environ.get("PET_NNODES", "1")):
        budget = 0

    class Agent(LocalElasticAgent):
        membership_changes = 0
        gauges: GroupGauges | None = None

        def _rendezvous(self, worker_group: Any) -> None:
            super()._rendezvous(worker_group)
            if self.gauges is None and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
                # One set for the launcher's life: a new agent after a host loss shares it.
                type(self).gauges = GroupGauges()
            if self.gauges is not None:
                first_max = worker_group.spec.max_restarts - self.membership_changes
                self.gauges.set(worker_group.group_world_size,
                                first_max - self._remaining_restarts,
                                self.membership_changes)  # fmt: skip

        def _monitor_workers(self, worker_group: Any) -> Any:
            result = super()._monitor_workers(worker_group)
            if result.state not in (WorkerState.UNHEALTHY, WorkerState.FAILED):
                return result
            codes = [f.exitcode for f in result.failures.values()]
            if membership_change(codes) and self.membership_changes < budget:
                self.membership_changes += 1
                # The agent's loop spends one restart next; give it back, and count one more
                # attempt so the new round's ranks get a new TORCHELASTIC_RESTART_COUNT.
                worker_group.spec.max_restarts += 1
                self._remaining_restarts += 1
                print(
                    f"[distml launch] a peer was lost or left: meeting again "
                    f"(membership change {self.membership_changes}; not a restart)",
                    file=sys.stderr,
                    flush=True,
                )
            return result

        def run(self, role: str = "default") -> Any:
            result = super().run(role)
            if result.is_failed():
                # Leave without closing the rendezvous (torch closes it for good when an agent
                # ends with failed workers): whether the others go on without this pod or the
                # group restarts is the operator's call, not this pod's.
                handler = self._worker_group.spec.rdzv_handler
                setattr(handler, "shutdown", lambda: True)  # noqa: B010
            return result

    return Agent


class GroupGauges:
    """The launcher's own series, beside its workers' (multiprocess mode: one file per process),
    labelled with the pod they are about (job, rank, restart generation from the operator's
    env): pods that share an address, as on process nodes, cannot be taken for each other."""

    def __init__(self) -> None:
        from prometheus_client import Gauge

        pod = {
            "trainingjob": os.environ.get("DISTML_JOB_NAME", "local"),
            "rank": os.environ.get("PET_NODE_RANK", "0"),
            "generation": os.environ.get("DISTML_RESTART_GENERATION", "0"),
        }

        def gauge(name: str, text: str) -> Any:
            return Gauge(name, text, list(pod), multiprocess_mode="livemax").labels(**pod)

        self.size = gauge("distml_launch_group_size", "Pods in this pod's latest rendezvous round")
        self.restarts = gauge(
            "distml_launch_worker_restarts", "Worker restarts spent from torchrun's max restarts"
        )
        self.changes = gauge(
            "distml_launch_membership_changes", "Rounds met again because a peer left or was lost"
        )

    def set(self, size: int, restarts: int, changes: int) -> None:
        self.size.set(size)
        self.restarts.set(restarts)
        self.changes.set(changes)


def order_node_ranks(node_rank: int) -> None:
    """Makes this agent sort before every agent of a higher PET_NODE_RANK in the rendezvous
    (ties: host name, as torch orders them). Every agent of the group runs this launcher, so
    every node descriptor in the shared rendezvous state carries its rank."""
    from torch.distributed.elastic.rendezvous import dynamic_rendezvous as dr

    generator: Any = RankedNodeDescs(node_rank)
    dr.DynamicRendezvousHandler._node_desc_generator = generator


class RankedNodeDescs:
    """torch's node descriptor generator, with the pod's rank in each descriptor's order."""

    def __init__(self, node_rank: int) -> None:
        from torch.distributed.elastic.rendezvous import dynamic_rendezvous as dr

        self.node_rank = node_rank
        self.inner = dr._NodeDescGenerator()

    def generate(self, local_addr: str | None = None) -> Any:
        desc = self.inner.generate(local_addr)
        return ranked_node_desc(desc.addr, desc.pid, desc.local_id, self.node_rank)


def ranked_node_desc(addr: str, pid: int, local_id: int, node_rank: int) -> Any:
    desc = _ranked_class()(addr, pid, local_id)
    object.__setattr__(desc, "node_rank", node_rank)  # frozen: as the dataclass sets fields
    return desc


def _ranked_class() -> Any:
    """torch's node descriptor, equal and hashed as it is, ordered by the pod's rank first.
    Made on first use, so that importing this module needs no torch."""
    made = globals().get("_RankedNodeDesc")
    if made is not None:
        return made
    from torch.distributed.elastic.rendezvous import dynamic_rendezvous as dr

    def key(d: Any) -> tuple[int, str, int, int]:  # a plain descriptor of torch's sorts as 0
        return (getattr(d, "node_rank", 0), d.addr, d.pid, d.local_id)

    class RankedNodeDesc(dr._NodeDesc):
        def __lt__(self, other: Any) -> bool:
            return key(self) < key(other)

        def __le__(self, other: Any) -> bool:
            return key(self) <= key(other)

        def __gt__(self, other: Any) -> bool:
            return key(self) > key(other)

        def __ge__(self, other: Any) -> bool:
            return key(self) >= key(other)

    RankedNodeDesc.__module__ = __name__
    RankedNodeDesc.__qualname__ = RankedNodeDesc.__name__ = "_RankedNodeDesc"
    globals()["_RankedNodeDesc"] = RankedNodeDesc
    return RankedNodeDesc


def __getattr__(name: str) -> Any:
    """pickle finds the descriptor class in an agent that has not made one yet."""
    if name == "_RankedNodeDesc":
        return _ranked_class()
    raise AttributeError(name)


class HostLoss:
    """In an elastic group, a pod that does not host the rendezvous store outlives the one that
    does: when the store goes (its pod was lost), this pod's agent fails to reach it, and the
    launcher starts a new agent that joins the store the host's replacement brings up, under
    the same name, instead of ending the pod. The workers resume from the newest checkpoint,
    as after any change of membership. It gives up (exit 75, the operator restarts the group)
    after DISTML_HOST_LOSS_SECONDS (default 120) without reaching a store; the operator replaces
    slot 0 only where the ledger has room at once, and restarts the group otherwise."""

    def __init__(self, env: dict[str, str]) -> None:
        conf = dict(kv.split("=", 1) for kv in env.get("PET_RDZV_CONF", "").split(",") if "=" in kv)
        self.enabled = elastic_group(env.get("PET_NNODES", "1")) and conf.get(
            "is_host", ""
        ).lower() in ("false", "0", "no")
        self.seconds = float(env.get("DISTML_HOST_LOSS_SECONDS", "120"))
        self.since = self.last = 0.0

    def again(self, err: BaseException) -> bool:
        """Whether to start a new agent after `err`, having waited a moment."""
        if not self.enabled:
            return False
        now = time.monotonic()
        if now - self.last > 30:  # the agent before ran a while: a new loss, a new wait
            self.since = now
        self.last = now
        if now - self.since > self.seconds:
            return False
        print(
            f"[distml launch] the rendezvous store is gone ({err}); joining its host's "
            "replacement (a change of membership, not a restart)",
            file=sys.stderr,
            flush=True,
        )
        time.sleep(1.0)
        return True


def serve_metrics(port: int) -> None:
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    start_http_server(port, registry=registry)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m distml_runtime.launch",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--metrics-port", type=int, default=int(os.environ.get("DISTML_METRICS_PORT", "0") or 0)
    )
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- program and its arguments")
    args = ap.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("give the program to run after --")
    os.environ.setdefault("PYTHONFAULTHANDLER", "1")
    if args.metrics_port:
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="distml-prom-"))
        try:
            serve_metrics(args.metrics_port)
        except OSError as err:  # metrics must never cost the training run
            print(f"[distml launch] no metrics on :{args.metrics_port}: {err}", file=sys.stderr)

    import torch.distributed.launcher.api as launcher_api
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousConnectionError, RendezvousError
    from torch.distributed.run import parse_args, run

    os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    if os.environ.get("PET_NODE_RANK", "").isdigit():
        order_node_ranks(int(os.environ["PET_NODE_RANK"]))
    setattr(launcher_api, "LocalElasticAgent", elastic_agent())  # noqa: B010 (the agent launch_agent makes)
    rejoin = HostLoss(dict(os.environ))
    try:
        while True:
            try:
                run(parse_args(torchrun_argv(command, dict(os.environ))))
                break
            except RendezvousConnectionError as err:
                if not rejoin.again(err):
                    raise
    except ChildFailedError as err:
        failures = {rank: f.exitcode for rank, f in err.failures.items()}
        code = exit_code_for(failures)
        print(f"[distml launch] workers failed {failures}; exiting {code}", file=sys.stderr)
        return code
    except SignalException as err:
        print(f"[distml launch] stopped by {err.sigval.name}", file=sys.stderr)
        return 128 + int(err.sigval)
    except RendezvousError as err:
        print(
            f"[distml launch] rendezvous failed: {err}; exiting {EXIT_RENDEZVOUS}", file=sys.stderr
        )
        return EXIT_RENDEZVOUS
    return 0


if __name__ == "__main__":
    sys.exit(main())
