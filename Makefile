# distilwave — the commands a newcomer can guess.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PRESET ?= cpu-8k

.PHONY: setup system-deps test lint format demo bench clean help docker-lint docker-smoke

help:
	@echo "make setup   create $(VENV) and install distilwave with its dev tools (idempotent)"
	@echo "make test    run the test suite (installs what it needs first)"
	@echo "make system-deps   apt-get chromium + docker-compose for two tests (root; make test runs it)"
	@echo "make lint    ruff (lint + format check) and mypy"
	@echo "make demo    run the whole pipeline on the default real corpus (preset $(PRESET))"
	@echo "make bench   run the benchmarks and write benchmarks/results/*.json"
	@echo "make docker-lint   hadolint + compose checks (seconds; also part of make test)"
	@echo "make docker-smoke  build both images with build-image, smoke-run them (minutes)"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

system-deps:
	bash tests/system-deps.sh

test: $(STAMP) system-deps
	$(BIN)/python -m pytest -q -n 2

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

demo: $(STAMP)
	$(BIN)/distilwave pipeline --preset $(PRESET)

bench: $(STAMP)
	bash benchmarks/deps.sh
	$(BIN)/distilwave bench

docker-lint: $(STAMP) system-deps
	$(BIN)/python -m pytest -q tests/test_docker_files.py

docker-smoke:
	bash docker/smoke.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
