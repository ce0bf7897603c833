"""The operator's Prometheus metrics (prometheus_client, served on --metrics-port)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)

JOBS = Gauge("distml_trainingjobs", "TrainingJobs by phase", ["phase"])
RECONCILE_SECONDS = Histogram(
    "distml_reconcile_duration_seconds",
    "Time one TrainingJob reconcile took",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RECONCILE_ERRORS = Counter("distml_reconcile_errors", "Reconciles that raised")
TIME_TO_RUNNING = Histogram(
    "distml_job_time_to_running_seconds",
    "From the job's creation (kubectl apply) to all its workers Running",
    buckets=_LATENCY,
)
QUEUE_WAIT = Histogram(
    "distml_job_queue_wait_seconds",
    "Time a gang waited in Queued before it was admitted",
    buckets=_LATENCY,
)
PODS_CREATED = Counter("distml_pods_created", "Worker pods created")
RESTARTS = Counter(
    "distml_job_restarts", "Group restarts after a failed or lost worker", ["reason"]
)
GANG_TIMEOUTS = Counter("distml_gang_timeouts", "Gangs released for not all Running in time")
PREFLIGHT_BUSBW = Gauge(
    "distml_job_preflight_busbw_gbps",
    "All-reduce bus bandwidth (Gbit/s) the job's latest preflight measured",
    ["namespace", "trainingjob"],
)
RESIZES = Counter(
    "distml_job_resizes", "New generations started because spec.replicas changed (not failures)"
)
ELASTIC_RESIZES = Counter(
    "distml_elastic_resizes",
    "Elastic jobs' changes of size without a restart: direction shrink or grow, and why "
    "(PodLost, NodeLost, Replaced, ScaledUp, ScaledDown)",
    ["direction", "reason"],
)
CREATES_REFUSED = Counter(
    "distml_gang_creates_refused",
    "Gangs released because the API refused one of their objects (quota, Pod Security, webhook)",
)
EVENTS_FAILED = Counter("distml_events_failed", "Events the API refused; the reconcile went on")
GPUS_RESERVED = Gauge(
    "distml_gpus_admitted", "GPUs of the gangs admitted now (reserved in the ledger or held)"
)
NODES_DISRUPTED = Gauge(
    "distml_nodes_disrupted",
    "NotReady nodes taken for an outage (most nodes of the cluster or a zone NotReady together, "
    "and those not reported back yet since); pods on them are not restarted",
)
RESTARTS_HELD = Counter(
    "distml_restarts_held",
    "Reconciles that held a job's pods on disrupted nodes instead of restarting it",
)
ORPHANS_DELETED = Counter(
    "distml_orphans_deleted",
    "Pods and Services of a TrainingJob that no longer exists, deleted by the operator",
    ["kind"],
)
API_THROTTLED = Counter(
    "distml_api_throttled",
    "Requests the API server throttled (429 Too Many Requests), sent again after its Retry-After",
)
WATCH_RELISTS = Counter(
    "distml_watch_relists",
    "LISTs after a watch ended: its history expired (410 Gone) or it broke",
    ["resource", "reason"],
)
SERVINGJOBS = Gauge("distml_servingjobs", "ServingJobs by phase", ["phase"])
SERVING_REPLICAS = Gauge(
    "distml_serving_replicas",
    "Serving replicas by state (Starting, Ready, NotReady, Draining), over every ServingJob",
    ["state"],
)
ROLLOUT_SECONDS = Histogram(
    "distml_serving_rollout_duration_seconds",
    "From a ServingJob's new revision to every replica running it",
    buckets=_LATENCY,
)
REPLICAS_REPLACED = Counter(
    "distml_serving_replicas_replaced", "Serving replicas replaced after their pod failed"
)
SERVING_DESIRED = Gauge(
    "distml_serving_desired_replicas",
    "The replicas each ServingJob asks for (spec.replicas, or its autoscaler's count)",
    ["namespace", "servingjob"],
)
SERVING_READY = Gauge(
    "distml_serving_ready_replicas",
    "The replicas of each ServingJob that are Ready",
    ["namespace", "servingjob"],
)
AUTOSCALE_DECISIONS = Counter(
    "distml_serving_autoscale_decisions",
    "Changes of an autoscaled ServingJob's replica count, by direction (up, down)",
    ["direction"],
)
AUTOSCALE_READS_FAILED = Counter(
    "distml_serving_autoscale_reads_failed",
    "Reads of a serving replica's metrics that failed (no answer, no such metric)",
)
