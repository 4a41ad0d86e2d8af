from __future__ import annotations

import os
from pathlib import Path

import pytest

# never touch the network, never write into the user's cache
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"


@pytest.fixture(autouse=True, scope="session")
def _segkit_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["SEGKIT_CACHE"] = str(tmp_path_factory.mktemp("segkit-cache"))


def realdata(subdir: str) -> Path:
    """A folder of ../shared/realdata, or skip the test saying why."""
    path = REALDATA / subdir
    if not path.is_dir():
        pytest.skip(f"real data sample {path} is absent (it ships in ../shared/realdata beside the repo)")
    return path
