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

.PHONY: setup demo test lint bench quality gpu-wheels clean

setup: $(STAMP)

# torch first, pinned: these are the wheels that install here (see ../shared/ENVIRONMENT.md)
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev,sweep,export,loggers]'
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/segkit-train $(ARGS)

test: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_PARALLEL) $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .

# the bench extra: MONAI, the peer the sliding-window benchmark compares with (never a runtime dependency)
$(VENV)/.segkit-bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,sweep,export,loggers,bench]'
	@touch $@

bench: setup $(VENV)/.segkit-bench
	HF_HUB_OFFLINE=1 $(PY) bench/run.py

# segmentation quality on real data: membrane (ISBI EM) and oil-seep SAR, with baselines;
# results appended to bench/RESULTS.md, runs in outputs/quality/ (QUALITY_ARGS="--set trainer.max_epochs=200" for a GPU)
QUALITY_ARGS ?=
quality: setup
	HF_HUB_OFFLINE=1 $(PY) -m bench.quality $(QUALITY_ARGS)

# wheels for a lent GPU box (Python 3.12 with torch, Lightning, torchmetrics, timm; no registry):
# what it lacks, at this venv's versions; bench/gpu_box.sh installs them there (README: "On a lent GPU")
GPU_PYTHON ?= 3.12
WHEELS ?= .whl
GPU_PACKAGES := segmentation.models.pytorch|albumentations|albucore|simsimd|stringzilla|hydra.core|omegaconf|pydantic|pydantic.core|annotated.types|typing.inspection
gpu-wheels: setup
	rm -rf $(WHEELS) && mkdir -p $(WHEELS)
	$(PY) -m pip freeze | grep -i -E '^($(GPU_PACKAGES))==' > $(WHEELS)/requirements.txt
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version $(GPU_PYTHON) --implementation cp \
	    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
	    -d $(WHEELS) -r $(WHEELS)/requirements.txt
	$(PY) -m pip wheel --quiet --no-deps -w $(WHEELS) $$($(PY) -m pip freeze | grep -i '^antlr4-python3-runtime==')
	@ls $(WHEELS)

clean:
	rm -rf $(VENV) build *.egg-info outputs .pytest_cache
