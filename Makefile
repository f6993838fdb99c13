.PHONY: install fmt lint type test test-unit check demo bench
VENV := .venv/bin

install:
	bash scripts/bootstrap.sh

fmt: install
	$(VENV)/ruff format src tests benchmarks
	$(VENV)/ruff check --fix src tests benchmarks

lint: install
	$(VENV)/ruff check src tests benchmarks
	$(VENV)/ruff format --check src tests benchmarks

type: install
	$(VENV)/mypy

test: install
	$(VENV)/pytest

test-unit: install
	$(VENV)/pytest -m "not integration"

check:
	bash scripts/test.sh

demo:
	bash scripts/demo.sh
