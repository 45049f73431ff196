# Quick start: `make demo` (set-up + a demo run on simulated data) and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
CORES ?= 2
DEMO ?= demo

.PHONY: demo test lint bench clean-demo

# torch first, pinned: the CPU wheel; an unpinned torch would pull a multi-GB CUDA build.
$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

# Seed 900: three subjects with 14 microbleeds, 5 calcifications and veins between them.
demo: $(BIN)/.installed
	$(BIN)/cmbflow simulate $(DEMO)/bids --subjects 3 --seed 900 --preset standard
	$(BIN)/cmbflow $(DEMO)/bids $(DEMO)/derivatives participant --cores $(CORES)
	$(BIN)/cmbflow show $(DEMO)/derivatives
	$(BIN)/cmbflow evaluate $(DEMO)/bids/derivatives/simulation $(DEMO)/derivatives

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

lint: $(BIN)/.installed
	$(BIN)/python -m pytest -q tests/test_workflow.py -k lint

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/bench_subject.py

clean-demo:
	rm -rf $(DEMO)
