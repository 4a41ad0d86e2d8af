"""normalize mean/std: dataset works for every dataset, not only the oil seeps."""

import json

import numpy as np
import pytest
import tifffile

from datamodules.buildings import BuildingsDataModule
from tests.fixtures.buildings import write_buildings

STATS = {"mean": "dataset", "std": "dataset", "max_pixel_value": 255.0}


def test_prepare_writes_the_training_split_statistics_when_normalize_asks(tmp_path):
    write_buildings(tmp_path / "b")
    plain = BuildingsDataModule(root=str(tmp_path / "b"), cache_dir=str(tmp_path / "plain"))
    assert not any("image statistics" in m for m in plain.prepare())  # fixed ImageNet values: nothing to compute
    dm = BuildingsDataModule(root=str(tmp_path / "b"), cache_dir=str(tmp_path / "w"), normalize=STATS, augment=None)
    messages = dm.prepare()
    assert messages[-1].startswith("image statistics of 8 training images written to")
    assert dm.prepare()[-1].endswith("are up to date")  # idempotent
    stats = json.loads((tmp_path / "w" / "image_stats.json").read_text())
    dm.setup("fit")
    pixels = np.concatenate([tifffile.imread(p).reshape(-1, 3) / 255.0 for p in dm.train_dataset.image_paths])
    np.testing.assert_allclose(stats["mean"], pixels.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(stats["std"], pixels.std(axis=0), rtol=1e-6)
    assert dm.preprocessing()["normalize"]["mean"] == pytest.approx(stats["mean"])


def test_changed_training_images_are_counted_again(tmp_path):
    write_buildings(tmp_path / "b")
    dm = BuildingsDataModule(root=str(tmp_path / "b"), cache_dir=str(tmp_path / "w"), normalize=STATS)
    dm.prepare()
    first = json.loads((tmp_path / "w" / "image_stats.json").read_text())["mean"]
    dm.setup("fit")
    tifffile.imwrite(dm.train_dataset.image_paths[0], np.full((32, 32, 3), 255, np.uint8))
    again = BuildingsDataModule(root=str(tmp_path / "b"), cache_dir=str(tmp_path / "w"), normalize=STATS)
    assert "written" in again.prepare()[-1]
    assert json.loads((tmp_path / "w" / "image_stats.json").read_text())["mean"] != first
