#!/usr/bin/env bash
# make demo: the main job on the embedded local GPU cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "starting the local GPU cluster (etcd, kube-apiserver, controller manager, scheduler, KWOK)"
t0=$SECONDS
$PY -m distml.localcluster up --nodes "${NODES:-4}" --gpus-per-node "${GPUS:-8}" >/dev/null
echo "cluster ready in $((SECONDS - t0))s"
export KUBECONFIG=$PWD/.cluster/kubeconfig

step "its GPU nodes, as the scheduler sees them"
bin/kubectl get nodes -L nvidia.com/gpu.product,nvidia.com/gpu.count,topology.kubernetes.io/zone,topology.distml.io/block
bin/kubectl get nodes -o custom-columns='NODE:.metadata.name,GPUS:.status.allocatable.nvidia\.com/gpu,CPU:.status.allocatable.cpu,MEMORY:.status.allocatable.memory'

step "done"
cat <<MSG
The cluster stays up for you:
  export KUBECONFIG=$KUBECONFIG
  bin/kubectl get nodes
  make cluster-down        # stop it
Logs of every control-plane process: .cluster/logs/
MSG
