"""Normalisation on the device: equal to albumentations.Normalize, per sample, in every mode."""

import numpy as np
import pytest
import torch

from segkit.data.normalize import Normalizer
from segkit.module import SegmentationModule
from tests.helpers import albumentations_normalize

MODES = [
    None,
    {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "max_pixel_value": 255.0},
    {"mean": [0.2], "std": [0.5], "max_pixel_value": 65535.0},
    {"mean": 0.3, "std": 0.2},  # albumentations' scalar form, default max_pixel_value 255
    {"normalization": "image"},
    {"normalization": "image_per_channel"},
    {"normalization": "min_max"},
    {"normalization": "min_max_per_channel"},
]


def images(dtype, channels, n=2):
    """``n`` images with different statistics per image and per channel."""
    rng = np.random.default_rng(7)
    top = np.iinfo(dtype).max
    out = []
    for i in range(n):
        image = rng.integers(top // (10 + 5 * i), top // (2 + i), size=(19, 23, channels)).astype(dtype)
        image[..., -1] = np.clip(image[..., -1].astype(np.int64) * 2, 0, top).astype(dtype)
        out.append(image)
    return out


@pytest.mark.parametrize("normalize", MODES)
@pytest.mark.parametrize("dtype, channels", [(np.uint8, 3), (np.uint8, 1), (np.uint16, 1), (np.uint16, 3)])
def test_batch_normalisation_equals_albumentations_per_image(normalize, dtype, channels):
    if normalize is not None and isinstance(normalize.get("mean"), list) and len(normalize["mean"]) != channels:
        pytest.skip("statistics for another channel count")
    batch = images(dtype, channels)
    out = Normalizer(normalize)(torch.from_numpy(np.stack(batch)))
    assert out.shape == (2, channels, 19, 23) and out.dtype == torch.float32
    for got, image in zip(out, batch):
        expected = albumentations_normalize(image, normalize).transpose(2, 0, 1)
        np.testing.assert_allclose(got.numpy(), expected, rtol=2e-4, atol=2e-4)


def test_output_is_channels_last_and_the_input_untouched():
    batch = torch.from_numpy(np.stack(images(np.uint8, 3)))
    before = batch.clone()
    out = Normalizer({"normalization": "image"})(batch)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(batch, before)
    floats = batch.float()
    Normalizer(None)(floats)
    assert torch.equal(floats, before.float())  # float input is copied, not normalised in place


def test_constant_images_normalise_to_zero_not_nan():
    flat = torch.full((2, 8, 8, 1), 1234, dtype=torch.uint16)
    for mode in ("min_max", "min_max_per_channel", "image"):
        out = Normalizer({"normalization": mode})(flat)
        assert torch.isfinite(out).all() and (out == 0).all()


@pytest.mark.parametrize(
    "normalize, message",
    [
        ({"mean": [0.5], "std": [0.5], "max_pixels": 255}, "unknown key.*max_pixels"),
        ({"normalization": "zscore"}, "'zscore' is not one of standard, image"),
        ({"mean": "dataset", "std": [0.2]}, "normalize.mean: 'dataset' must be resolved"),
    ],
)
def test_bad_settings_are_named(normalize, message):
    with pytest.raises(ValueError, match=message):
        Normalizer(normalize)


def test_statistics_for_another_channel_count_are_refused():
    with pytest.raises(ValueError, match="mean/std have 3/3 values but the images have 1 channel"):
        Normalizer({"mean": [0.1, 0.2, 0.3], "std": [0.2, 0.2, 0.2]})(torch.zeros(1, 4, 4, 1, dtype=torch.uint8))


def test_fixed_statistics_reach_the_device_once_not_every_batch(monkeypatch):
    """The float64 mean/std are converted and copied to the batch's device on the first batch
    only (on a GPU each copy was a blocking host->device transfer); later batches reuse them."""
    normalizer = Normalizer({"mean": [0.2, 0.3, 0.4], "std": [0.5, 0.6, 0.7], "max_pixel_value": 255.0})
    batch = torch.from_numpy(np.stack(images(np.uint8, 3)))
    first = normalizer(batch)
    copies = []
    original = torch.Tensor.to
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: copies.append((a, k)) or original(self, *a, **k))
    for _ in range(3):
        assert torch.equal(normalizer(batch), first)
    assert [c for c in copies if c != ((torch.float32,), {"copy": True})] == []  # only the images' own conversion
    assert list(normalizer._on_device) == [("cpu", 3, 255.0)]


def test_the_module_refuses_batches_that_were_not_normalised():
    module = SegmentationModule(model={"name": "mobilenet_unet", "encoder_depth": 3, "decoder_channels": [16, 8, 4]},
                                loss={"name": "dice"}, optimizer={"_target_": "torch.optim.SGD", "lr": 0.1})
    raw = {"image": torch.zeros(2, 32, 32, 3, dtype=torch.uint8), "mask": torch.zeros(2, 32, 32, dtype=torch.uint8)}
    with pytest.raises(TypeError, match=r"uint8 images of shape \(2, 32, 32, 3\), not normalised.*prepare_batch"):
        module.training_step(raw, 0)


@pytest.mark.parametrize("dtype, channels", [(np.uint8, 3), (np.uint16, 3), (np.uint16, 1)])
def test_max_pixel_value_null_is_the_dtype_range(dtype, channels):
    """``max_pixel_value: null`` (what pretrained-encoder statistics get where the data normalised
    per image): the range of the batch's dtype, i.e. albumentations with 255 or 65535."""
    mean, std = [0.1, 0.5, 0.3][:channels], [0.2, 0.25, 0.4][:channels]
    normalizer = Normalizer({"mean": mean, "std": std, "max_pixel_value": None})
    batch = images(dtype, channels)
    out = normalizer(torch.from_numpy(np.stack(batch))).permute(0, 2, 3, 1).numpy()
    top = float(np.iinfo(dtype).max)
    for got, image in zip(out, batch):
        expected = albumentations_normalize(image, {"mean": mean, "std": std, "max_pixel_value": top})
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
