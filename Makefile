# The README's commands. Each target bootstraps .venv idempotently: torch first (the CPU
# build that lies on this machine's disk, or whatever build is already installed), then
# hpcrun with its extras.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.hpcrun-installed
TORCH  ?= torch==2.13.0

.PHONY: venv test demo bench lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e '.[train,dev]'
	touch $(STAMP)

venv: $(STAMP)

## make test: the whole suite (unit, integration with real torchrun, e2e)
test: $(STAMP)
	$(BIN)/python -m pytest -q

## make demo: the v3 pipeline under torchrun with 2 local processes on synthetic data
demo: $(STAMP)
	$(BIN)/torchrun --standalone --nproc_per_node=2 -m hpcrun.train --config v3 --stage all

## make bench: performance ratios measured in one run (not part of the tests)
bench: $(STAMP)
	$(BIN)/python tests/bench/run.py

lint: $(STAMP)
	$(BIN)/ruff check src tests

clean:
	rm -rf $(VENV) .pytest_cache
