# SpatialForge: every entry point a developer or CI needs. `make help` lists them.
PYTHON ?= python3
PYTEST_ARGS ?=
export PYTHON

.DEFAULT_GOAL := help
.PHONY: help install tools cluster-up cluster-down cluster-status test test-unit demo bench crds verify lint-imports clean images e2e

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

install: ## Debian packages and the Python package with every extra
	hack/install.sh

tools: ## Build the control plane, etcd, MinIO, helm and stripe-mock once into ~/.cache/spatialforge
	hack/build-tools.sh etcd kube minio helm stripe-mock

test: install tools ## The whole suite on real servers (control plane, MinIO), started once
	$(PYTHON) -m pytest tests $(PYTEST_ARGS)

test-unit: ## Unit tests only (no servers)
	$(PYTHON) -m pytest tests/unit $(PYTEST_ARGS)

cluster-up: install tools ## Start the local control plane and the GPU node agent
	hack/cluster.sh up

cluster-down: ## Stop it (state in .local/ is kept; hack/cluster.sh reset wipes it)
	hack/cluster.sh down

cluster-status: ## What runs
	hack/cluster.sh status

images: install ## Build the operator, front-end and runner images on a private Docker engine (hack/docker.sh; root)
	hack/docker.sh build operator apiserver runner

e2e: install ## Real containers end to end: images, a kubelet + containerd node, the chart, flows, faults (hack/e2e.sh; root)
	hack/e2e.sh

demo: install tools ## Cluster, MinIO, operator; both samples to Succeeded; results listed
	hack/demo.sh

bench: install tools ## Benchmarks (not tests); each prints a final JSON line
	$(PYTHON) bench/operator_throughput.py
	$(PYTHON) bench/api_load.py
	$(PYTHON) bench/depth_throughput.py
	$(PYTHON) bench/sync_depth.py --front-end
	$(PYTHON) bench/pool_first_result.py
	$(PYTHON) bench/reconstruct.py

crds: ## Regenerate every generated copy: crds/*.yaml, crds/policies/, the chart's crds/ and generated templates
	$(PYTHON) -m spatialforge.crds.generate

verify: lint-imports ## Fail if any generated copy is stale, the import layering is broken or the docs contradict the code
	$(PYTHON) -m spatialforge.crds.generate --check
	$(PYTHON) hack/check_docs.py

lint-imports: ## The import-layering contract (.importlinter): components never import each other
	$(PYTHON) hack/lint_imports.py

clean: cluster-down ## Stop servers and remove local state
	rm -rf .local
