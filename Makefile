# Quick start: `make demo` (set-up + a demo run on simulated data) and `make test`.
# `make test-fast` (unit tests and dry runs, a few minutes) is the development loop.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
CORES ?= 2
DEMO ?= demo

.PHONY: demo test test-fast system-deps lint bench wheel image clean-demo

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

# The whole suite, as CI runs it: with the system packages its cluster and browser tests use.
test: $(BIN)/.installed system-deps
	$(BIN)/python -m pytest -q

test-fast: $(BIN)/.installed
	$(BIN)/python -m pytest -q -m "(not workflow or dryrun) and not slow"

# Debian packages of the tests: a one-node SLURM cluster (tests/slurm_cluster.py) and headless
# Chromium (report pages). Installed when missing, as root; elsewhere those tests skip.
SLURM_PROGRAMS := slurmctld slurmd sbatch squeue scontrol scancel munged
system-deps:
	@if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
		echo "system-deps: not root or no apt-get; the SLURM and browser tests will skip"; exit 0; fi; \
	export PATH="$$PATH:/usr/sbin" DEBIAN_FRONTEND=noninteractive; updated=; \
	for p in $(SLURM_PROGRAMS); do command -v $$p >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then apt-get update -qq && updated=1 && \
		apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge; fi; \
	if ! command -v chromium >/dev/null; then [ -n "$$updated" ] || apt-get update -qq; \
		apt-get install -y -qq chromium; fi

lint: $(BIN)/.installed
	$(BIN)/python -m pytest -q tests/test_workflow.py -k lint

# One subject's cost per rule (wall, CPU, start-up), then a cohort's throughput against PREVIOUS:
# the last commit before the per-subject cost work (issue 18); no release is tagged yet.
PREVIOUS ?= 98e0d29
bench: $(BIN)/.installed
	$(BIN)/python benchmarks/bench_throughput.py --previous $(PREVIOUS) --cores $(CORES)

# The wheel (workflow inside, version from the git tag) and the CPU container image (Dockerfile;
# a CUDA build: docs/install.md).
IMAGE ?= cmbflow:dev
wheel: $(BIN)/.installed
	$(BIN)/python -m pip wheel --no-deps -w dist .

image:
	docker build -t $(IMAGE) .

clean-demo:
	rm -rf $(DEMO)
