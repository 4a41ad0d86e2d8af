import json
from functools import partial

import numpy as np
import pytest
import tifffile

from datamodules.buildings import BuildingsDataModule
from tests.conftest import realdata
from tests.fixtures.buildings import write_buildings
from tests.helpers import assert_augmentation_keeps_alignment, assert_samples, make_datamodule

make_dm = partial(make_datamodule, "buildings")


@pytest.mark.parametrize("foreground", [255, 1])
def test_masks_0_255_and_0_1_both_read_as_0_1(tmp_path, foreground):
    masks = write_buildings(tmp_path / "b", foreground=foreground)
    dm = make_dm(tmp_path / "b", tmp_path)
    dm.setup("fit")
    assert_samples(dm.train_dataset, 3, (32, 32), {0, 1})
    for i, name in enumerate(dm.train_dataset.names):
        np.testing.assert_array_equal(dm.train_dataset[i]["mask"].numpy(), masks[name])
    assert [p.name for p in dm.test_images] == ["test_image_0.tif", "test_image_1.tif"]


def test_split_from_json_and_the_prepared_default(tmp_path):
    write_buildings(tmp_path / "b")
    split = tmp_path / "val.json"
    split.write_text(json.dumps(["img_3", "img_7.tif"]))
    dm = make_dm(tmp_path / "b", tmp_path, split_file=str(split))
    dm.setup("fit")
    assert dm.val_dataset.names == ["img_3", "img_7"] and len(dm.train_dataset) == 8
    # no split file: segkit-prepare writes a deterministic one, and training uses it
    first = make_dm(tmp_path / "b", tmp_path / "one")
    messages = first.prepare_dataset()
    written = json.loads((tmp_path / "one" / "work" / "split.json").read_text())
    assert "wrote a deterministic validation split of 2 images" in messages[0] and len(written) == 2
    assert "exists" in first.prepare_dataset()[0]  # idempotent
    first.setup("fit")
    assert first.val_dataset.names == sorted(written)
    second = make_dm(tmp_path / "b", tmp_path / "two")
    second.prepare_dataset()
    assert json.loads((tmp_path / "two" / "work" / "split.json").read_text()) == written


def test_split_naming_unknown_files_is_an_error(tmp_path):
    write_buildings(tmp_path / "b")
    split = tmp_path / "val.json"
    split.write_text(json.dumps(["img_3", "img_99"]))
    with pytest.raises(ValueError, match=r"val.json: 1 name\(s\) match no training image, e.g. \['img_99'\]"):
        make_dm(tmp_path / "b", tmp_path, split_file=str(split)).setup("fit")
    split.write_text("{not json")
    with pytest.raises(ValueError, match="val.json: not valid JSON"):
        make_dm(tmp_path / "b", tmp_path, split_file=str(split)).setup("fit")


def test_augmentation_keeps_image_and_mask_aligned():
    dm = BuildingsDataModule()  # deliberately the dataset's own augmentations (flips, 90 degree turns)
    assert dm.augment == BuildingsDataModule.defaults["augment"]
    assert_augmentation_keeps_alignment(dm, tolerance=0.0)


def test_bad_masks_and_pairs_are_named(tmp_path):
    write_buildings(tmp_path / "b")
    masks = tmp_path / "b" / "train" / "masks"
    tifffile.imwrite(masks / "mask_0.tif", np.full((32, 32), 128, np.uint8))
    tifffile.imwrite(masks / "mask_1.tif", np.zeros((16, 16), np.uint8))
    (masks / "mask_2.tif").rename(masks / "mask_20.tif")
    problems = "\n".join(make_dm(tmp_path / "b", tmp_path).check())
    assert "mask_0.tif: a binary mask must hold {0, 255} or {0, 1}, found values [128]" in problems
    assert "mask_1.tif: mask is 16x16 but its image" in problems
    assert "img_2.tif: image has no mask" in problems and "mask_20.tif: mask has no image" in problems


def test_real_building_sample(tmp_path):
    folder = realdata("building")
    dm = make_dm(folder, tmp_path, images_dir="images", masks_dir="masks", image_prefix="", mask_prefix="")
    dm.setup("fit")
    assert len(dm.train_dataset) + len(dm.val_dataset) == 5
    index = dm.train_dataset.names.index("AerialPatch0") if "AerialPatch0" in dm.train_dataset.names else None
    dataset = dm.train_dataset if index is not None else dm.val_dataset
    index = dataset.names.index("AerialPatch0")
    image, mask = dataset.load(index)
    assert image.shape == (256, 256, 3) and image.dtype == np.uint8
    assert mask.shape == (256, 256) and int(mask.sum()) == 12465  # {0:53071, 1:12465} per SOURCES.md
    assert dm.check() == []
