import json
from functools import partial

import numpy as np
import pytest
import tifffile

from datamodules.oilseep import OilSeepDataModule
from tests.conftest import realdata
from tests.fixtures.oilseep import write_oilseep
from tests.helpers import assert_augmentation_keeps_alignment, assert_samples, make_datamodule, model_sample

make_dm = partial(make_datamodule, "oilseep")  # normalize: the fixed range x / 65535


def test_uint16_images_and_multiclass_masks(tmp_path):
    data = write_oilseep(tmp_path / "o")
    dm = make_dm(tmp_path / "o", tmp_path)
    dm.setup("fit")
    assert_samples(dm.train_dataset, 1, (32, 32), set(range(8)))
    name = dm.train_dataset.names[0]
    sample = model_sample(dm, dm.train_dataset, 0)
    image, mask = data[name]
    np.testing.assert_allclose(sample["image"][0].numpy(), image / 65535.0, rtol=1e-6)  # fixed range
    np.testing.assert_array_equal(sample["mask"].numpy(), mask)
    assert not set(dm.val_dataset.names) & set(dm.train_dataset.names)
    scenes = {split: {n.split(".")[0] for n in d.names} for split, d in (("train", dm.train_dataset), ("val", dm.val_dataset))}
    assert len(scenes["val"]) == 1 and not scenes["val"] & scenes["train"]  # 1 of 3 scenes held out whole


def test_dataset_statistics_normalisation(tmp_path):
    write_oilseep(tmp_path / "o")
    dm = make_dm(tmp_path / "o", tmp_path, normalize={"mean": "dataset", "std": "dataset", "max_pixel_value": 65535.0})
    with pytest.raises(FileNotFoundError, match="image_stats.json, which does not exist yet.*segkit-prepare"):
        dm.setup("fit")
    messages = dm.prepare()
    assert "written" in messages[0] and "up to date" in dm.prepare()[0]  # idempotent
    stats = json.loads((tmp_path / "work" / "image_stats.json").read_text())
    dm.setup("fit")
    pixels = np.concatenate([tifffile.imread(p).ravel() / 65535.0 for p in dm.train_dataset.image_paths])
    assert stats["mean"][0] == pytest.approx(pixels.mean(), rel=1e-9)
    assert stats["std"][0] == pytest.approx(pixels.std(), rel=1e-6)
    sample = model_sample(dm, dm.train_dataset, 0)["image"].numpy()[0]
    raw = tifffile.imread(dm.train_dataset.image_paths[0]) / 65535.0
    np.testing.assert_allclose(sample, (raw - stats["mean"][0]) / stats["std"][0], rtol=1e-4, atol=1e-4)


def test_constant_images_do_not_divide_by_zero(tmp_path):
    write_oilseep(tmp_path / "o", n=4)
    for path in (tmp_path / "o" / "train_images_256").glob("*.tif"):
        tifffile.imwrite(path, np.full((32, 32), 1234, np.uint16))
    stats_dm = make_dm(tmp_path / "o", tmp_path, normalize={"mean": "dataset", "std": "dataset", "max_pixel_value": 65535.0})
    stats_dm.prepare()
    stats_dm.setup("fit")
    assert np.isfinite(model_sample(stats_dm, stats_dm.train_dataset, 0)["image"].numpy()).all()
    per_image = make_dm(tmp_path / "o", tmp_path / "p", normalize={"normalization": "min_max"})
    per_image.setup("fit")
    assert (model_sample(per_image, per_image.train_dataset, 0)["image"] == 0).all()


def test_augmentation_keeps_image_and_mask_aligned():
    dm = OilSeepDataModule()  # deliberately the dataset's own augmentations (h and v flips)
    assert dm.augment == OilSeepDataModule.defaults["augment"] and dm.in_channels == 1
    assert_augmentation_keeps_alignment(dm, tolerance=0.0)


def test_bad_input_is_named(tmp_path):
    write_oilseep(tmp_path / "o")
    images = sorted((tmp_path / "o" / "train_images_256").glob("*.tif"))
    masks = sorted((tmp_path / "o" / "train_masks_256").glob("*.tif"))
    tifffile.imwrite(images[0], np.zeros((32, 32), np.uint8))  # 8-bit where 16-bit expected
    tifffile.imwrite(masks[1], np.full((32, 32), 9, np.uint8))  # class 9 of 8
    data = images[2].read_bytes()
    images[2].write_bytes(data[: len(data) // 3])  # truncated TIFF
    masks[3].unlink()  # image without mask
    problems = make_dm(tmp_path / "o", tmp_path).check()
    text = "\n".join(problems)
    assert len(problems) == 4, text
    assert f"{images[0]}: image is 8-bit (uint8), the dataset expects 16-bit (uint16)" in text
    assert f"{masks[1]}: mask values [9] are outside the classes 0..7" in text
    assert f"{images[2]}: cannot decode TIFF" in text
    assert f"{images[3]}: image has no mask" in text


def test_real_oilseep_sample(tmp_path):
    folder = realdata("oilseep")
    dm = make_dm(folder, tmp_path, images_dir="images", masks_dir="masks")
    dm.setup("fit")
    assert len(dm.train_dataset) + len(dm.val_dataset) == 138
    train_scenes = {n.split(".")[0] for n in dm.train_dataset.names}
    val_scenes = {n.split(".")[0] for n in dm.val_dataset.names}
    assert len(val_scenes) == 3 and not train_scenes & val_scenes  # 17 scenes, round(0.2 * 17) held out whole
    image, mask = dm.train_dataset.load(0)
    assert image.shape == (256, 256, 1) and image.dtype == np.uint16
    assert mask.shape == (256, 256) and mask.dtype == np.uint8 and mask.max() <= 7
    assert dm.check() == []
