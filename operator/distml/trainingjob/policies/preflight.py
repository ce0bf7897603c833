"""spec.preflight: what the generation's preflight measured is recorded (every pod reaches the
same verdict; the lowest rank's is kept), and links too slow fail the job: a restart on the
same nodes would not make them faster."""

from __future__ import annotations

from distml import podstate, rendering
from distml.api.models import Phase, PreflightStatus
from distml.trainingjob import actions
from distml.trainingjob.model import Event, Outcome, Signals
from distml.trainingjob.observe import Observation

EXIT_PREFLIGHT_SLOW = 3  # distml_runtime.preflight.EXIT_SLOW: busbw below the job's minimum
RECORDED = ("passed", "busBwGbps", "algBwGbps", "bytes", "worldSize", "slowestLink",
            "slowestLinkGbps", "links", "message", "measuredAt")  # fmt: skip


def decide(o: Observation) -> Outcome | None:
    if o.admission is None or o.spec.preflight is None:
        return None
    results = sorted(
        (podstate.rank(p), r)
        for p in o.current
        if (r := podstate.init_result(p, rendering.PREFLIGHT_CONTAINER)) is not None
    )
    slow = [r for _rank, r in results if r[0] == EXIT_PREFLIGHT_SLOW and r[1]]
    passed = [r for _rank, r in results if r[0] == 0 and r[1]]
    _code, verdict = (slow or passed or [(0, None)])[0]
    if verdict is None:
        return None
    status: dict[str, PreflightStatus] = {}
    events: tuple[Event, ...] = ()
    signals = Signals()
    recorded = o.status.preflight
    if recorded is None or recorded.restart_generation != o.generation:
        status["preflight"] = PreflightStatus.model_validate(
            {**{k: verdict[k] for k in RECORDED if k in verdict}, "restartGeneration": o.generation}
        )
        signals = Signals(preflight_busbw_gbps=float(verdict.get("busBwGbps", 0.0)))
        if not slow:
            events = (Event("Normal", "PreflightPassed", f"preflight: {verdict.get('message')}"),)
    if slow:
        message = f"preflight: {verdict.get('message')}"
        return actions.finish(
            o, Phase.FAILED, "PreflightFailed", message, status=status, signals=signals
        )
    return Outcome(status=status, events=events, signals=signals, final=False) if status else None
