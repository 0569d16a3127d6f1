# Everything a fresh machine needs: system packages, a virtualenv, the project.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTHON  ?= python3

.PHONY: install system-deps run test lint pytest compose-config format clean

install: system-deps $(STAMP)

system-deps:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q redis-server; }

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $(STAMP)

## run: Redis, the offline model, a worker and the gateway on http://127.0.0.1:8000
run: install
	VENV=$(VENV) deploy/run-local.sh

## test: lint, type-check, validate docker-compose.yml, then the test suite on real processes
test: install lint compose-config pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

pytest: install
	$(PY) -m pytest

compose-config:
	@command -v docker-compose >/dev/null 2>&1 || { \
	  echo "installing docker-compose (to validate docker-compose.yml)"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q docker-compose; }
	docker-compose -f docker-compose.yml config --quiet
	@echo "docker-compose.yml is valid"

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf .run .mypy_cache .ruff_cache .pytest_cache
