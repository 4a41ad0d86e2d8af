from __future__ import annotations

import os
from pathlib import Path

import pytest

# never touch the network, never write into the user's cache
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):  # `make test` runs a worker per core: share the cores, don't oversubscribe
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

from bench.common import REALDATA  # noqa: E402 — ../shared/realdata, or $SEGKIT_REALDATA
from tests.helpers import TINY_TRAIN, run_segkit  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _segkit_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["SEGKIT_CACHE"] = str(tmp_path_factory.mktemp("segkit-cache"))


def realdata(subdir: str) -> Path:
    """A folder of ../shared/realdata, or skip the test saying why."""
    path = REALDATA / subdir
    if not path.is_dir():
        pytest.skip(f"real data sample {path} is absent (it ships in ../shared/realdata beside the repo, or set SEGKIT_REALDATA)")
    return path


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory of ``segkit-train`` on the synthetic data (two steps): its checkpoints
    carry everything prediction, evaluation and export need; its console output is in
    ``stdout.txt`` beside it."""
    work = tmp_path_factory.mktemp("trained")
    result = run_segkit("segkit-train", "trainer.fast_dev_run=2", f"hydra.run.dir={work / 'run'}", *TINY_TRAIN, cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    (work / "stdout.txt").write_text(result.stdout)  # what the console showed, for the tests of the summary
    (work / "stderr.txt").write_text(result.stderr)
    return work / "run"
