# scimflow: `make run` (the demo pipeline) and `make test` (the whole suite) set up
# everything they need on a fresh machine: the venv, Python packages, Java + Maven from
# Debian when missing, and the Apache Kafka jars from Maven Central (cached once).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: run test lint bench deps system-deps kafka schemas clean

deps: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# A JDK (>= 17) and Maven run the real Apache Kafka broker; installed only if missing.
system-deps:
	@if ! command -v java >/dev/null || ! command -v mvn >/dev/null; then \
	  echo "installing Java and Maven from Debian packages"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jdk-headless maven; \
	fi

kafka: deps system-deps
	$(PY) -m services.runtime.broker fetch

run: kafka
	$(VENV)/bin/scimflow up --config examples/demo.yaml

test: kafka
	$(PY) -m pytest $(PYTEST_ARGS)

lint: deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: kafka
	$(PY) bench/pipeline.py $(BENCH_ARGS)

schemas: deps
	$(PY) -m schemas.generate

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build *.egg-info
