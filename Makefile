# The two commands of README.md, and the pieces they stand on. Every target is idempotent.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install lint up down bench

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/cdcflow demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy .
	$(BIN)/cdcflow schema check --strict
	$(BIN)/cdcflow infra up
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy .
	$(BIN)/cdcflow schema check --strict

up: $(STAMP)
	$(BIN)/cdcflow infra up

down: $(STAMP)
	$(BIN)/cdcflow infra down

bench: $(STAMP)
	$(BIN)/cdcflow infra up
	$(BIN)/python bench/update_readme.py
