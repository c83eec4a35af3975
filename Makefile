# The README's commands. Each target bootstraps .venv idempotently: torch first (the CPU
# build that lies on this machine's disk, or whatever build is already installed; TORCH holds
# pip arguments, e.g. TORCH="torch==2.5.1 --index-url https://download.pytorch.org/whl/cu124"),
# then hpcrun with its extras (train, lightning, dev).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.hpcrun-installed
TORCH  ?= torch==2.13.0

.PHONY: venv test test-fast demo demo-slurm bench mutation mutation-validators lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[train,lightning,dev]'
	touch $(STAMP)

venv: $(STAMP)

# The in-process tests run in a shuffled order (pytest-randomly: the modules, then the tests
# in each; random and numpy reseeded before each test), so that a test that only passes after
# another fails. The order follows TEST_SEED: fixed under CI, so that a run is reproducible,
# and new on every run elsewhere; it is printed first, and `make test-fast TEST_SEED=N` replays
# it. The slow tests (tests/integration, tests/e2e and the slow ones in tests/unit) share
# sandboxes and run in file order: pyproject.toml's addopts keep the plugin off unless a
# command asks for it, as UNIT does.
ifndef TEST_SEED
  ifdef CI
    TEST_SEED := 1
  else
    TEST_SEED := $(shell od -An -N4 -tu4 /dev/urandom | tr -d ' ')
  endif
endif
UNIT := tests/unit -m "not slow" -p randomly --randomly-seed=$(TEST_SEED)
SAY_SEED := @echo "in-process tests in random order, TEST_SEED=$(TEST_SEED) (replay: make test-fast TEST_SEED=$(TEST_SEED))"

## make test: the whole suite: the in-process tests (shuffled, see TEST_SEED), then the slow
## ones (integration with real torchrun, e2e) in file order
test: $(STAMP)
	$(SAY_SEED)
	$(BIN)/python -m pytest -q $(UNIT)
	$(BIN)/python -m pytest -q -m slow

## make test-fast: the in-process tests (tests/unit, not the slow ones) for the edit-test
## loop, shuffled (TEST_SEED=N replays an order)
test-fast: $(STAMP)
	$(SAY_SEED)
	$(BIN)/python -m pytest -q $(UNIT)

## make demo: submit v3 on the local backend (torchrun, 2 processes, synthetic data), watch it,
## then verify and summarise the run and write its report (fetch), and report it again (a
## report of a run that did not change redraws nothing)
demo: $(STAMP)
	$(BIN)/hpcrun submit v3 --backend local --follow
	$(BIN)/hpcrun fetch
	$(BIN)/hpcrun report

## make demo-slurm: the same on a real SLURM cluster started on this machine (hpc/slurm/up.sh)
demo-slurm: $(STAMP)
	eval "$$(hpc/slurm/up.sh --env)" && $(BIN)/hpcrun submit v3 --backend slurm --follow \
	  && $(BIN)/hpcrun fetch && $(BIN)/hpcrun report

## make bench: performance ratios measured in one run (not part of the tests)
bench: $(STAMP)
	$(BIN)/pip install -q -e '.[train,lightning,dev,bench]'
	$(BIN)/python tests/bench/run.py

## make mutation: mutation score (mutmut 3, configured in pyproject.toml) of the modules in
## MUTATE, one at a time, each against the unit tests that reach it; prints killed/total per
## module. Slow (tens of minutes for all four), not part of make test; results stay in ./mutants
## (`$(BIN)/mutmut results`, `$(BIN)/mutmut show NAME`). One module: make mutation MUTATE=selection
MUTATE      ?= selection diagnose rundir config
MUTMUT_JOBS ?= 2
mutation: $(STAMP)
	$(BIN)/python -c "import mutmut" 2>/dev/null || $(BIN)/pip install -q 'mutmut>=3.8,<4'
	for m in $(MUTATE); do $(BIN)/mutmut run --max-children $(MUTMUT_JOBS) "hpcrun.$$m.*" || exit 1; done
	$(BIN)/python tests/mutation/score.py

## make mutation-validators: mutation score of config.py's pydantic validators, which mutmut
## leaves alone (it skips decorated functions). cosmic-ray mutates the validators' bodies in
## copies of the project under ./mutants-validators and runs the tests that load configs
## against each mutant (tests/mutation/validators.py); prints killed/total and the survivors.
## About 5 minutes (some 200 mutants, 2-3 s each) on 2 shared CPU cores; not part of make test.
mutation-validators: $(STAMP)
	$(BIN)/python -c "import cosmic_ray" 2>/dev/null || $(BIN)/pip install -q 'cosmic-ray>=8.7,<9'
	$(BIN)/python tests/mutation/validators.py --jobs $(MUTMUT_JOBS) --survivors

lint: $(STAMP)
	$(BIN)/ruff check src tests

clean:
	rm -rf $(VENV) .pytest_cache mutants mutants-validators
