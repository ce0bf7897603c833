#!/usr/bin/env bash
# make demo: real data-parallel training on the local GPU cluster, then serving what it trained. Two simulated 8-GPU servers
# ("process nodes") each run their pods as real processes in their own network namespace, joined
# by 10 Gbit/s links; the chart installs the CRDs and RBAC, the operator runs with the chart's
# ServiceAccount, and Prometheus scrapes the operator and the pods.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export KUBECONFIG=$PWD/.cluster/kubeconfig DISTML_REPO=$PWD
K="bin/kubectl"
NS=distml-system
SHARED=.cluster/shared/hostpath/mnt/distml
step() { printf '\n\033[1m==> [%3ss] %s\033[0m\n' "$((SECONDS - start))" "$*"; }
start=$SECONDS

# Prints `kubectl get tj NAME` whenever it changes, until the job reaches a phase in $2 (a|b).
watch_job() {
  local last="" now phase
  for _ in $(seq 1 1200); do
    now=$($K get tj "$1" --no-headers 2>/dev/null || true)
    phase=$(awk '{print $2}' <<<"$now")
    if [[ -n $phase && $now != "$last" ]]; then echo "  $now"; last=$now; fi
    [[ $phase =~ ^($2)$ ]] && return 0
    sleep 0.5
  done
  echo "timed out waiting for $1 to be $2" >&2
  return 1
}

step "1/7 local GPU cluster: control plane + 2 process nodes (8 simulated GPUs each, 10gbit links)"
$PY -m distml.localcluster up --nodes 0 --process-nodes 2 --process-gpus 8 --link-rate 10gbit \
  >/dev/null
$K get nodes -o wide -L nvidia.com/gpu.count,topology.kubernetes.io/zone

step "2/7 helm install the chart (CRDs, RBAC, metrics, dashboards); the operator runs with its ServiceAccount"
# The examples keep checkpoints on a node-local disk: the chart's pod policy allows that folder.
bin/helm upgrade --install distml charts/distml -n $NS --create-namespace --set replicas=0 --wait \
  --set 'podPolicy.allowedHostPaths={/mnt/distml}' \
  | grep -E '^(NAME|STATUS|REVISION)'
$PY -m distml.localcluster operator --no-crds --service-account "$NS/distml" \
  -- --allowed-host-path=/mnt/distml
$PY -m distml.localcluster prometheus

step "3/7 kubectl apply -f examples/trainingjob.yaml: DDP on 2 servers x 8 ranks, preflight first"
# A fresh run: the last demo's jobs go first (its ServingJob would hold the GPUs training needs).
$K delete -f examples/servingjob.yaml --ignore-not-found --wait=true >/dev/null
$K delete -f examples/trainingjob.yaml --ignore-not-found --wait=true >/dev/null
rm -rf "$SHARED/checkpoints/ddp-digits"  # a fresh run, not a resume of the last demo
$K apply -f examples/trainingjob.yaml
echo "  NAME         PHASE     READY  GPUS  RESTARTS  AGE"
watch_job ddp-digits 'Running|Failed'
$K get tj ddp-digits -o jsonpath='  preflight: {.status.preflight.message}{"\n"}'
$K get pods -l distml.io/job-name=ddp-digits -o wide
echo "  rank 0's log (kubectl logs -f ddp-digits-worker-0-0), loss averaged over the 16 ranks:"
$K logs -f ddp-digits-worker-0-0 -c trainer | $PY -c 'import json, sys
for line in sys.stdin:
    if not line.startswith("{"):
        continue
    e = json.loads(line)
    if e["event"] == "step" and e["step"] % 50 == 0:
        print("  step %4d  loss %.4f  %8.0f samples/s  all-reduce %6.1f ms"
              % (e["step"], e["loss"], e["samples_per_s"], e["allreduce_ms"]), flush=True)
    elif e["event"] == "checkpoint":
        print("             checkpoint at step %d" % e["step"], flush=True)
    elif e["event"] != "step":
        print("  " + line.strip(), flush=True)'
watch_job ddp-digits 'Succeeded|Failed'
$K get tj ddp-digits -o wide
$K get events --field-selector involvedObject.name=ddp-digits --sort-by=.metadata.resourceVersion \
  -o custom-columns=TYPE:.type,REASON:.reason,MESSAGE:.message

step "4/7 kubectl apply -f examples/allreduce-benchmark.yaml: all-reduce across the 2 servers"
$K delete -f examples/allreduce-benchmark.yaml --ignore-not-found --wait=true >/dev/null
$K apply -f examples/allreduce-benchmark.yaml
watch_job allreduce-bench 'Succeeded|Failed'
$K logs allreduce-bench-worker-0-0 -c bench | grep -vE '^\[W|^W[0-9]|\*\*\*|OMP_NUM_THREADS|^$'
echo "  plot: $SHARED/results/allreduce-bench.png   (the pods wrote /results/allreduce-bench.png)"

step "5/7 kubectl apply -f examples/servingjob.yaml: serve the trained model, then roll it out under load"
$K delete -f examples/servingjob.yaml --ignore-not-found --wait=true >/dev/null
$K apply -f examples/servingjob.yaml
last=""
for _ in $(seq 1 600); do
  now=$($K get sj digits 2>/dev/null || true)
  if [[ $now != "$last" ]]; then sed 's/^/  /' <<<"$now"; last=$now; fi
  [[ $($K get sj digits -o jsonpath='{.status.phase}') == Available ]] && break
  sleep 0.5
done
if [[ $($K get sj digits -o jsonpath='{.status.phase}') != Available ]]; then
  $K get sj digits -o jsonpath='  not Available: {.status.message}{"\n"}' >&2
  exit 1
fi
IP=$($K get svc digits -o jsonpath='{.spec.clusterIP}')
echo "  a real client (tritonclient) through the Service's ClusterIP $IP (the real kube-proxy):"
$PY - "$IP" <<'EOF'
import sys
import numpy as np
import tritonclient.http as triton
from distml_runtime.train.data import load_digits_tensors
client = triton.InferenceServerClient(f"{sys.argv[1]}:8000")
meta = client.get_model_metadata("digits")
print(f"  model ready: {client.is_model_ready('digits')}; input {meta['inputs'][0]}; outputs "
      f"{[o['name'] for o in meta['outputs']]}")
x, y = load_digits_tensors()
labels = []
for start in range(0, 256, 32):  # maxBatchSize rows per request at most
    rows = x[start:start + 32].numpy().astype(np.float32)
    inp = triton.InferInput("input", list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows, binary_data=True)
    labels.extend(client.infer("digits", [inp]).as_numpy("label").tolist())
labels = np.array(labels)
right = float(np.mean(labels == y[:256].numpy()))
print(f"  256 digits classified by the trained model: {right:.1%} right; first ten "
      f"{labels[:10].tolist()} (true {y[:10].tolist()})")
EOF
echo "  a new revision (a template change) rolled out under 4 clients' load:"
$PY bench/serving.py rollout --namespace default --name digits --clients 4
$K get sj digits | sed 's/^/  /'
SJ_UID=$($K get sj digits -o jsonpath='{.metadata.uid}')  # not an earlier demo's job of that name
$K get events --field-selector "involvedObject.uid=$SJ_UID" --sort-by=.metadata.resourceVersion \
  -o custom-columns=REASON:.reason,MESSAGE:.message | sed 's/^/  /'


step "6/7 what Prometheus scraped (http://127.0.0.1:9090), through the dashboards' queries"
sleep 3
$PY - <<'EOF'
import json, urllib.parse, urllib.request
queries = {
    "jobs by phase": "sum by (phase) (distml_trainingjobs) > 0",
    "serving replicas by state": "sum by (state) (distml_serving_replicas) > 0",
    "apply -> all Running, p50 (s)": "histogram_quantile(0.5, sum by (le) (distml_job_time_to_running_seconds_bucket))",
    "preflight busbw (Gbit/s)": "distml_job_preflight_busbw_gbps",
    "training loss, last seen": "max by (trainingjob) (last_over_time(distml_train_loss[10m]))",
    "all-reduce busbw at 16 MiB (GB/s)": 'max by (algo) (last_over_time(distml_allreduce_busbw_gbps{bytes="16777216"}[10m]))',
}
for title, q in queries.items():
    url = "http://127.0.0.1:9090/api/v1/query?" + urllib.parse.urlencode({"query": q})
    result = json.load(urllib.request.urlopen(url, timeout=10))["data"]["result"]
    shown = ", ".join(
        f"{ {k: v for k, v in r['metric'].items() if k in ('phase', 'state', 'trainingjob', 'algo')} or ''} {float(r['value'][1]):.3g}".strip()
        for r in result
    ) or "(no data)"
    print(f"  {title:36s} {shown}")
    print(f"  {'':36s} query: {q}")
EOF

step "7/7 done in $((SECONDS - start))s"
cat <<MSG
What ran: a TrainingJob of 2 pods on 2 process nodes (16 gloo ranks: no GPU here, so the runtime
fell back to CPU), its preflight all-reduce, the all-reduce benchmark job, then a ServingJob of
the trained model, rolled out under load; all still up.
Where to look:
  export KUBECONFIG=$KUBECONFIG
  bin/kubectl get tj,sj,pods -o wide           # jobs, pods and the nodes they ran on
  bin/kubectl scale sj/digits --replicas=1 # the ServingJob's scale subresource
  bin/kubectl logs ddp-digits-worker-1-0       # any worker's log (served by its node agent)
  http://127.0.0.1:9090                        # Prometheus; dashboards: charts/distml/dashboards/
  curl -s localhost:8080/metrics | grep ^distml_   # the operator's own metrics
  .cluster/logs/                               # every process: operator, node agents, API server
  .venv/bin/python -m distml.localcluster node-cut proc-node-001   # cut a server off (node-restore undoes)
  .venv/bin/python -m distml.localcluster link-rate proc-node-001 1gbit   # shape a server's link
  make cluster-down                            # stop everything
MSG
