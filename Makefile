# Two commands do all the set-up on a fresh machine:
#   make demo   - installs what it needs, then runs a server and 3 clients on this machine
#   make test   - installs what it needs, then the static checks (ruff, mypy) and the whole test suite
#                 (make test-fast: the fast tier, see below)
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The demo trains on CIFAR-10. Offline, point DATA at a local copy: the cifar10-jpeg.tar.gz archive,
# a folder with train/ and test/ class folders, or a folder holding cifar-10-batches-py.
DATA ?= $(firstword $(wildcard ../shared/datasets/cifar10-jpeg.tar.gz) cifar10)
CLIENTS ?= 3
ROUNDS ?= 5
TRAIN ?= head
PYTEST_ARGS ?=
# Test tiers are pytest markers (pyproject.toml): fast = neither slow, docker nor multiprocess (unit tests and federations
# in threads of the test process); multiprocess = real server/client processes (kill -9, signals, TLS between processes,
# the CLI, the wheel); slow = real images, large models; docker = a real Docker engine. WORKERS pytest processes run in
# parallel (pytest-xdist; each test module on one worker); WORKERS=0: one process.
WORKERS ?= 3
XDIST := $(if $(filter-out 0,$(WORKERS)),-n $(WORKERS))

.PHONY: install system-deps demo lint test test-fast test-multiprocess test-slow test-docker protos bench clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements/runtime.txt requirements/dev.txt requirements/lock.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements/dev.txt -c requirements/lock.txt
	@# setuptools warns on every editable install that ./fedtl shadows the package: it is the package (links to the
	@# top-level folders), so the warning is noise that reads as breakage; only that warning is silenced
	PYTHONWARNINGS="ignore:Editable installation" $(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: install
	$(PY) -m scripts.local_federation --clients $(CLIENTS) --run-dir runs/demo -- \
	  --resume never --model efficientnet_lite0 --weights imagenet --train $(TRAIN) --image-size 128 \
	  --data $(DATA) --train-per-class 500 --test-per-class 200 --rounds $(ROUNDS) \
	  --batch-size 64 --lr 0.003 --weight-decay 5e-4 -- --data $(DATA)

# chromium and promtool (Debian packages) for the dashboard's browser test and the /metrics check
system-deps:
	@bash scripts/system_deps.sh

# ruff and mypy (configured in pyproject.toml); mypy reads fedtl.* through the links in fedtl/
lint: install
	$(PY) -m ruff check .
	$(PY) -m mypy

test: install system-deps lint
	$(PY) -m pytest -q $(XDIST) $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -q $(XDIST) -m "not slow and not docker and not multiprocess" $(PYTEST_ARGS)

test-multiprocess: install system-deps
	$(PY) -m pytest -q $(XDIST) -m "multiprocess and not slow and not docker" $(PYTEST_ARGS)

test-slow: install system-deps
	$(PY) -m pytest -q $(XDIST) -m "slow" $(PYTEST_ARGS)

test-docker: install
	$(PY) -m pytest -q -m "docker" $(PYTEST_ARGS)

protos: install
	$(PY) -m protos.generate

bench: install
	$(PY) -m bench.run_all

clean:
	rm -rf runs .pytest_cache .hypothesis
