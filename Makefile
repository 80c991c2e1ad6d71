# kaapana_fhir developer commands. Everything runs in .venv; the local stack binds to 127.0.0.1 only.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STATE ?= .stack
DEMO_DIR ?= .demo-data

.PHONY: lint help install install-helm install-sso test-airflow3 install-system install-python build-hapi stack-up stack-down test test-unit bench demo demo-down clean

help:
	@echo "make demo        # install what is missing, start the stack, run every flow, print the summary"
	@echo "make test        # install what is missing, run unit + integration tests against real servers"
	@echo "make bench       # benchmarks with same-run ratios"
	@echo "make lint        # ruff (rule set in pyproject.toml) and mypy (strict for core/ and clients/)"
	@echo "make stack-up / stack-down, make demo-down"

install: install-system install-python build-hapi install-helm install-sso

install-helm:
	@bash .ci/install-helm.sh

install-sso:  # MinIO (go install) + Keycloak (Maven Central) for the STS integration tests
	@bash .ci/install-minio.sh && bash .ci/install-keycloak.sh

install-system:
	@bash .ci/install-system.sh

install-python:
	@bash .ci/install-python.sh $(VENV)

build-hapi:
	@echo "== HAPI FHIR test server (Maven build into ~/.cache/kaapana-fhir, skipped when built)"; $(VENV)/bin/kaapana-fhir stack build

stack-up: install
	$(VENV)/bin/kaapana-fhir stack up --state-dir $(STATE)

stack-down:
	-$(VENV)/bin/kaapana-fhir stack down --state-dir $(STATE)

test: install
	KAAPANA_FHIR_REQUIRE_STACK=1 PATH="$$HOME/go/bin:$$PATH" $(PY) -m pytest tests -q -p no:cacheprovider --ignore=tests/airflow3
	bash .ci/airflow3-check.sh

test-airflow3:
	bash .ci/airflow3-check.sh

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test-unit:
	$(PY) -m pytest tests -q -m "not integration and not airflow and not browser and not reliability"

bench: install
	$(PY) tests/bench/run.py

demo:
	@t0=$$(date +%s); $(MAKE) -s install && $(PY) -m kaapana_fhir.dev.demo --state-dir $(DEMO_DIR); rc=$$?; \
	echo "make demo took $$(( $$(date +%s) - t0 ))s in all (installs, HAPI build and servers included)"; exit $$rc

demo-down:
	-$(PY) -m kaapana_fhir.dev.demo --state-dir $(DEMO_DIR) --down

clean: stack-down demo-down
	rm -rf $(STATE) $(DEMO_DIR) test-artifacts

# Kaapana extension: generate each image's build context under docker/kaapana-fhir (see docs/kaapana.md)
kaapana-layout:
	python3 docker/tools/build_layout.py
