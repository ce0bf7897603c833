"""Label and annotation keys distml puts on what it creates."""

JOB_NAME = "distml.io/job-name"
RANK = "distml.io/rank"
GENERATION = "distml.io/restart-generation"
REPLICA_TYPE = "distml.io/replica-type"
MANAGED_BY = "app.kubernetes.io/managed-by"
OPERATOR = "distml-operator"
GPU = "nvidia.com/gpu"
GPU_TAINT_KEY = "nvidia.com/gpu"
METRICS_PORT = 9400
OWNER_KIND = "distml.io/owner-kind"  # the kind of the job that owns a pod or Service
OWNER_UID = "distml.io/owner-uid"  # and its UID: a job recreated under the same name is another
REVISION = "distml.io/revision"  # the ServingJob revision a serving replica runs
SERVING = "distml.io/serving"  # "true": in its ServingJob's Service; "false": draining
REPLICA = "distml.io/replica"  # a pipeline-split serving replica: the group its stage pods make
STAGE = "distml.io/stage"  # and which stage a pod is (0 serves the protocol)
STAGES = "distml.io/stages"  # and how many stages its replica has
DRAIN_STARTED = "distml.io/drain-started"  # when a serving replica left its Service (RFC 3339)
