# kaon — run `make help` for the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
KAON := $(VENV)/bin/kaon
PYTEST_ARGS ?=
# Two installs into the one venv: the base (kaon and its dev tools, enough for `make check`) and
# the runtime on top (torch, scikit-learn, the KServe venv) for the tests on the rig and the bench.
PROJECT_HASH := $(shell cat pyproject.toml | sha256sum | cut -c1-12)
BASE_STAMP := $(VENV)/.installed-base-$(PROJECT_HASH)
RUNTIME_STAMP := $(VENV)/.installed-runtime-$(PROJECT_HASH)
# KServe (bench baseline, kserve-client conformance test) in a venv of its own inside .venv:
# its pins conflict with the operator's kubernetes client. It sees .venv's packages after its own.
KSERVE_VENV := $(VENV)/kserve
KSERVE_REQ := tests/bench/requirements-kserve.txt
KSERVE_STAMP := $(KSERVE_VENV)/.installed-$(shell cat $(KSERVE_REQ) | sha256sum | cut -c1-12)

.DEFAULT_GOAL := help
.PHONY: help setup check fmt rig-build rig-up rig-down rig-status test unit lint crds verify demo \
	run bench chaos images clean demo-failover demo-queues check-ruff check-types check-imports check-unit gpu-check

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

setup: $(RUNTIME_STAMP) $(KSERVE_STAMP) ## create .venv and install kaon with its dev tools and the torch runtime

$(BASE_STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.installed-base-* && touch $@

$(RUNTIME_STAMP): $(BASE_STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev,runtime]'
	@rm -f $(VENV)/.installed-runtime-* && touch $@

$(KSERVE_STAMP): $(KSERVE_REQ) $(RUNTIME_STAMP)
	@test -x $(KSERVE_VENV)/bin/python || $(PY) -c 'import sys, venv; venv.create(sys.argv[1], with_pip=True)' $(KSERVE_VENV)
	$(KSERVE_VENV)/bin/python -m pip install -q --disable-pip-version-check -r $(KSERVE_REQ)
	$(PY) -c 'import site, sys; print("import site; site.addsitedir(%r)" % site.getsitepackages()[0])' > "$$($(KSERVE_VENV)/bin/python -c 'import site; print(site.getsitepackages()[0])')/kaon-main-venv.pth"
	@rm -f $(KSERVE_VENV)/.installed-* && touch $@

# The fast tier: no torch, no rig. pre-commit runs the same targets one by one.
check: check-ruff check-types check-imports verify check-unit ## ruff, format, mypy, import contracts, CRDs, unit tests: no torch, no rig

check-ruff: $(BASE_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# mypy over everything it can import: modules that need torch only where the runtime is installed.
check-types: $(BASE_STAMP)
	$(PY) hack/typecheck.py

check-imports: $(BASE_STAMP)
	$(VENV)/bin/lint-imports

check-unit: $(BASE_STAMP)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

fmt: $(BASE_STAMP) ## fix what ruff can fix, then format
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

rig-build: setup ## build (or reuse from ~/.cache/kaon) the rig's Kubernetes, etcd, kwok, helm binaries
	$(KAON) rig build

rig-up: setup ## start the hub and member clusters (idempotent)
	$(KAON) rig up

rig-down: setup ## delete the rig's clusters and state
	$(KAON) rig down

rig-status: setup ## clusters, pools and health
	$(KAON) rig status

lint: setup ## ruff, mypy (with the runtime installed: every module), import contracts
	@$(MAKE) --no-print-directory check-ruff check-types check-imports

crds: $(BASE_STAMP) ## generate crds/ and charts/kaon/crds/ from the pydantic models
	$(KAON) crds crds charts/kaon/crds

verify: $(BASE_STAMP) ## fail when the generated CRDs differ from the models
	$(KAON) crds --check crds charts/kaon/crds

unit: setup ## the tests that need no cluster: tests/unit and tests/runtime (torch)
	$(PY) -m pytest tests/unit tests/runtime $(PYTEST_ARGS)

test: lint verify rig-build ## lint, then unit + integration + e2e + chaos (short) tests against the local rig
	$(PY) -m pytest tests -m "not bench" $(PYTEST_ARGS)

chaos: lint rig-build ## the chaos suite at full size (20 operator kills in 200 jobs, ...): ~15 min
	KAON_CHAOS=long $(PY) -m pytest tests/chaos --timeout=3600 $(PYTEST_ARGS)

demo: rig-up ## the rig, CRDs, the operator, two members and example TrainingJobs, end to end
	hack/demo.sh

demo-queues: rig-up ## two teams' queues: borrowing idle GPUs, a reclaim that preempts, a real job that resumes
	hack/demo-queues.sh

demo-failover: rig-up ## a CNN that really trains loses its member mid-way and resumes on the other
	hack/demo-failover.sh

run: rig-up ## run the operator on the rig's hub (Ctrl-C stops it)
	source <($(KAON) rig env) && kubectl apply -f crds/ && $(KAON) run

bench: rig-build ## benchmarks with same-run baselines; figures into .bench/results.json
	$(PY) tests/bench/kernels.py
	$(PY) tests/bench/controlplane.py
	$(PY) tests/bench/failover.py
	$(PY) tests/bench/steps_lost.py
	$(PY) tests/bench/scheduling.py
	$(PY) tests/bench/serving.py
	$(PY) tests/bench/secured.py
	$(PY) tests/bench/coldstart.py

gpu-check: ## on a machine with a GPU and torch (no rig, no venv): runtime tests and kernel bench on cuda
	hack/gpu-check.sh

# The images the chart's values name (operator.image, runtime.image; the CUDA runtime adds -cuda).
ENGINE ?= $(shell command -v docker || command -v podman)
chart_value = $(shell sed -n '/^$(1):/,/^[a-z]/{/$(2):/{s/.*$(2): *"\{0,1\}\([^"]*\)"\{0,1\}/\1/p;q}}' charts/kaon/values.yaml)
OPERATOR_IMAGE := $(call chart_value,operator,repository):$(call chart_value,operator,tag)
RUNTIME_IMAGE := $(call chart_value,runtime,repository):$(call chart_value,runtime,tag)

images: ## build the operator and runtime images with docker or podman (ENGINE=...)
	@test -n "$(ENGINE)" || { echo "make images: no container engine (docker or podman) found; set ENGINE=" >&2; exit 1; }
	$(ENGINE) build -f images/operator.Dockerfile -t $(OPERATOR_IMAGE) .
	$(ENGINE) build -f images/runtime-cpu.Dockerfile -t $(RUNTIME_IMAGE) .
	$(ENGINE) build -f images/runtime-cuda.Dockerfile -t $(RUNTIME_IMAGE)-cuda .

clean: ## remove the virtual environment and caches inside the repo
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .import_linter_cache .hypothesis .bench
