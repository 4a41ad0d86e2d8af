"""Readers, transforms, samplers, splits and the synthetic generator."""

import hashlib

import cv2
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from datamodules.synthetic import SyntheticDataModule, write_synthetic_airbus
from segkit.data.io import image_size, read_image, read_mask
from segkit.data.normalize import Normalizer
from segkit.data.sampling import BackgroundRatioSampler
from segkit.data.splits import stratified_split
from segkit.data.transforms import build_augmentations, build_pipeline, to_sample
from tests.conftest import realdata
from tests.fixtures.reference import naive_rle_decode


# ------------------------------------------------------------------- readers
def test_colour_comes_back_rgb(tmp_path):
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0] = 200  # red
    cv2.imwrite(str(tmp_path / "red.png"), rgb[..., ::-1])
    image = read_image(tmp_path / "red.png")
    assert image.shape == (4, 6, 3) and image.dtype == np.uint8
    assert (image[..., 0] == 200).all() and (image[..., 1:] == 0).all()


def test_sixteen_bit_tiff_keeps_its_dtype(tmp_path):
    data = (np.arange(64, dtype=np.uint16) * 1000).reshape(8, 8)
    tifffile.imwrite(tmp_path / "img.tif", data)
    image = read_image(tmp_path / "img.tif")
    assert image.dtype == np.uint16 and image.shape == (8, 8, 1)
    np.testing.assert_array_equal(image[..., 0], data)
    sample = to_sample(image, np.zeros((8, 8), np.uint8))
    assert sample["image"].dtype == torch.uint16 and sample["image"].shape == (8, 8, 1)  # as decoded
    assert Normalizer(None)(sample["image"][None]).max().item() == pytest.approx(63000 / 65535)


def _palette_image(path, indices, palette):
    image = Image.fromarray(indices, mode="P")
    image.putpalette(palette + [0] * (768 - len(palette)))
    image.save(path)


@pytest.mark.parametrize("suffix", [".gif", ".png"])
def test_gray_palette_masks_are_read_by_what_they_show(tmp_path, suffix):
    """A Carvana GIF whose palette lists white first looks the same as one listing black
    first; reading indices would invert it. Gray palettes are read as their gray levels."""
    car = np.array([[0, 1, 1], [1, 0, 0]], np.uint8)
    _palette_image(tmp_path / f"usual{suffix}", car, [0, 0, 0, 255, 255, 255])
    _palette_image(tmp_path / f"reversed{suffix}", 1 - car, [255, 255, 255, 0, 0, 0])
    np.testing.assert_array_equal(read_mask(tmp_path / f"usual{suffix}"), car * 255)
    np.testing.assert_array_equal(read_mask(tmp_path / f"reversed{suffix}"), car * 255)


def test_colour_palette_masks_give_their_indices(tmp_path):
    """VOC-style label PNGs: the index is the class, the colour only a display choice."""
    labels = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    _palette_image(tmp_path / "voc.png", labels, [0, 0, 0, 128, 0, 0, 0, 128, 0])
    np.testing.assert_array_equal(read_mask(tmp_path / "voc.png"), labels)


def test_unreadable_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jpg: file not found"):
        read_image(tmp_path / "nope.jpg")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match="bad.png: cannot decode image"):
        read_image(tmp_path / "bad.png")
    (tmp_path / "bad.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(ValueError, match="bad.tif: cannot decode TIFF"):
        read_image(tmp_path / "bad.tif")
    rgb = np.zeros((3, 3, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "rgb.png"), rgb)
    with pytest.raises(ValueError, match="rgb.png: a mask must have one channel"):
        read_mask(tmp_path / "rgb.png")


def test_a_large_png_is_decoded_from_its_file_the_same_as_from_its_bytes(tmp_path, monkeypatch):
    """Above LARGE_FILE_BYTES a PNG is decoded by OpenCV from the file (its encoded bytes never
    held beside its pixels): the same pixels, colour order, channels, errors and limits."""
    import segkit.data.io

    rng = np.random.default_rng(3)
    images = {"rgb": rng.integers(0, 255, (9, 7, 3), np.uint8), "rgba": rng.integers(0, 255, (5, 6, 4), np.uint8),
              "gray": rng.integers(0, 255, (4, 3), np.uint8), "deep": rng.integers(0, 65535, (4, 4, 3), np.uint16)}
    for name, array in images.items():
        cv2.imwrite(str(tmp_path / f"{name}.png"), array)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG garbage")
    small = {name: read_image(tmp_path / f"{name}.png") for name in images}
    monkeypatch.setattr(segkit.data.io, "LARGE_FILE_BYTES", 0)
    calls = []
    real_imread = cv2.imread
    monkeypatch.setattr(segkit.data.io.cv2, "imread", lambda *a: calls.append(a[0]) or real_imread(*a))
    for name in images:
        large = read_image(tmp_path / f"{name}.png")
        assert large.dtype == small[name].dtype and np.array_equal(large, small[name]), name
    assert len(calls) == len(images)
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.png")[..., 0], images["rgb"][..., 2])  # RGB from BGR
    with pytest.raises(ValueError, match="bad.png: cannot decode image"):
        read_image(tmp_path / "bad.png")
    with pytest.raises(ValueError, match=r"rgb.png: the header says 7x9 = 63 pixels, above the limit of 10"):
        read_image(tmp_path / "rgb.png", max_pixels=10)
    with pytest.raises(FileNotFoundError, match="nope.png: file not found"):
        read_image(tmp_path / "nope.png")


def test_image_size_reads_the_header(tmp_path):
    cv2.imwrite(str(tmp_path / "a.jpg"), np.zeros((30, 50, 3), np.uint8))
    assert image_size(tmp_path / "a.jpg") == (30, 50)


def test_real_formats():
    airbus = realdata("airbus")
    image = read_image(airbus / "0a1b7d6ec.jpg")
    assert image.shape == (768, 768, 3) and image.dtype == np.uint8
    # RGB, not BGR: compare with Pillow's decoding
    reference = np.asarray(Image.open(airbus / "0a1b7d6ec.jpg").convert("RGB")).astype(int)
    assert np.abs(image.astype(int) - reference).mean() < 2


# ---------------------------------------------------------------- transforms
def test_geometric_augmentation_moves_the_mask_with_the_image():
    image = np.zeros((8, 8, 3), np.uint8)
    image[0, :3] = 255
    mask = (image[..., 0] > 0).astype(np.uint8)
    pipeline = build_pipeline(None, {"flip": {"type": "HorizontalFlip", "p": 1.0}, "off": None})
    out = pipeline(image=image, mask=mask)
    np.testing.assert_array_equal(out["mask"], mask[:, ::-1])
    np.testing.assert_array_equal(out["image"][..., 0] > 0, out["mask"] > 0)


def test_resize_keeps_mask_labels():
    mask = np.zeros((10, 10), np.uint8)
    mask[2:6, 2:6] = 7
    out = build_pipeline(4, None)(image=np.zeros((10, 10, 3), np.uint8), mask=mask)
    assert out["image"].shape == (4, 4, 3) and set(np.unique(out["mask"])) <= {0, 7}


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"x": {"p": 0.5}}, "augmentation 'x' has no 'type'"),
        ({"x": {"type": "Flipperty"}}, "albumentations has no transform 'Flipperty'"),
        ({"x": {"type": "HorizontalFlip", "wobble": 3}}, r"augmentation 'x' \(HorizontalFlip\)"),
    ],
)
def test_bad_augmentation_spec(spec, message):
    with pytest.raises(ValueError, match=message):
        build_augmentations(spec)


# ---------------------------------------------------------- sampling, splits
def test_sampler_length_and_ratio_bounds():
    sampler = BackgroundRatioSampler(positives=[0, 1], negatives=list(range(2, 12)), ratio=0.3, seed=1)
    assert len(sampler) == 5 == len(list(sampler))
    assert len(BackgroundRatioSampler([0], [1, 2], ratio=0.0)) == 1
    with pytest.raises(ValueError, match=r"background ratio must be in \[0, 1\]"):
        BackgroundRatioSampler([0], [1], ratio=1.5)


def test_stratified_split_keeps_shares():
    keys = [f"k{i:03d}" for i in range(100)]
    strata = [int(i < 30) for i in range(100)]
    train, val = stratified_split(keys, strata, 0.2, seed=0)
    assert sorted(train + val) == list(range(100))
    assert sum(strata[i] for i in val) == 6 and len(val) == 20
    assert stratified_split(keys, strata, 0.2, seed=0) == (train, val)
    assert stratified_split(keys, strata, 0.0, seed=0) == (list(range(100)), [])


# ----------------------------------------------------------------- synthetic
def _digest(root):
    sha = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            sha.update(path.name.encode() + path.read_bytes())
    return sha.hexdigest()


def test_synthetic_dataset_is_deterministic_and_in_airbus_format(tmp_path):
    a = write_synthetic_airbus(tmp_path / "a", num_images=12, size=64, seed=3)
    b = write_synthetic_airbus(tmp_path / "b", num_images=12, size=64, seed=3)
    c = write_synthetic_airbus(tmp_path / "c", num_images=12, size=64, seed=4)
    assert _digest(a) == _digest(b) != _digest(c)
    lines = (a / "train_ship_segmentations_v2.csv").read_text().splitlines()
    assert lines[0] == "ImageId,EncodedPixels"
    empty = [line for line in lines[1:] if line.endswith(",")]
    assert empty  # ship-free images have one empty row
    for line in lines[1:]:
        image_id, rle = line.split(",")
        image = read_image(a / "train_v2" / image_id)
        assert image.shape == (64, 64, 3)
        if rle:
            ship = naive_rle_decode(rle, (64, 64), "F")
            assert image[ship.astype(bool)].mean() > 140  # ships are bright


def test_synthetic_datamodule_reads_through_the_airbus_reader(tmp_path):
    dm = SyntheticDataModule(num_images=20, size=64, image_size=64, num_workers=0, batch_size=4)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.root.name.startswith("synthetic-data-")
    assert (dm.root / "train_ship_segmentations_v2.csv").is_file()
    batch = dm.prepare_batch(next(iter(dm.train_dataloader())))
    assert batch["image"].shape == (4, 3, 64, 64) and batch["mask"].max() <= 1
    assert dm.hparams["num_images"] == 20 and dm.hparams["image_size"] == 64


