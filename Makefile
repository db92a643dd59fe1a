# Two entry points (see README): `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_OUT ?= outputs/demo

.PHONY: demo test test-fast install install-test install-label wheel bundle clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e ".[test,label]"
	$(BIN)/python -m pip install --no-deps monailabel==0.8.5 pydicom-seg==0.4.1
	touch $@

# the MONAI Label server alone: make install-label && see the README's "MONAI Label" section
install-label: $(VENV)/.installed-test

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/localdiffusion demo --out $(DEMO_OUT)

# the whole suite: what CI runs
test: install-test
	$(BIN)/python -m pytest -q --durations=15 tests

# the fast lane: unit tests (no servers, installs, subprocesses or shipped models), under 2 minutes
test-fast: install-test
	$(BIN)/python -m pytest -q -m "not slow" tests

# a wheel that carries the shipped bundle (for the Slicer module's Resources/wheels or pip)
wheel: | $(BIN)/python
	$(BIN)/python -m pip install -q "setuptools>=70.1"  # builds wheels itself (a fresh venv's 65.5 needs `wheel`)
	$(BIN)/python -m pip wheel --no-deps --no-build-isolation -w dist .

# the MONAI bundle that stands alone: its code under scripts/ (monai_bundle/docs/README.md)
bundle: | $(BIN)/python
	$(BIN)/python tools/build_bundle.py --out dist/bundle

clean:
	rm -rf $(VENV) outputs build dist
