# mmdata: the two commands a new user needs are `make setup demo` and `make test`.
SHELL := /bin/bash
UV ?= $(shell command -v uv 2>/dev/null || echo python3 -m uv)
RUN := $(UV) run --frozen
OUT ?= out

# llama-cpp-python (the local LLM server of the `llm` group) compiles llama.cpp. Its default build uses
# CPU paths (AMX) that crash on some x86-64 CPUs; this build is portable to any AVX2 machine.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
# Precompiled bytecode (at setup): start-up of every Beam worker process does not recompile Beam and torch.
# Only `uv sync` compiles; `uv run` would otherwise re-check all ~21k files and say so on every target.

.PHONY: setup demo test test-fast lint format bench-ingest bench-models models-quality bench-templates bench-train \
	corpus-sources corpus-sources-all corpus weights-verify templates-check llm-server-start llm-server-stop dist clean

setup:  ## .venv with the locked dependencies, all groups (first run compiles llama.cpp: ~10 min on 2 cores)
	@command -v uv >/dev/null || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	UV_COMPILE_BYTECODE=1 $(UV) sync --frozen --all-groups

demo:  ## run the main job on the bundled sample corpus; prints the output folder
	$(RUN) mmdata demo --output $(OUT)/demo
	$(RUN) mmdata inspect $(OUT)/demo

test:  ## the whole test suite (CPU)
	$(RUN) pytest -q --durations=15

test-fast:  ## everything but the slow end-to-end runs
	$(RUN) pytest -q -m "not slow"

lint:
	$(RUN) ruff check mmdata pipelines tests
	$(RUN) ruff format --check mmdata pipelines tests

format:
	$(RUN) ruff check --fix mmdata pipelines tests
	$(RUN) ruff format mmdata pipelines tests

bench-ingest:  ## images/s of Beam ingest -> shards vs a plain loop; 1 vs 2 workers; 384 and 768 px; both JPEG checks
	$(RUN) python -m mmdata.bench.ingest --size 384
	$(RUN) python -m mmdata.bench.ingest --size 768
	$(RUN) python -m mmdata.bench.ingest --size 768 --full-jpeg-decode

bench-models:  ## images/s per model backend vs a bare model call
	$(RUN) python -m mmdata.bench.models

models-quality:  ## behaviour figures of the model backends on the bundled corpus (IoU, edges, style, recall@k)
	$(RUN) python -m mmdata.bench.models --quality --images 392

bench-templates:  ## accepted templates/min and acceptance rate per route on the local LLM server
	$(RUN) python -m mmdata.bench.templates

bench-train:  ## trainer samples/s on real shards vs synthetic batches
	$(RUN) python -m mmdata.bench.train

weights-verify:  ## check every pinned model weight file (sha256)
	$(RUN) mmdata weights verify

templates-check:  ## validate the shipped instruction templates
	$(RUN) mmdata templates validate --check

llm-server-start:  ## start the local OpenAI-compatible server (llama.cpp + Gemma 3 270M) in the background
	$(RUN) python -m mmdata.llm.server start

llm-server-stop:
	$(RUN) python -m mmdata.llm.server stop

corpus-sources:  ## fetch the pinned npm icon packages (network: npm) into .cache/npm
	$(RUN) mmdata corpus fetch --sources .cache/npm

corpus-sources-all:  ## also @iconify/json (~390k icons, ~465 MB)
	$(RUN) mmdata corpus fetch --sources .cache/npm --all-sets

corpus:  ## rebuild the bundled sample corpus from .cache/npm
	$(RUN) mmdata corpus sample --sources .cache/npm --out mmdata/sample_corpus --overwrite

DIST ?= dist
dist:  ## $(DIST)/: the mmdata wheel + requirements.txt (the lock's exact pins) for cluster workers
	$(UV) build --wheel --out-dir $(DIST)
	$(UV) export --frozen --no-dev --no-group llm --no-emit-project --no-hashes --output-file $(DIST)/requirements.txt

clean:
	rm -rf $(OUT) .pytest_cache
