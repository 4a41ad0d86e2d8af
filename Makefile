# make demo  — set up (once) and train on the embedded synthetic dataset
# make test  — set up (once) and run the test suite
# make lint  — set up (once) and run ruff (settings in pyproject.toml); CI runs it before the tests
# make bench — set up (once) and run the benchmarks (prints ratios against baselines)
# make quality — set up (once), train and evaluate on the real samples in ../shared/realdata
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.segkit-installed
ARGS ?=
# the suite runs one worker per core, a test file to a worker (module fixtures are built once);
# PYTEST_ARGS="-n 0" runs it in this process
PYTEST_ARGS ?=
PYTEST_PARALLEL ?= -n auto --dist loadfile

export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: setup demo test lint bench quality clean

setup: $(STAMP)

# torch first, pinned: these are the wheels that install here (see ../shared/ENVIRONMENT.md)
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev,sweep,export]'
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/segkit-train $(ARGS)

test: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_PARALLEL) $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .

# the bench extra: MONAI, the peer the sliding-window benchmark compares with (never a runtime dependency)
$(VENV)/.segkit-bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,sweep,export,bench]'
	@touch $@

bench: setup $(VENV)/.segkit-bench
	HF_HUB_OFFLINE=1 $(PY) bench/run.py

# segmentation quality on real data: membrane (ISBI EM) and oil-seep SAR, with baselines;
# results appended to bench/RESULTS.md, runs in outputs/quality/ (QUALITY_ARGS="--set trainer.max_epochs=200" for a GPU)
QUALITY_ARGS ?=
quality: setup
	HF_HUB_OFFLINE=1 $(PY) -m bench.quality $(QUALITY_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info outputs .pytest_cache
