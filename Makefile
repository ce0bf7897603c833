# distml — the two commands a fresh machine needs are `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON   ?= python3
VENV     := .venv
PY       := $(VENV)/bin/python
UV_VERSION := 0.13.9
NODES    ?= 4
GPUS     ?= 8
PROC_NODES ?= 0
PYTEST_ARGS ?=
export DISTML_REPO := $(CURDIR)

.PHONY: help venv tools cluster cluster-down cluster-status test test-unit test-integration \
        test-runtime lint crds dashboards demo clean bench-allreduce bench-startup bench-pipeline bench-client bench-recovery repeat-test k8s-schema

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

# The venv is rebuilt when the lock changes; uv installs from its cache outside the repo, so a
# fresh clone on a machine that has built once installs in seconds.
$(VENV)/.installed: requirements.lock pyproject.toml
	@echo "==> python venv ($(VENV)): installing pinned dependencies (first time: torch is a few GB)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(VENV)/bin/pip install -q uv==$(UV_VERSION)
	@$(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY) -r requirements.lock
	@$(VENV)/bin/uv pip install -q --python $(PY) --no-deps -e .
	@touch $@

venv: $(VENV)/.installed ## create the venv with pinned dependencies

tools: ## build (or reuse) etcd, kube-*, kubectl, kwok and helm into bin/
	@bash hack/build-tools.sh

cluster: venv tools ## start the local GPU cluster (NODES=4 GPUS=8 KWOK nodes, PROC_NODES=0 process nodes)
	@$(PY) -m distml.localcluster up --nodes $(NODES) --gpus-per-node $(GPUS) \
	  --process-nodes $(PROC_NODES) --process-gpus $(GPUS)

cluster-down: ## stop every process of the local cluster
	@if [ -x $(PY) ]; then $(PY) -m distml.localcluster down; fi

cluster-status: venv ## show whether the cluster is up, and its nodes
	@$(PY) -m distml.localcluster status

lint: venv ## ruff, mypy, import contracts, hadolint
	@$(VENV)/bin/ruff check operator images tests bench
	@$(VENV)/bin/ruff format --check operator images tests bench
	@$(VENV)/bin/mypy
	@$(VENV)/bin/lint-imports
	@$(VENV)/bin/hadolint images/runtime/Dockerfile images/operator/Dockerfile

test-unit: venv tools ## unit tests (pure logic; the chart tests render with helm)
	@$(PY) -m pytest -m unit $(PYTEST_ARGS)

test-integration: venv tools ## integration tests against the local cluster
	@$(PY) -m pytest -m integration $(PYTEST_ARGS)

test-runtime: venv ## runtime tests (multi-process torch.distributed on gloo)
	@$(PY) -m pytest -m runtime $(PYTEST_ARGS)

test: venv tools lint ## every test layer; the last line is pytest's summary
	@$(PY) -m pytest $(PYTEST_ARGS)

demo: venv tools ## real DDP training on 2 process nodes of the local cluster, then the all-reduce job
	@bash hack/demo.sh

clean: cluster-down ## remove the venv, bin/ links and cluster state (the tool cache stays)
	rm -rf $(VENV) bin .cluster

bench-allreduce: venv ## all-reduce algorithms vs native, 4 gloo ranks, 1 KiB..64 MiB (+ plot)
	@$(PY) bench/allreduce_compare.py --nproc 4 -e 64M

k8s-schema: cluster ## refresh the pod template schema snapshot from the local cluster's API server
	@bin/kubectl --kubeconfig .cluster/kubeconfig get --raw /openapi/v3/api/v1 | \
	  $(PY) -m distml.api.k8sschema "$$(bin/kubectl --kubeconfig .cluster/kubeconfig version -o json | $(PY) -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])')"

crds: venv ## regenerate crds/ and the chart's crds/ from the pydantic models
	@$(PY) -m distml.api.crd crds charts/distml/crds

dashboards: venv ## regenerate the chart's Grafana dashboards from operator/distml/dashboards/
	@$(PY) -m distml.dashboards charts/distml/dashboards

bench-pipeline: venv ## GPipe bubble vs theory (p=2,4; m=1..16), planned vs even split, freezing (+ plot)
	@$(PY) bench/pipeline.py

bench-startup: venv tools ## apply -> Running for a 64-pod job vs direct pod creation; 200 jobs x 8 pods
	@$(PY) bench/startup.py

bench-client: venv tools ## the operator's client vs kubernetes.aio: a 64-pod gang of creates, a LIST of 2000 pods
	@$(PY) bench/client.py

bench-serving: venv tools ## dynamic batching vs maxBatchSize 1 at one p99 budget; a ServingJob rollout under load (3 process nodes)
	@$(PY) bench/serving.py

bench-recovery: venv tools ## fault -> training again: killed worker, node cut off (shrink, grow back, move to a spare), 3 runs each
	@$(PY) bench/recovery.py

bench-placement: venv tools ## pipeline placement: the planner on 64 and 1000 nodes vs best fit; pp=4 training on 4 process nodes in 2 blocks, placed vs pod by pod
	@$(PY) bench/placement.py

repeat-test: venv ## one test N times in a row: make repeat-test TEST=tests/runtime/test_ddp.py::test_loss_goes_down_with_two_ranks N=50
	@bash hack/repeat-test.sh "$(TEST)" "$(or $(N),50)"
