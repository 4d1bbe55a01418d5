# runner: `make help` lists the targets.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help install run test test-full bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

# editable_mode=compat puts the repo root on sys.path, where Hydra finds hydra_plugins/ (our launcher and sweeper).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	touch $(STAMP)

install: $(STAMP)  ## make .venv and install the project into it

run: $(STAMP)  ## train the default config on the embedded digits dataset (offline)
	$(PY) -m runner

# Two workers (pytest-xdist): the tests are mostly single-threaded and these machines have two cores; loadgroup
# keeps the tests of one xdist_group (those sharing an expensive fixture) on one worker.
test: $(STAMP)  ## run the fast tests; slow ones (marked @pytest.mark.slow) are skipped
	$(PY) -m pytest -n 2 --dist loadgroup

test-full: $(STAMP)  ## run every test, slow ones included (CI runs make test and a CLI smoke: .ci/run)
	$(PY) -m pytest -n 2 --dist loadgroup -m ''

bench: $(STAMP)  ## measure throughput against a hand-written JAX loop
	$(PY) -m runner.bench

clean:  ## remove the venv and outputs
	rm -rf $(VENV) outputs
