#!/usr/bin/env bash
# make demo: the main job on the embedded local GPU cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export KUBECONFIG=$PWD/.cluster/kubeconfig
K="bin/kubectl"
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
start=$SECONDS

step "1/5 starting the local GPU cluster (etcd, kube-apiserver, controller manager, scheduler, KWOK)"
$PY -m distml.localcluster up --nodes "${NODES:-4}" --gpus-per-node "${GPUS:-8}" >/dev/null
$K get nodes -L nvidia.com/gpu.product,nvidia.com/gpu.count,topology.kubernetes.io/zone,topology.distml.io/block

step "2/5 installing the CRDs and starting the operator"
$PY -m distml.localcluster operator
$K get crd trainingjobs.distml.io

step "3/5 applying examples/trainingjob.yaml (2 replicas x 8 GPUs) and watching it"
$K delete -f examples/trainingjob.yaml --ignore-not-found --wait=true >/dev/null
$K apply -f examples/trainingjob.yaml
last=""
for _ in $(seq 1 120); do
  now=$($K get tj ddp-digits --no-headers 2>/dev/null || true)
  phase=$(awk '{print $2}' <<<"$now")
  if [[ -n $now && $now != "$last" ]]; then echo "$now"; last=$now; fi
  [[ $phase == Running ]] && break
  sleep 0.5
done
$K get pods -l distml.io/job-name=ddp-digits -o wide
echo "# KWOK simulates these pods: they are scheduled and Running, but no process trains in them."
echo "# Each worker now exits 0, as a finished torchrun would:"
for pod in $($K get pods -l distml.io/job-name=ddp-digits -o name); do
  $PY -m distml.localcluster exit-pod "${pod#pod/}" 0
done
for _ in $(seq 1 60); do
  phase=$($K get tj ddp-digits -o jsonpath='{.status.phase}')
  [[ $phase == Succeeded ]] && break
  sleep 0.5
done
$K get tj ddp-digits -o wide
$K get events --field-selector involvedObject.name=ddp-digits --sort-by=.metadata.resourceVersion \
  -o custom-columns=TYPE:.type,REASON:.reason,MESSAGE:.message

step "4/5 the runtime on this machine: data-parallel training (2 ranks, gloo), loss going down"
$PY -m distml_runtime.train.ddp --nproc 2 --steps 100 --log-every 20 --no-metrics \
  | $PY -c 'import json,sys
for line in sys.stdin:
    e = json.loads(line)
    if e["event"] == "step":
        print("step %4d  loss %.4f  %9.0f samples/s" % (e["step"], e["loss"], e["samples_per_s"]))'

step "5/5 the all-reduce benchmark (4 ranks, gloo): ring against native"
mkdir -p bench/results
$PY -m distml_runtime.bench.allreduce --nproc 4 -b 1K -e 4M -f 16 --algo all -n 5 -w 2 \
  --no-progress --plot bench/results/demo-allreduce.png | grep -E '^#|^ +[0-9]|size|elements' | head -80

step "done in $((SECONDS - start))s"
cat <<MSG
What is running, and where to look:
  export KUBECONFIG=$KUBECONFIG
  bin/kubectl get tj,pods -A              # jobs and their pods
  curl -s localhost:8080/metrics | grep ^distml_   # the operator's metrics
  .cluster/logs/                          # every process's log (operator.log too)
  bench/results/demo-allreduce.png        # busbw against message size
  make cluster-down                       # stop everything
MSG
