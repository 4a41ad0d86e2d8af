"""dataset=folder: your own images and masks, every mask encoding and split mode."""

from __future__ import annotations

import json
import shutil
from functools import partial

import cv2
import numpy as np
import pytest
import torch

from segkit.prepare import run_check
from tests.conftest import realdata
from tests.fixtures.folder import PALETTE, write_folder
from tests.helpers import assert_samples, compose_config, make_datamodule, model_sample

make_dm = partial(make_datamodule, "folder")


@pytest.mark.parametrize(
    "encoding, image_format, extra",
    [
        ("index", "png", {"num_classes": 3}),
        ("index", "jpg", {"num_classes": 3}),
        ("binary", "png", {"num_classes": 1}),
        ("rgb", "png", {"num_classes": 3, "palette": [list(c) for c in PALETTE]}),
        ("index", "tif16", {"num_classes": 3, "in_channels": 1, "image_dtype": "uint16"}),
    ],
)
def test_every_mask_encoding_reads_the_classes(tmp_path, encoding, image_format, extra):
    masks = write_folder(tmp_path / "d", encoding=encoding, image_format=image_format)
    dm = make_dm(tmp_path / "d", tmp_path, mask_encoding=encoding, **extra)
    dm.setup()
    channels = extra.get("in_channels", 3)
    labels = {0, 1} if encoding == "binary" else {0, 1, 2}
    assert_samples(dm.train_dataset, channels, (32, 32), labels)
    for dataset in (dm.train_dataset, dm.val_dataset):
        for i, name in enumerate(dataset.names):
            np.testing.assert_array_equal(dataset[i]["mask"].numpy(), masks[name])
    sample = model_sample(dm, dm.train_dataset, 0)
    assert sample["image"].shape == (channels, 32, 32) and sample["image"].dtype == torch.float32
    assert float(sample["image"].min()) >= 0 and float(sample["image"].max()) <= 1  # normalize=None: the dtype's range


def test_mask_pattern_pairs_names(tmp_path):
    write_folder(tmp_path / "d", mask_pattern="{stem}_mask")
    dm = make_dm(tmp_path / "d", tmp_path, num_classes=3, mask_pattern="{stem}_mask")
    dm.setup()
    assert len(dm.train_dataset) + len(dm.val_dataset) == 8
    assert dm.train_dataset.mask_paths[0].name.endswith("_mask.png")


def test_ratio_split_is_deterministic_and_disjoint(tmp_path):
    write_folder(tmp_path / "d", n=20)
    splits = []
    for _ in range(2):
        dm = make_dm(tmp_path / "d", tmp_path, num_classes=3, val_fraction=0.25, seed=3)
        dm.setup()
        splits.append((dm.train_dataset.names, dm.val_dataset.names))
    assert splits[0] == splits[1] and len(splits[0][1]) == 5 and not set(splits[0][0]) & set(splits[0][1])
    other = make_dm(tmp_path / "d", tmp_path, num_classes=3, val_fraction=0.25, seed=4)
    other.setup()
    assert other.val_dataset.names != splits[0][1]


def test_list_split_inline_and_from_files(tmp_path):
    write_folder(tmp_path / "d")
    inline = make_dm(tmp_path / "d", tmp_path, num_classes=3, split="list", val_list=["tile_001", "tile_005.png"])
    inline.setup()
    assert inline.val_dataset.names == ["tile_001", "tile_005"]
    (tmp_path / "val.txt").write_text("# validation\ntile_002\n\ntile_003\n")
    (tmp_path / "val.json").write_text(json.dumps(["tile_002", "tile_003"]))
    for source in ("val.txt", "val.json"):
        dm = make_dm(tmp_path / "d", tmp_path, num_classes=3, split="list", val_list=str(tmp_path / source))
        dm.setup()
        assert dm.val_dataset.names == ["tile_002", "tile_003"] and len(dm.train_dataset) == 6
    bad = make_dm(tmp_path / "d", tmp_path, num_classes=3, split="list", val_list=["tile_001", "tile_999"])
    with pytest.raises(ValueError, match=r"data.val_list: 1 name\(s\) match no image in .*images, e.g. \['tile_999'\]"):
        bad.setup()


def test_folders_split(tmp_path):
    write_folder(tmp_path / "d" / "train", n=6, seed=1)
    write_folder(tmp_path / "d" / "val", n=3, seed=2)
    dm = make_dm(tmp_path / "d", tmp_path, num_classes=3, split="folders")
    dm.setup()
    assert len(dm.train_dataset) == 6 and len(dm.val_dataset) == 3
    assert all(n.startswith("train/") for n in dm.train_dataset.names) and all(n.startswith("val/") for n in dm.val_dataset.names)


def test_unpaired_files_are_named(tmp_path):
    write_folder(tmp_path / "d")
    (tmp_path / "d" / "masks" / "tile_003.png").unlink()
    shutil.copy(tmp_path / "d" / "masks" / "tile_004.png", tmp_path / "d" / "masks" / "orphan.png")
    dm = make_dm(tmp_path / "d", tmp_path, num_classes=3)
    with pytest.raises(ValueError) as unpaired:
        dm.setup()
    # plain substrings, not a pattern: the expected messages themselves hold '|' (the suffixes tried)
    lines = str(unpaired.value).splitlines()
    images, masks = tmp_path / "d" / "images", tmp_path / "d" / "masks"
    assert lines[0] == f"2 file(s) in folder data at {tmp_path / 'd'} have no counterpart (7 complete item(s)):"
    assert f"  {images / 'tile_003.png'}: image has no mask (expected {masks / 'tile_003'}.<png|tif|tiff|gif|bmp>)" in lines
    assert f"  {masks / 'orphan.png'}: mask has no image {images / 'orphan'}.<jpg|jpeg|png|bmp|tif|tiff>" in lines


def test_unknown_colours_are_named(tmp_path):
    write_folder(tmp_path / "d", encoding="rgb")
    victim = tmp_path / "d" / "masks" / "tile_002.png"
    colours = cv2.imread(str(victim))
    colours[0, :2] = (7, 8, 9)  # BGR of (9, 8, 7)
    cv2.imwrite(str(victim), colours)
    dm = make_dm(tmp_path / "d", tmp_path, num_classes=3, mask_encoding="rgb", palette=[list(c) for c in PALETTE])
    problems = dm.check()
    assert problems == [f"{victim}: 2 pixel(s) of 1 colour(s) not in the palette: (9, 8, 7) (data.palette lists the colour of each class)"]


def test_index_values_beyond_num_classes_are_named(tmp_path):
    write_folder(tmp_path / "d", classes=4)
    dm = make_dm(tmp_path / "d", tmp_path, num_classes=3)
    assert any("mask values [3] are outside the classes 0..2" in p for p in dm.check())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mask_encoding": "rgb", "num_classes": 3}, "needs data.palette"),
        ({"mask_encoding": "rgb", "num_classes": 3, "palette": [[0, 0, 0], [1, 1, 1]]}, "2 colours but there are 3 classes"),
        ({"mask_encoding": "rgb", "num_classes": 2, "palette": [[0, 0, 0], [0, 0, 0]]}, "same colour"),
        ({"mask_encoding": "binary", "num_classes": 3}, "binary has two classes"),
        ({"mask_encoding": "labels"}, "mask_encoding must be one of index, binary, rgb"),
        ({"split": "list"}, "needs data.val_list"),
        ({"split": "random"}, "split must be one of ratio, list, folders"),
        ({"mask_pattern": "mask_"}, r"must contain \{stem\}"),
        ({"class_names": ["a", "b", "c"]}, "3 names but there are 2 classes"),
    ],
)
def test_bad_settings_are_explained(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_dm(tmp_path, tmp_path, **kwargs)


def test_check_reports_classes_and_warns_on_absent_ones(tmp_path, capsys):
    write_folder(tmp_path / "d", classes=3)
    dm = make_dm(tmp_path / "d", tmp_path, num_classes=4, class_names=["bg", "a", "b", "c"])
    problems = run_check(dm)
    out = capsys.readouterr().out
    assert problems == [] and "every file checked, no problems" in out
    counts = {int(line.split()[0]): int(line.split()[2].replace(",", "")) for line in out.splitlines() if line.startswith("  ") and " px " in line}
    masks = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted((tmp_path / "d" / "masks").glob("*.png"))]
    assert counts == {k: int(sum((m == k).sum() for m in masks)) for k in range(4)}
    assert "warning: data.num_classes=4 but class(es) [3] never occur" in out


def test_trains_through_the_cli_config(tmp_path):
    write_folder(tmp_path / "d", n=6, encoding="binary")
    from segkit.train import run_training

    cfg = compose_config("train", [
        "dataset=folder", f"data.root={tmp_path / 'd'}", "data.mask_encoding=binary", "data.class_names=[background,blob]",
        "data.num_workers=0", "data.batch_size=2", "trainer.fast_dev_run=1", "logger=csv", f"paths.run_dir={tmp_path / 'run'}",
        f"data.cache_dir={tmp_path / 'work'}",
    ])
    summary = run_training(cfg)
    assert "val/dice/blob" in summary["final"]


def test_real_membrane_slices_read_as_two_classes(tmp_path):
    folder = realdata("membrane")
    dm = make_dm(folder, tmp_path, images_dir="image", masks_dir="label", mask_encoding="binary", in_channels=1,
                 class_names=["membrane", "cell"], split="list", val_list=["26", "27", "28", "29"])
    dm.setup()
    assert len(dm.train_dataset) == 24 and dm.val_dataset.names == ["26", "27", "28", "29"]
    assert_samples(dm.train_dataset, 1, (512, 512), {0, 1}, n=2)
    label = cv2.imread(str(folder / "label" / "0.png"), cv2.IMREAD_UNCHANGED)
    index = dm.train_dataset.names.index("0")
    np.testing.assert_array_equal(dm.train_dataset.load_mask(index), (label == 255).astype(np.uint8))
    assert int((dm.train_dataset.load_mask(index) == 0).sum()) == 57492  # membrane pixels of 0.png (SOURCES.md)


def test_a_relative_data_root_is_recorded_absolute(tmp_path, monkeypatch):
    """A run started with data.root=mydata from one folder is evaluated, predicted and resumed
    from others: what the checkpoint records names the same files from anywhere."""
    from datamodules.folder import FolderDataModule

    monkeypatch.chdir(tmp_path)
    dm = FolderDataModule(root="mydata", cache_dir="cache", num_classes=3)
    assert dm.root == tmp_path / "mydata"
    assert dm.data_config()["root"] == str(tmp_path / "mydata") and dm.data_config()["cache_dir"] == str(tmp_path / "cache")
    monkeypatch.chdir("/")
    rebuilt = FolderDataModule(**{k: v for k, v in dm.data_config().items() if k != "_target_"})
    assert rebuilt.root == tmp_path / "mydata" and rebuilt.work_dir == tmp_path / "cache"
