# Everything a fresh machine needs: system packages, a virtualenv, the project.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTHON  ?= python3

.PHONY: install system-deps run cluster test lint pytest compose-config format clean bench

install: system-deps $(STAMP)

# redis-server for everything; nginx is the load balancer of `make cluster` and the scale-out tests.
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	{ command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx; } || missing="$$missing nginx"; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; \
	fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev,bench]'
	touch $(STAMP)

## run: Redis, the offline model, a worker and the gateway on http://127.0.0.1:8000
run: install
	VENV=$(VENV) deploy/run-local.sh

## cluster: Redis (AOF), 3 gateway replicas, 2 workers, the offline model, nginx on :8000
cluster: install
	$(PY) -m deploy.cluster

## test: lint, type-check, validate docker-compose.yml, then the test suite on real processes
test: install lint compose-config pytest

## bench: every benchmark (P1-P5) on real processes, then the plots; see BENCHMARKS.md
bench: install
	$(PY) -m bench.relay
	$(PY) -m bench.latency
	$(PY) -m bench.resume
	$(PY) -m bench.held
	$(PY) -m bench.decisions
	$(PY) -m bench.plots

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

pytest: install
	$(PY) -m pytest

# docker-compose.yml must refuse to start without each secret, and be valid with them set.
COMPOSE_SECRETS := GATEWAY_API_KEYS REDIS_PASSWORD
COMPOSE_DUMMIES := GATEWAY_API_KEYS=dummy-keys REDIS_PASSWORD=dummy-password

compose-config:
	@command -v docker-compose >/dev/null 2>&1 || { \
	  echo "installing docker-compose (to validate docker-compose.yml)"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q docker-compose; }
	@for name in $(COMPOSE_SECRETS); do \
	  out=$$( (export $(COMPOSE_DUMMIES); unset $$name; \
	           docker-compose -f docker-compose.yml config --quiet) 2>&1 ) && { \
	    echo "docker-compose.yml starts without $$name: it must refuse"; exit 1; }; \
	  echo "$$out" | grep -q "$$name" || { echo "$$out"; exit 1; }; \
	  echo "docker-compose.yml refuses to start without $$name, as it must"; \
	done
	$(COMPOSE_DUMMIES) docker-compose -f docker-compose.yml config --quiet
	@echo "docker-compose.yml is valid with $(COMPOSE_SECRETS) set"

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf .run .mypy_cache .ruff_cache .pytest_cache
