"""A worker pod rendered whole, compared with what a user reads in `kubectl get -o yaml`."""

from __future__ import annotations

import yaml

from distml.api.models import TrainingJobSpec
from distml.rendering import render_headless_service, render_worker_pod

from .builders import make_job

EXPECTED_POD = """
apiVersion: v1
kind: Pod
metadata:
  name: llm-worker-1-2
  namespace: team
  labels:
    app: llm
    distml.io/job-name: llm
    distml.io/rank: "1"
    distml.io/restart-generation: "2"
    distml.io/replica-type: worker
    app.kubernetes.io/managed-by: distml-operator
    distml.io/owner-kind: TrainingJob
    distml.io/owner-uid: uid-1
  annotations:
    scheduling.k8s.io/group-name: llm
  ownerReferences:
  - apiVersion: distml.io/v1alpha1
    kind: TrainingJob
    name: llm
    uid: uid-1
    controller: true
    blockOwnerDeletion: true
spec:
  containers:
  - name: trainer
    image: img
    env:
    - {name: PET_NNODES, value: "2"}
    - {name: PET_NPROC_PER_NODE, value: "8"}
    - {name: PET_NODE_RANK, value: "1"}
    - {name: PET_RDZV_BACKEND, value: c10d}
    - {name: PET_RDZV_ENDPOINT, value: "llm-0.llm.team.svc.cluster.local:29400"}
    - {name: PET_RDZV_ID, value: uid-1-2}
    - {name: PET_MAX_RESTARTS, value: "0"}
    - {name: PET_RDZV_CONF, value: "last_call_timeout=2,keep_alive_interval=1,\
keep_alive_max_attempt=3,is_host=false"}
    - {name: MASTER_ADDR, value: llm-0.llm.team.svc.cluster.local}
    - {name: MASTER_PORT, value: "29500"}
    - {name: WORLD_SIZE, value: "16"}
    - {name: RANK, value: "8"}
    - {name: DISTML_JOB_NAME, value: llm}
    - {name: DISTML_RESTART_GENERATION, value: "2"}
    - {name: DISTML_METRICS_PORT, value: "9400"}
    - {name: DISTML_PEER_TIMEOUT_SECONDS, value: "60"}
    - {name: DISTML_TERMINATION_LOG, value: /dev/termination-log}
    - {name: DISTML_NODE_NAME, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
    - {name: USER_VAR, value: kept}
    resources:
      limits: {nvidia.com/gpu: "8"}
      requests: {nvidia.com/gpu: "8"}
  tolerations:
  - {key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}
  restartPolicy: Never
  hostname: llm-1
  subdomain: llm
  enableServiceLinks: false
  automountServiceAccountToken: false
  affinity:
    nodeAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        nodeSelectorTerms:
        - matchFields: [{key: metadata.name, operator: In, values: [gpu-node-007]}]
"""


def test_worker_pod_carries_the_torchrun_contract():
    job = (
        make_job()
        .spec(
            template={
                "metadata": {"labels": {"app": "llm"}},
                "spec": {
                    "containers": [
                        {
                            "name": "trainer",
                            "image": "img",
                            "env": [{"name": "USER_VAR", "value": "kept"}],
                        }
                    ]
                },
            },
            gang={"podGroupAnnotations": {"scheduling.k8s.io/group-name": "llm"}},
        )
        .obj()
    )
    spec = TrainingJobSpec.model_validate(job["spec"])
    pod = render_worker_pod(job["metadata"], spec, 1, 2, node="gpu-node-007")
    assert pod == yaml.safe_load(EXPECTED_POD)


def test_elastic_job_gives_torchrun_a_range_and_its_restarts():
    job = (
        make_job()
        .replicas(3)
        .spec(elastic={"minReplicas": 2, "maxReplicas": 4, "maxRestarts": 5})
        .obj()
    )
    pod = render_worker_pod(job["metadata"], TrainingJobSpec.model_validate(job["spec"]), 0, 0)
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["PET_NNODES"] == "2:4" and env["PET_MAX_RESTARTS"] == "5"


def test_cpu_job_asks_no_gpu_and_runs_one_process_per_pod():
    job = make_job().gpus(0).obj()
    spec = TrainingJobSpec.model_validate(job["spec"])
    pod = render_worker_pod(job["metadata"], spec, 0, 0)
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert "resources" not in pod["spec"]["containers"][0]
    assert "tolerations" not in pod["spec"]
    assert env["PET_NPROC_PER_NODE"] == "1" and env["WORLD_SIZE"] == "2"


def test_scheduler_name_passes_through():
    job = make_job().spec(gang={"schedulerName": "volcano"}).obj()
    pod = render_worker_pod(job["metadata"], TrainingJobSpec.model_validate(job["spec"]), 0, 0)
    assert pod["spec"]["schedulerName"] == "volcano"


def test_headless_service_names_rank_0_before_it_is_ready():
    job = make_job().replicas(64).obj()
    svc = render_headless_service(job["metadata"], TrainingJobSpec.model_validate(job["spec"]))
    assert svc["metadata"]["name"] == "llm"
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    # Rank 0 of every generation, and no other rank: the gang's other 63 pods never touch it.
    assert svc["spec"]["selector"] == {
        "distml.io/job-name": "llm",
        "distml.io/owner-kind": "TrainingJob",
        "distml.io/rank": "0",
    }
    rank0 = render_worker_pod(job["metadata"], TrainingJobSpec.model_validate(job["spec"]), 0, 3)
    assert svc["spec"]["selector"].items() <= rank0["metadata"]["labels"].items()
    assert rank0["spec"]["subdomain"] == svc["metadata"]["name"]


def test_headless_service_names_every_worker_when_asked():
    job = make_job().replicas(4).spec(dnsNames="AllWorkers").obj()
    spec = TrainingJobSpec.model_validate(job["spec"])
    svc = render_headless_service(job["metadata"], spec)
    assert svc["spec"]["selector"] == {
        "distml.io/job-name": "llm",
        "distml.io/owner-kind": "TrainingJob",
    }
    pod = render_worker_pod(job["metadata"], spec, 3, 0)
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()


def test_preflight_runs_first_with_one_process_per_pod_and_the_threshold():
    job = (
        make_job()
        .replicas(3)
        .gpus(8)
        .spec(preflight={"allReduceBytes": 1 << 20, "minBusBwGbps": 12.5})
    )
    spec = TrainingJobSpec.model_validate(job.obj()["spec"])
    pod = render_worker_pod(job.obj()["metadata"], spec, 2, 0)
    init = pod["spec"]["initContainers"][0]
    worker = pod["spec"]["containers"][0]
    assert init["name"] == "preflight" and init["image"] == worker["image"]
    assert init["command"] == ["python", "-m", "distml_runtime.preflight"]
    assert init["args"][:2] == ["--bytes", str(1 << 20)]
    assert init["args"][init["args"].index("--min-busbw-gbps") + 1] == "12.5"
    assert init["resources"] == worker["resources"]  # the same GPUs, so the same links
    env = {e["name"]: e.get("value") for e in init["env"]}
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"]) == ("2", "3", "0")
    assert env["MASTER_ADDR"].startswith(f"{job.obj()['metadata']['name']}-0.")
    assert init["terminationMessagePath"] == "/dev/termination-log"


def test_no_preflight_no_init_container():
    job = make_job().obj()
    pod = render_worker_pod(job["metadata"], TrainingJobSpec.model_validate(job["spec"]), 0, 0)
    assert "initContainers" not in pod["spec"]


def test_the_pin_to_a_node_narrows_every_node_affinity_term_of_the_template():
    terms = [
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]},
    ]
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": terms}}}  # fmt: skip
    job = make_job().spec(
        template={"spec": {"containers": [{"name": "t", "image": "i"}], "affinity": affinity}}
    )
    spec = TrainingJobSpec.model_validate(job.obj()["spec"])
    pod = render_worker_pod(job.obj()["metadata"], spec, 0, 0, node="n3")
    got = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    pin = {"key": "metadata.name", "operator": "In", "values": ["n3"]}
    assert got["nodeSelectorTerms"] == [{**t, "matchFields": [pin]} for t in terms]
    assert spec.template["spec"]["affinity"] == affinity  # the job's own template is untouched


def test_a_template_that_asks_for_the_token_keeps_it():
    job = make_job().spec(
        template={
            "spec": {
                "containers": [{"name": "t", "image": "i"}],
                "automountServiceAccountToken": True,
            }
        }
    )
    spec = TrainingJobSpec.model_validate(job.obj()["spec"])
    assert render_worker_pod(job.obj()["metadata"], spec, 0, 0)["spec"][
        "automountServiceAccountToken"
    ]
