# mmdata: the two commands a new user needs are `make setup demo` and `make test`.
SHELL := /bin/bash
UV ?= uv
RUN := $(UV) run --frozen
OUT ?= out

.PHONY: setup demo test lint format bench-ingest bench-models bench-templates corpus clean

setup:  ## create .venv with the locked dependencies
	@command -v $(UV) >/dev/null || python3 -m pip install --quiet uv
	$(UV) sync --frozen

demo:  ## run the main job on the bundled sample corpus
	$(RUN) mmdata demo --output $(OUT)/demo

test:  ## the test suite (CPU, a few minutes)
	$(RUN) pytest -q

lint:
	$(RUN) ruff check mmdata pipelines tests
	$(RUN) ruff format --check mmdata pipelines tests

format:
	$(RUN) ruff check --fix mmdata pipelines tests
	$(RUN) ruff format mmdata pipelines tests

bench-ingest:
	$(RUN) python -m mmdata.bench.ingest

bench-models:
	$(RUN) python -m mmdata.bench.models

bench-templates:
	$(RUN) python -m mmdata.bench.templates

clean:
	rm -rf $(OUT) .pytest_cache
