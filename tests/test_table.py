"""Compact per-item columns: the same values, order and splits as the lists they replace."""

from __future__ import annotations

import gc
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from segkit.data.table import PathColumn, StringColumn, init_loader_worker
from tests.fixtures.airbus import write_airbus
from tests.helpers import make_datamodule

ROOT = Path(__file__).resolve().parents[1]


def test_a_string_column_gives_back_exactly_what_it_was_given():
    values = ["a.jpg", "", "ünïcode ✓.png", "x" * 1000, "\udcff-undecodable-byte", "a.jpg"]
    column = StringColumn(values)
    assert len(column) == 6 and list(column) == values and column == values
    assert [column[i] for i in range(-6, 6)] == values + values
    assert column[1:4] == values[1:4] and column.index("ünïcode ✓.png") == 2 and "a.jpg" in column
    assert pickle.loads(pickle.dumps(column)) == column
    assert column + ["z"] == [*values, "z"] and ["z"] + column == ["z", *values]  # as the lists it replaces
    assert column + StringColumn(["y"]) == [*values, "y"]
    with pytest.raises(IndexError, match="index 6 out of range for 6 items"):
        column[6]
    assert list(StringColumn([])) == [] and len(StringColumn([])) == 0
    assert column.nbytes == sum(len(v.encode("utf-8", "surrogateescape")) for v in values) + 7 * 8  # bytes + offsets


def test_a_path_column_keeps_none_as_none():
    values = [Path("/data/a.png"), None, Path("rel/b.tif")]
    column = PathColumn(values)
    assert list(column) == values and column[1] is None and isinstance(column[0], Path)
    assert pickle.loads(pickle.dumps(column))[2] == Path("rel/b.tif")


def test_datasets_hold_the_same_items_order_and_splits_as_the_scan(tmp_path):
    """The training and validation datasets built from compact columns name, in order, exactly
    the items the split chose, with the same image and mask files."""
    data = write_airbus(tmp_path / "airbus")
    dm = make_datamodule("airbus", data.root, tmp_path)
    dm.setup("fit")
    items = dm.items()
    train_idx, val_idx = dm.split(items)
    for dataset, chosen in ((dm.train_dataset, train_idx), (dm.val_dataset, val_idx)):
        assert isinstance(dataset.names, StringColumn) and isinstance(dataset.image_paths, PathColumn)
        assert list(dataset.names) == [items[i].name for i in chosen]
        assert list(dataset.image_paths) == [items[i].image for i in chosen]
        assert list(dataset.mask_paths) == [items[i].mask for i in chosen]


def test_a_worker_freezes_what_it_inherited():
    gc.unfreeze()
    try:
        before = gc.get_freeze_count()
        init_loader_worker(0)
        assert gc.get_freeze_count() > before
    finally:
        gc.unfreeze()


def test_forked_workers_load_after_the_parent_used_opencv(tmp_path):
    """The workers' start-up must not wait on state the fork did not copy (OpenCV's thread
    pool, used by the parent just before): two workers deliver three epochs, in a process of
    its own with a time limit so that a hang fails the test instead of stalling the suite."""
    data = write_airbus(tmp_path / "airbus")
    script = f"""
import cv2, numpy as np
from tests.helpers import make_datamodule
from pathlib import Path
image = np.random.default_rng(0).integers(0, 255, (1500, 1500, 3), dtype=np.uint8)
cv2.GaussianBlur(cv2.resize(image, (900, 900)), (5, 5), 0)  # the parent's OpenCV thread pool, in use
dm = make_datamodule("airbus", Path({str(data.root)!r}), Path({str(tmp_path)!r}), num_workers=2)
dm.setup("fit")
loader = dm.train_dataloader()
seen = sum(len(batch["image"]) for epoch in range(3) for batch in loader)
print("delivered", seen)
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.split("delivered")[1]) > 0


def test_loaders_with_workers_freeze_the_parent_before_it_forks(tmp_path, monkeypatch):
    import segkit.data.datamodule

    frozen = []
    monkeypatch.setattr(segkit.data.datamodule, "freeze_before_fork", lambda: frozen.append(True))
    data = write_airbus(tmp_path / "airbus")
    for workers, expected in ((0, []), (1, [True])):
        frozen.clear()
        dm = make_datamodule("airbus", data.root, tmp_path, num_workers=workers)
        dm.setup("fit")
        loader = dm.train_dataloader()
        assert frozen == expected and (loader.worker_init_fn is not None) == bool(workers)


def test_the_listing_runs_without_the_cyclic_collector_and_turns_it_back_on(tmp_path, monkeypatch):
    """The scan builds one object per file and name: with the collector on, its passes over
    every live object made the cost per item grow with the dataset (1.8x at 100,000 tiles).
    It is paused for the scan only, and on again afterwards, also when the scan fails."""
    import gc

    data = write_airbus(tmp_path / "airbus")
    dm = make_datamodule("airbus", data.root, tmp_path)
    scan, during = dm.scan, []
    monkeypatch.setattr(dm, "scan", lambda: (during.append(gc.isenabled()), scan())[1])
    assert gc.isenabled()
    assert sorted(item.name for item in dm.items()) == sorted(data.ships)
    assert during == [False] and gc.isenabled()

    failing = make_datamodule("airbus", data.root, tmp_path)
    monkeypatch.setattr(failing, "scan", lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failing.items()
    assert gc.isenabled()
