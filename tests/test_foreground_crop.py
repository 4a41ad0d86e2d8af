"""ForegroundCrop: crops that hold a drawn class as often as asked (nnU-Net's oversampling)."""

import albumentations as A
import numpy as np
import pytest

from segkit.data.transforms import ForegroundCrop, build_augmentations


def crops(transform, image, mask, n, seed0=0):
    pipeline = A.Compose([transform])
    for seed in range(seed0, seed0 + n):
        pipeline.set_random_seed(seed)
        yield pipeline(image=image, mask=mask)


def test_the_share_of_crops_holding_a_rare_pixel_is_the_configured_share_plus_chance():
    height = width = 40
    crop = 10
    mask = np.zeros((height, width), np.uint8)
    y, x = 30, 5
    mask[y, x] = 4
    image = np.zeros((height, width, 1), np.uint8)
    # a random crop holds (y, x) for the top-left corners within crop - 1 above/left of it, clipped
    rows = min(y, height - crop) - max(0, y - crop + 1) + 1
    cols = min(x, width - crop) - max(0, x - crop + 1) + 1
    by_chance = rows * cols / ((height - crop + 1) * (width - crop + 1))
    n = 600
    share = 1 / 3
    hits = sum(bool((r["mask"] == 4).any()) for r in crops(ForegroundCrop(crop, crop, foreground_share=share), image, mask, n))
    assert hits / n == pytest.approx(share + (1 - share) * by_chance, abs=0.06)
    always = sum(bool((r["mask"] == 4).any()) for r in crops(ForegroundCrop(crop, crop, foreground_share=1.0), image, mask, 50))
    assert always == 50


def test_the_class_is_drawn_uniformly_among_those_present_however_small():
    mask = np.ones((60, 60), np.uint8)  # class 1 everywhere
    mask[0, 59] = 2  # class 2: one pixel in a corner
    image = np.zeros((60, 60, 1), np.uint8)
    n = 400
    results = list(crops(ForegroundCrop(8, 8, foreground_share=1.0), image, mask, n))
    rare = sum(bool((r["mask"] == 2).any()) for r in results)
    assert rare / n == pytest.approx(0.5, abs=0.08)  # class 1 or class 2, one each


def test_image_and_mask_are_cut_at_the_same_place_and_ignored_values_are_never_drawn():
    height, width = 32, 48
    coords = (np.arange(height)[:, None] * 1000 + np.arange(width)[None, :]).astype(np.float32)
    image = np.stack([coords] * 3, axis=-1)
    mask = np.zeros((height, width), np.uint16)
    mask[3, 40] = 255  # ignore_index: not a class to look for
    hits = 0
    for r in crops(ForegroundCrop(6, 6, foreground_share=1.0, ignore_values=[255]), image, mask, 100):
        top_left = int(r["image"][0, 0, 0])
        y0, x0 = divmod(top_left, 1000)
        np.testing.assert_array_equal(r["image"][:, :, 0], coords[y0:y0 + 6, x0:x0 + 6])
        np.testing.assert_array_equal(r["mask"], mask[y0:y0 + 6, x0:x0 + 6])
        hits += bool((r["mask"] == 255).any())
    assert hits < 20  # chance only (about 1 in 11 crops), not the 100 a drawn class would give


def test_settings_that_cannot_crop_are_named():
    with pytest.raises(ValueError, match=r"ForegroundCrop: the crop 64x64 is larger than the image 32x48: choose a smaller crop"):
        A.Compose([ForegroundCrop(64, 64)])(image=np.zeros((32, 48, 3), np.uint8), mask=np.zeros((32, 48), np.uint8))
    with pytest.raises(ValueError, match=r"augmentation 'crop' \(ForegroundCrop\): .*foreground_share in \[0, 1\]"):
        build_augmentations({"crop": {"type": "ForegroundCrop", "height": 8, "width": 8, "foreground_share": 2}})
    with pytest.raises(ValueError, match=r"augmentation 'crop': albumentations has no transform 'ForegroundCrops' \(segkit adds ForegroundCrop\)"):
        build_augmentations({"crop": {"type": "ForegroundCrops", "height": 8, "width": 8}})


def test_a_dataset_trains_on_foreground_crops_from_its_augment_config(tmp_path):
    from tests.helpers import make_datamodule, model_sample, write_fixture

    write_fixture("oilseep", tmp_path / "o")
    augment = {"crop": {"type": "ForegroundCrop", "height": 16, "width": 16, "foreground_share": 1.0}}
    dm = make_datamodule("oilseep", tmp_path / "o", tmp_path, augment=augment)
    dm.setup("fit")
    for index in range(len(dm.train_dataset)):
        sample = model_sample(dm, dm.train_dataset, index)
        assert sample["image"].shape[-2:] == (16, 16) and (sample["mask"] > 0).any()


def test_the_pipeline_never_draws_the_padding_label():
    from segkit.data.transforms import build_pipeline

    pipeline = build_pipeline(None, {"crop": {"type": "ForegroundCrop", "height": 8, "width": 8}}, mask_fill=255)
    assert pipeline.transforms[0].ignore_values == [255]
    assert build_pipeline(None, {"crop": {"type": "ForegroundCrop", "height": 8, "width": 8}}).transforms[0].ignore_values == []


def test_inverse_frequency_draws_classes_in_proportion_to_one_over_their_share():
    mask = np.ones((60, 60), np.uint8)  # class 1 everywhere
    mask[0, 59] = 2  # class 2 in one corner, class 3 in another
    mask[59, 0] = 3
    image = np.zeros((60, 60, 1), np.uint8)
    frequencies = [0.9, 0.08, 0.015, 0.005]  # the dataset's pixel shares: 1/f = 12.5, 66.7, 200
    crop = ForegroundCrop(8, 8, foreground_share=1.0, class_draw="inverse_frequency", class_frequencies=frequencies)
    n = 600
    results = list(crops(crop, image, mask, n))
    share_2 = sum(bool((r["mask"] == 2).any()) for r in results) / n
    share_3 = sum(bool((r["mask"] == 3).any()) for r in results) / n
    total = 1 / 0.08 + 1 / 0.015 + 1 / 0.005
    assert share_2 == pytest.approx((1 / 0.015) / total, abs=0.06)  # 0.24 (uniform would give 1/3)
    assert share_3 == pytest.approx((1 / 0.005) / total, abs=0.06)  # 0.72
    with pytest.raises(ValueError, match="class_draw must be one of uniform, inverse_frequency, got 'rare'"):
        ForegroundCrop(8, 8, class_draw="rare")


def test_the_datamodule_supplies_the_frequencies_from_its_class_statistics(tmp_path):
    import json

    from tests.helpers import make_datamodule, write_fixture

    write_fixture("oilseep", tmp_path / "o")
    augment = {"crop": {"type": "ForegroundCrop", "height": 16, "width": 16, "class_draw": "inverse_frequency"}}
    dm = make_datamodule("oilseep", tmp_path / "o", tmp_path, augment=augment)
    with pytest.raises(FileNotFoundError, match=r"class_draw=inverse_frequency\) reads the class frequencies from .*segkit-prepare"):
        dm.setup("fit")
    dm.prepare_data()  # segkit-train's first step writes the statistics
    dm.setup("fit")
    crop = next(t for t in dm.train_dataset.transform.transforms if isinstance(t, ForegroundCrop))
    assert crop.class_frequencies == pytest.approx(json.loads(dm.class_stats_path.read_text())["frequencies"])
