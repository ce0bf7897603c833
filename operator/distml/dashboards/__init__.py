"""Grafana dashboards as code (grafana-foundation-sdk): `python -m distml.dashboards DIR` writes
the operator, training and serving dashboards as JSON (make dashboards); the chart ships them as
ConfigMaps for Grafana's sidecar. Every query uses metrics the code exports; a test runs each one
against a real Prometheus scraping real processes and fails on any that returns nothing."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
JOB = 'trainingjob=~"$trainingjob"'


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class PanelSpec:
    title: str
    queries: tuple[Query, ...]
    unit: str = "short"
    kind: str = "timeseries"  # or "stat"
    description: str = ""


def _quantiles(metric: str, window: str, by: str = "") -> tuple[Query, ...]:
    group = f"le{', ' + by if by else ''}"
    return tuple(
        Query(
            f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket[{window}])))",
            f"p{int(q * 100)}",
        )
        for q in (0.5, 0.99)
    )


OPERATOR = [
    PanelSpec(
        "TrainingJobs by phase",
        (Query("sum by (phase) (distml_trainingjobs)", "{{phase}}"),),
    ),
    PanelSpec(
        "Reconcile latency",
        _quantiles("distml_reconcile_duration_seconds", "$__rate_interval"),
        "s",
    ),
    PanelSpec(
        "Apply to all workers Running",
        _quantiles("distml_job_time_to_running_seconds", "$__range"),
        "s",
        description="From kubectl apply to every worker Running, over the dashboard's range",
    ),
    PanelSpec(
        "Queue wait before admission",
        _quantiles("distml_job_queue_wait_seconds", "$__range"),
        "s",
        description="How long gangs waited in Queued for free GPUs",
    ),
    PanelSpec(
        "Group restarts",
        (
            Query(
                "sum by (reason) (increase(distml_job_restarts_total[$__rate_interval]))",
                "{{reason}}",
            ),
        ),
    ),
    PanelSpec(
        "Resizes",
        (
            Query(
                "sum by (direction, reason) (increase(distml_elastic_resizes_total[$__range]))",
                "elastic {{direction}} {{reason}}",
            ),
            Query("sum(increase(distml_job_resizes_total[$__range]))", "new generation"),
        ),
        description="Elastic jobs growing and shrinking without a restart (PodLost, NodeLost, "
        "Replaced, ScaledUp, ScaledDown), and fixed-size jobs started again at a new "
        "spec.replicas; none counts against backoffLimit",
    ),
    PanelSpec(
        "Pods created",
        (Query("sum(rate(distml_pods_created_total[$__rate_interval]))", "pods/s"),),
        "ops",
    ),
    PanelSpec(
        "Gang timeouts",
        (Query("sum(increase(distml_gang_timeouts_total[$__range]))"),),
        kind="stat",
    ),
    PanelSpec(
        "Reconcile errors",
        (Query("sum(rate(distml_reconcile_errors_total[$__rate_interval]))", "errors/s"),),
        "ops",
    ),
    PanelSpec(
        "ServingJobs by phase",
        (Query("sum by (phase) (distml_servingjobs)", "{{phase}}"),),
    ),
    PanelSpec(
        "Serving replicas by state",
        (Query("sum by (state) (distml_serving_replicas)", "{{state}}"),),
        description="Starting, Ready, NotReady (readiness failing), Draining (out of the Service)",
    ),
    PanelSpec(
        "Rollout duration",
        _quantiles("distml_serving_rollout_duration_seconds", "$__range"),
        "s",
        description="From a ServingJob's new revision to every replica running it",
    ),
    PanelSpec(
        "Serving replicas replaced",
        (Query("sum(increase(distml_serving_replicas_replaced_total[$__range]))"),),
        kind="stat",
        description="Replicas whose pod failed (server died, liveness failed) and were replaced",
    ),
]

TRAINING = [
    PanelSpec(
        "Samples per second",
        (
            Query(
                f"sum by (trainingjob) (distml_train_samples_per_second{{{JOB}}})",
                "{{trainingjob}}",
            ),
        ),
    ),
    PanelSpec(
        "Step time by rank",
        (Query(f"distml_train_step_duration_seconds{{{JOB}}}", "{{trainingjob}} rank {{rank}}"),),
        "s",
    ),
    PanelSpec(
        "Loss",
        (Query(f"avg by (trainingjob) (distml_train_loss{{{JOB}}})", "{{trainingjob}}"),),
    ),
    PanelSpec(
        "Gradient all-reduce time per step",
        (
            Query(
                f"max by (trainingjob) (distml_train_allreduce_duration_seconds{{{JOB}}})",
                "{{trainingjob}} slowest rank",
            ),
        ),
        "s",
    ),
    PanelSpec(
        "Steps per second",
        (
            Query(
                f"sum by (trainingjob) (rate(distml_train_steps_total{{{JOB}}}[$__rate_interval]))",
                "{{trainingjob}}",
            ),
        ),
        "ops",
    ),
    PanelSpec(
        "Checkpoints written",
        (
            Query(
                "sum by (trainingjob) "
                f"(increase(distml_train_checkpoints_total{{{JOB}}}[$__range]))",
                "{{trainingjob}}",
            ),
        ),
        kind="stat",
    ),
    PanelSpec(
        "All-reduce bus bandwidth (benchmark)",
        (Query("max by (algo, bytes) (distml_allreduce_busbw_gbps)", "{{algo}} {{bytes}} B"),),
        "GBs",
        description="busbw as nccl-tests defines it, from the all-reduce benchmark",
    ),
    PanelSpec(
        "GPU utilisation (DCGM)",
        (Query('avg by (pod) (DCGM_FI_DEV_GPU_UTIL{pod=~"$trainingjob-worker-.*"})', "{{pod}}"),),
        "percent",
    ),
    PanelSpec(
        "GPU memory used (DCGM)",
        (Query('sum by (pod) (DCGM_FI_DEV_FB_USED{pod=~"$trainingjob-worker-.*"})', "{{pod}}"),),
        "decmbytes",
    ),
]

SERVING = [
    PanelSpec(
        "Requests per second",
        (Query("sum by (code) (rate(distml_serve_requests_total[$__rate_interval]))", "{{code}}"),),
        "reqps",
    ),
    PanelSpec(
        "Request latency",
        _quantiles("distml_serve_request_duration_seconds", "$__rate_interval"),
        "s",
    ),
    PanelSpec(
        "Rows per forward pass",
        (
            Query(
                "sum(rate(distml_serve_batch_size_sum[$__rate_interval]))"
                " / sum(rate(distml_serve_batch_size_count[$__rate_interval]))",
                "mean batch",
            ),
        ),
    ),
    PanelSpec(
        "Inference time per batch",
        _quantiles("distml_serve_inference_duration_seconds", "$__rate_interval"),
        "s",
    ),
    PanelSpec("Queue depth", (Query("sum(distml_serve_queue_depth)", "waiting"),)),
    PanelSpec(
        "Replicas: desired and Ready",
        (
            Query(
                "sum by (servingjob) (distml_serving_desired_replicas)", "{{servingjob}} desired"
            ),
            Query("sum by (servingjob) (distml_serving_ready_replicas)", "{{servingjob}} Ready"),
        ),
        description="What each ServingJob asks for (spec.replicas, or its autoscaler's count) "
        "against what serves",
    ),
]

DASHBOARDS = {
    "operator": ("distml / operator", OPERATOR),
    "training": ("distml / training", TRAINING),
    "serving": ("distml / serving", SERVING),
}


def _panel(spec: PanelSpec) -> timeseries.Panel | stat.Panel:
    panel = timeseries.Panel() if spec.kind == "timeseries" else stat.Panel()
    panel.title(spec.title).unit(spec.unit).datasource(DATASOURCE).height(8).span(12)
    if spec.description:
        panel.description(spec.description)
    for ref, q in zip("ABCDEFGH", spec.queries, strict=False):
        target = prometheus.Dataquery().expr(q.expr).ref_id(ref).datasource(DATASOURCE)
        if q.legend:
            target.legend_format(q.legend)
        panel.with_target(target)
    return panel


def build(uid: str) -> dict[str, object]:
    title, panels = DASHBOARDS[uid]
    board = (
        db.Dashboard(title)
        .uid(f"distml-{uid}")
        .tags(["distml"])
        .refresh("30s")
        .time("now-1h", "now")
        .with_variable(db.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
    )
    if uid == "training":
        board.with_variable(
            db.QueryVariable("trainingjob")
            .label("TrainingJob")
            .datasource(DATASOURCE)
            .query("label_values(distml_train_step, trainingjob)")
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
    for spec in panels:
        board.with_panel(_panel(spec))
    return dict(json.loads(json.dumps(board.build(), cls=JSONEncoder)))


def render(uid: str) -> str:
    return json.dumps(build(uid), indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    out = Path(argv[0] if argv else "charts/distml/dashboards")
    out.mkdir(parents=True, exist_ok=True)
    for uid in DASHBOARDS:
        (out / f"{uid}.json").write_text(render(uid))
        print(f"wrote {out / uid}.json", file=sys.stderr)
    return 0
