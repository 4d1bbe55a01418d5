# runner: `make help` lists the targets.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help install run test test-slow test-full test-durations bench book clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

# editable_mode=compat puts the repo root on sys.path, where Hydra finds hydra_plugins/ (our launcher and sweeper).
# setuptools warns at every compat install, in a block of stars, that the mode is transitional; pip shows a build
# backend's warnings even when --quiet. That one warning is filtered by its text (PYTHONWARNINGS, which pip's build
# subprocess inherits): errors and every other warning still show (tests/test_makefile.py).
# pip byte-compiles the 12,000 modules it installs one at a time (23 of the install's 44 s on 2 cores); compileall
# does it on every core (the install: 41 s), and the project's own modules too: where PYTHONDONTWRITEBYTECODE is set
# (as on this project's machines), a module without its .pyc is compiled again by every process that imports it.
COMPAT_WARNING := ignore:Compat editable installs
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	PYTHONWARNINGS="$(COMPAT_WARNING)" $(PY) -m pip install --quiet --no-compile -e '.[test]' --config-settings editable_mode=compat
	$(PY) -m compileall -q -j 0 $(VENV)/lib runner hydra_plugins tests
	touch $(STAMP)

install: $(STAMP)  ## make .venv and install the project into it

run: $(STAMP)  ## train the default config on the embedded digits dataset (offline)
	$(PY) -m runner

# Two workers (pytest-xdist): the tests are mostly single-threaded and these machines have two cores; loadgroup
# keeps the tests of one xdist_group (those sharing an expensive fixture) on one worker, and the order is
# tests/conftest.py's (costliest first: both workers finish together), not xdist's own reordering.
PYTEST := $(PY) -m pytest -n 2 --dist loadgroup --no-loadscope-reorder
test: $(STAMP)  ## run the tests but the slow tier (tests/conftest.py: the costliest by measure), in under 4 min
	$(PYTEST)

test-slow: $(STAMP)  ## run the slow tier (CI runs make test, then this: every test)
	$(PYTEST) -m slow

test-full: $(STAMP)  ## run every test in one session: both tiers (8.5 min)
	$(PYTEST) -m ''

test-durations: $(STAMP)  ## run every test and write each one's seconds to tests/durations.json (the slow tier's data)
	$(PYTEST) -m '' --write-durations

bench: $(STAMP)  ## measure throughput against a hand-written JAX loop
	$(PY) -m runner.bench

# FASHION_MNIST_DIR: the dir of Fashion-MNIST's four IDX files (/work/shared/data/get-fashion-mnist DIR fetches them;
# Debian: apt-get install dataset-fashion-mnist). A second make book skips what finished.
FASHION_MNIST_DIR ?= /usr/share/datasets/fashion-mnist
book: $(STAMP)  ## rerun chapter 11's notebook on Fashion-MNIST over 3 seeds -> docs/book.md (about 21 min on 2 cores, two experiments side by side)
	$(PY) -m runner.book --data $(FASHION_MNIST_DIR)

clean:  ## remove the venv and outputs
	rm -rf $(VENV) outputs
