# Everything a fresh machine needs: system packages, a virtualenv, the project.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTHON  ?= python3

.PHONY: install load-faults system-deps browser-deps js-deps run cluster test test-cluster lint pytest compose-config format clean bench \
        compat compat-deps load config-docs

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

# Debian's Chromium for the inbox's browser tests (Playwright drives it by path; no download).
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium (for the inbox's browser tests)"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium; \
	}

# Node.js, npm and the JS clients that tests/test_clients_js.py drives (pinned in tests/js).
JS_DIR   := tests/js
JS_STAMP := $(JS_DIR)/node_modules/.package-lock.json
JS_LOCK  := $(wildcard $(JS_DIR)/package-lock.json)

js-deps: $(JS_STAMP)

$(JS_STAMP): $(JS_DIR)/package.json $(JS_LOCK)
	@missing=""; \
	command -v node >/dev/null 2>&1 || missing="$$missing nodejs"; \
	command -v npm >/dev/null 2>&1 || missing="$$missing npm"; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing (for the JS client tests)"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; \
	fi
	cd $(JS_DIR) && if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; \
	  else npm install --no-audit --no-fund; fi
	touch $@

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

## test-cluster: every test on a local Redis Cluster (failovers, the 20-kill loop included)
test-cluster: install
	$(PY) -m pytest -m cluster

## bench: every benchmark (P1-P5) on real processes, then the plots; see BENCHMARKS.md
bench: install
	$(PY) -m bench.relay
	$(PY) -m bench.latency
	$(PY) -m bench.resume
	$(PY) -m bench.held
	$(PY) -m bench.decisions
	$(PY) -m bench.plots

## load: 10,000 held streams through nginx, 3 replicas, workers, Redis (docs/deployment.md)
load: install
	$(PY) -m bench.held_nginx

## load-faults: the same 10,000 streams while replicas are killed (kill -9) and restarted, 10 times
load-faults: install
	$(PY) -m bench.held_nginx --kills 10 --kill-every 6

# llama.cpp's server and the SmolLM2 GGUF live in their own virtualenv. llama-cpp-python
# compiles llama.cpp (about 9 minutes on two cores); GGML_NATIVE=OFF keeps the build portable.
COMPAT_VENV  ?= .venv-compat
COMPAT_STAMP := $(COMPAT_VENV)/.installed

## compat: the approval flows against llama.cpp's server with SmolLM2 (see docs/compat.md)
compat: install compat-deps
	COMPAT_VENV=$(COMPAT_VENV) $(PY) -m compat.run

compat-deps: $(COMPAT_STAMP)

$(COMPAT_STAMP): compat/requirements.txt
	@command -v c++ >/dev/null 2>&1 || { echo "installing g++ (to build llama.cpp)"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q g++; }
	$(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_VENV)/bin/pip install -q --upgrade pip
	CMAKE_ARGS="-DGGML_NATIVE=OFF" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
	  $(COMPAT_VENV)/bin/pip install -q -r compat/requirements.txt
	touch $(COMPAT_STAMP)

## config-docs: docs/configuration.md from the settings object (tests/test_config_reference.py)
config-docs: $(STAMP)
	$(PY) -m core.config_reference

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

pytest: install js-deps browser-deps
	$(PY) -m pytest --durations=25

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
