# scimflow: `make run` (the demo pipeline) and `make test` (the whole suite) set up
# everything they need on a fresh machine: the venv, Python packages, Java + Maven from
# Debian when missing, and the Apache Kafka jars from Maven Central (cached once).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: run test lint bench bench-scale deps lock system-deps ldap-deps ad-deps scimmy-deps browser-deps kafka tools schemas clean

deps: $(STAMP)

# requirements/dev.txt pins every package (and every dependency's dependency) that the
# install resolves to, so that every machine and CI install the same versions; `make lock`
# re-pins after a change to pyproject.toml.
LOCK := requirements/dev.txt

$(STAMP): pyproject.toml $(LOCK) | ldap-deps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c $(LOCK) -e '.[dev,demo,ldap]'
	touch $@

# Re-pin requirements/dev.txt (make, CI) and requirements/image.txt (the Dockerfile) from
# pyproject.toml with uv (pinned; installed into the venv for this only). Existing pins are
# kept where they still fit; `make lock LOCK_ARGS=--upgrade` moves everything to the newest.
UV_VERSION := 0.13.8
LOCK_ARGS  ?=
UV_COMPILE  = $(VENV)/bin/uv pip compile pyproject.toml --python-version 3.11 --no-header \
              --annotation-style line -q $(LOCK_ARGS)

lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q uv==$(UV_VERSION)
	$(UV_COMPILE) --extra dev --extra demo --extra ldap -o requirements/dev.txt
	$(UV_COMPILE) --extra ldap -o requirements/image.txt

# A JDK (>= 17) and Maven run the real Apache Kafka broker; promtool (Debian package
# prometheus) checks the alert rules and /metrics output. Installed only if missing.
system-deps:
	@if ! command -v java >/dev/null || ! command -v mvn >/dev/null; then \
	  echo "installing Java and Maven from Debian packages"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jdk-headless maven; \
	fi
	@if ! command -v promtool >/dev/null; then \
	  echo "installing promtool (Debian package prometheus)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; \
	fi

# OpenLDAP: headers to build python-ldap (no wheels on PyPI), slapd + ldap-utils for the LDAP tests.
ldap-deps:
	@if ! test -x /usr/sbin/slapd || ! test -f /usr/include/ldap.h || ! test -f /usr/include/sasl/sasl.h; then \
	  echo "installing OpenLDAP (slapd, ldap-utils, headers) from Debian packages"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slapd ldap-utils libldap2-dev libsasl2-dev build-essential; \
	fi

# Samba: a real Active Directory domain controller for the AD DirSync source's tests
# (tests/support/samba.py provisions a throwaway domain once per machine, bound to loopback).
ad-deps:
	@if ! command -v samba-tool >/dev/null || ! test -x /usr/sbin/samba; then \
	  echo "installing Samba (AD DC) from Debian packages"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq samba; \
	fi

# SCIMMY (npm): the second SCIM server the tests provision into (tests/support/scimmy_target.py).
# Node.js + npm from Debian when missing; the packages pinned by tests/support/scimmy/
# package-lock.json go into ~/.cache/scimflow/scimmy-<lock hash> (npm ci, once per lock).
scimmy-deps: deps
	@if ! command -v node >/dev/null || ! command -v npm >/dev/null; then \
	  echo "installing Node.js and npm from Debian packages"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; \
	fi
	$(PY) -m tests.support.scimmy_target install

# Headless Chromium and its chromedriver (Debian packages) for the web console's browser
# tests (tests/browser, Selenium drives the system chromedriver). Installed only if missing.
browser-deps:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  echo "installing Chromium and chromedriver from Debian packages"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	fi

# helm and kustomize (Go modules, built with `go install` at these pinned versions) render
# and lint deploy/helm and deploy/k8s in tests/unit/test_deploy.py and test_helm.py. Built
# once per machine into ~/.cache/scimflow/go-tools, linked into .tools/bin (gitignored).
TOOLS_BIN         := .tools/bin
TOOLS_CACHE       ?= $(HOME)/.cache/scimflow/go-tools
HELM_VERSION      := v4.3.2
KUSTOMIZE_VERSION := v5.8.1
TOOLS_STAMP       := $(TOOLS_BIN)/.installed-helm-$(HELM_VERSION)-kustomize-$(KUSTOMIZE_VERSION)

tools: $(TOOLS_STAMP)

$(TOOLS_STAMP): deploy/tools/install.sh
	deploy/tools/install.sh $(TOOLS_BIN) $(TOOLS_CACHE) \
	  helm.sh/helm/v4/cmd/helm@$(HELM_VERSION) helm \
	  sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION) kustomize
	rm -f $(TOOLS_BIN)/.installed-*
	touch $@

kafka: deps system-deps
	$(PY) -m services.devstack.broker fetch

run: kafka
	$(VENV)/bin/scimflow up --config examples/demo.yaml

# Two pytest-xdist workers, each with its own broker (tests/conftest.py): most tests wait on
# brokers, processes and servers rather than the CPU, so two halve the wall time even on two
# cores. --dist loadfile keeps a file's tests (and its module-scoped servers) on one worker.
# TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2

test: kafka ad-deps scimmy-deps browser-deps tools
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# bench/pipeline.py folds in the phases of bench/mapping.py, bench/reconcile.py and
# bench/writer_path.py (how far one update travels through the writer's code: stops and
# files from a command to the target call); its last line is one JSON object of every figure.
# bench/poison.py: the delay of good records behind 1,000 poison records per input topic,
# and good users/s with and without them (its own JSON line; exits 1 if a poison record is
# not exactly one error record or an agent restarted).
# bench/ratelimit.py: the SCIM client against a target limited to 50 requests/s and with 10 %
# random 429s (achieved ÷ allowed rate, share of 429s, faulted ÷ unfaulted); one JSON line too.
# bench/replicas.py: one writer vs two in one consumer group (5,000 users, real broker and
# scim2-server): users/s, the two / one ratio (median over --rounds), CPU ms per user per
# process, each writer's share, exactness (exits 1 if not exact); --delay-ms adds a run
# through a proxy that holds each request.
REPLICAS_BENCH_ARGS ?= --rounds 3 --delay-ms 100

bench: kafka
	PYTHONPATH=. $(PY) bench/pipeline.py $(BENCH_ARGS)
	PYTHONPATH=. $(PY) bench/ldap_latency.py
	PYTHONPATH=. $(PY) bench/poison.py
	PYTHONPATH=. $(PY) bench/ratelimit.py
	PYTHONPATH=. $(PY) bench/ingest_scale.py $(INGEST_BENCH_ARGS)
	PYTHONPATH=. $(PY) bench/replicas.py $(REPLICAS_BENCH_ARGS)

# The writer's RSS and recovery time (cold: empty state dir; warm: dir kept) with 100,000
# and 1,000,000 managed objects loaded synthetically onto its changelog. Separate from
# `make bench`: the 1M point alone takes several minutes. SCALE_ARGS=--sizes 100000 for less.
SCALE_ARGS ?=
bench-scale: kafka
	PYTHONPATH=. $(PY) bench/scale.py $(SCALE_ARGS)
	PYTHONPATH=. $(PY) bench/scan_scale.py $(SCAN_ARGS)

schemas: deps
	$(PY) -m schemas.generate

clean:
	rm -rf $(VENV) .tools .mypy_cache .pytest_cache .ruff_cache build *.egg-info
