"""Predictor: training's preprocessing reproduced, tiling and TTA exact, any image size."""

import numpy as np
import pytest
import torch

from segkit.data.normalize import Normalizer
from segkit.data.transforms import build_pipeline, to_sample
from segkit.inference import window_layout
from segkit.module import SegmentationModule
from segkit.predictor import Predictor, Preprocessing, autocast_dtype
from tests.helpers import albumentations_normalize, conv1x1_module


def prep(channels=3, dtype=None, image_size=None, pad_multiple=None, size_multiple=1, normalize=None):
    return Preprocessing(channels, dtype, image_size, pad_multiple, size_multiple, normalize)


NORMALIZATIONS = [
    None,
    {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "max_pixel_value": 255.0},
    {"mean": [0.2], "std": [0.5], "max_pixel_value": 65535.0},
    {"normalization": "image"},
    {"normalization": "image_per_channel"},
    {"normalization": "min_max"},
    {"normalization": "min_max_per_channel"},
]


@pytest.mark.parametrize("normalize", NORMALIZATIONS)
@pytest.mark.parametrize("dtype, channels", [(np.uint8, 3), (np.uint16, 1), (np.uint16, 3), (np.uint8, 1)])
def test_affine_normalisation_equals_albumentations(normalize, dtype, channels):
    if normalize is not None and "mean" in normalize and len(normalize["mean"]) != channels:
        pytest.skip("statistics for another channel count")
    rng = np.random.default_rng(1)
    top = np.iinfo(dtype).max
    image = rng.integers(top // 10, top // 2, size=(37, 45, channels)).astype(dtype)
    image[..., -1] = np.clip(image[..., -1].astype(np.int64) * 2, 0, top).astype(dtype)  # channels differ
    reference = albumentations_normalize(image, normalize)
    offset, scale, clip = prep(channels, normalize=normalize).affine(image)
    ours = (image.astype(np.float32) - offset) * scale
    if clip is not None:
        ours = np.clip(ours, -clip, clip)
    np.testing.assert_allclose(ours, reference, rtol=2e-4, atol=2e-4)


def test_per_image_statistics_include_trainings_padding():
    # training pads (zeros) before Normalize: min-max then starts at 0, not at the image's minimum
    image = np.full((30, 30, 1), 1000, np.uint16)
    image[0, 0] = 3000
    normalize = {"normalization": "min_max"}
    padded = albumentations_normalize(build_pipeline(None, None, pad_multiple=32)(image=image)["image"], normalize)
    offset, scale, _ = prep(1, pad_multiple=32, normalize=normalize).affine(image)
    np.testing.assert_allclose(((image.astype(np.float32) - offset) * scale), padded[:30, :30], rtol=1e-5, atol=1e-6)


def small_unet() -> SegmentationModule:
    torch.manual_seed(0)
    return SegmentationModule(
        model={"name": "mobilenet_unet", "encoder_depth": 3, "decoder_channels": [32, 16, 8]},
        loss={"name": "dice"}, optimizer={"_target_": "torch.optim.SGD", "lr": 0.1}, num_classes=3,
    ).eval()


def test_prediction_equals_the_model_on_trainings_pipeline():
    module = small_unet()
    normalize = {"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3], "max_pixel_value": 255.0}
    image = np.random.default_rng(2).integers(0, 256, size=(48, 56, 3), dtype=np.uint8)
    predictor = Predictor(module, prep(image_size=None, size_multiple=8, normalize=normalize), precision="32-true")
    got = predictor.predict(image, keep_probabilities=True)
    sample = to_sample(build_pipeline(None, None, pad_multiple=8)(image=image, mask=np.zeros((48, 56), np.uint8))["image"],
                       np.zeros((48, 56), np.uint8))
    with torch.no_grad():  # training's path: the worker's sample, normalised on the device
        expected = torch.softmax(module(Normalizer(normalize)(sample["image"][None])), dim=1)[0].numpy()
    np.testing.assert_allclose(got.probabilities, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(got.labels, expected.argmax(0))
    assert got.labels.dtype == np.uint8 and got.labels.shape == (48, 56)


def test_padding_to_the_model_multiple_is_cropped_away():
    module = small_unet()
    image = np.random.default_rng(3).integers(0, 256, size=(50, 61, 3), dtype=np.uint8)
    predictor = Predictor(module, prep(size_multiple=8), precision="32-true", tile=64, overlap=16)
    out = predictor.predict(image, keep_probabilities=True)
    assert out.labels.shape == (50, 61) and out.probabilities.shape == (3, 50, 61)
    np.testing.assert_allclose(out.probabilities.sum(0), 1.0, rtol=1e-5)
    assert predictor.windows_run == 1  # one 56x64 window: both sides fit in a tile


@pytest.mark.parametrize("blend", ["gaussian", "linear"])
def test_tiled_prediction_of_a_large_image_equals_whole_image(blend):
    module = conv1x1_module(classes=4)
    image = np.random.default_rng(4).integers(0, 256, size=(700, 523, 3), dtype=np.uint8)
    whole = Predictor(module, prep(), precision="32-true", tile=1024).predict(image, keep_probabilities=True)
    tiled_predictor = Predictor(module, prep(), precision="32-true", tile=128, overlap=32, batch_size=3, blend=blend)
    tiled = tiled_predictor.predict(image, keep_probabilities=True)
    np.testing.assert_allclose(tiled.probabilities, whole.probabilities, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(tiled.labels, whole.labels)
    assert tiled_predictor.windows_run == window_layout(700, 523, 128, 32).n_windows


def test_a_large_image_is_predicted_band_by_band_with_bounded_windows():
    module = conv1x1_module(classes=2)
    calls = []
    forward = module.net.forward
    module.net.forward = lambda x: (calls.append(tuple(x.shape)), forward(x))[1]
    image = np.zeros((2000, 1500, 3), np.uint8)
    predictor = Predictor(module, prep(), precision="32-true", tile=256, overlap=64, batch_size=4)
    bands = [(y0, y1, tuple(band.shape)) for y0, y1, band in predictor.iter_rows(image)]
    layout = window_layout(2000, 1500, 256, 64)
    assert sum(shape[0] for shape in calls) == layout.n_windows  # every window once
    assert max(shape[0] for shape in calls) <= 4 and {shape[2:] for shape in calls} == {(256, 256)}
    assert [b[0] for b in bands] == layout.ys and bands[-1][1] == 2000  # the bands tile the image
    assert max(b[1] - b[0] for b in bands) <= 256  # never more than one window's rows held
    assert all(shape == (2, y1 - y0, 1500) for y0, y1, shape in bands)


def test_tta_with_an_equivariant_model_changes_nothing():
    module = conv1x1_module(classes=3)
    image = np.random.default_rng(5).integers(0, 256, size=(40, 72, 3), dtype=np.uint8)
    plain = Predictor(module, prep(), precision="32-true").predict(image, keep_probabilities=True)
    tta = Predictor(module, prep(), precision="32-true", tta=["hflip", "vflip", "rot90", "rot180", "rot270"])
    out = tta.predict(image, keep_probabilities=True)
    np.testing.assert_allclose(out.probabilities, plain.probabilities, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="unknown TTA transform"):
        Predictor(module, prep(), tta=["mirror"])


def test_tta_averages_the_mapped_back_logits():
    # a model that is not flip-equivariant: averaging with hflip must symmetrise its output
    module = small_unet()
    image = np.random.default_rng(6).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    plain = Predictor(module, prep(size_multiple=8), precision="32-true")

    def logits(img):
        return torch.cat([band.clone() for _, _, band in plain.iter_rows(img)], dim=1)

    expected = torch.softmax((logits(image) + logits(image[:, ::-1].copy()).flip(-1)) / 2, dim=0).numpy()
    tta = Predictor(module, prep(size_multiple=8), precision="32-true", tta=["hflip"]).predict(image, keep_probabilities=True)
    np.testing.assert_allclose(tta.probabilities, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(tta.labels, expected.argmax(0))


def test_a_model_trained_on_resized_images_predicts_at_the_images_resolution():
    module = conv1x1_module(classes=1)
    image = np.random.default_rng(7).integers(0, 256, size=(96, 128, 3), dtype=np.uint8)
    predictor = Predictor(module, prep(image_size=(48, 64)), precision="32-true")
    out = predictor.predict(image, keep_probabilities=True)
    assert out.labels.shape == (96, 128) and out.probabilities.shape == (1, 96, 128)
    native = Predictor(module, prep(), precision="32-true")
    small = torch.cat([b.clone() for _, _, b in native.iter_rows(prep(image_size=(48, 64)).resize(image))], dim=1)
    up = torch.nn.functional.interpolate(small[None], size=(96, 128), mode="bilinear")[0]  # logits, then sigmoid
    np.testing.assert_allclose(out.probabilities, torch.sigmoid(up).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out.labels, (out.probabilities[0] > 0.5).astype(np.uint8))


def test_binary_threshold_comes_from_the_checkpoint_unless_given():
    module = conv1x1_module(classes=1, threshold=0.9)
    assert Predictor(module, prep()).threshold == 0.9
    assert Predictor(module, prep(), threshold=0.3).threshold == 0.3


def test_bf16_autocast_on_cpu_stays_close_to_fp32():
    module = small_unet()
    image = np.random.default_rng(8).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    fp32 = Predictor(module, prep(size_multiple=8), precision="32-true").predict(image, keep_probabilities=True)
    bf16 = Predictor(module, prep(size_multiple=8), precision="bf16-mixed").predict(image, keep_probabilities=True)
    assert bf16.probabilities.dtype == np.float32
    assert np.abs(bf16.probabilities - fp32.probabilities).max() < 0.05
    assert autocast_dtype("16-mixed", torch.device("cuda")) == torch.float16
    assert autocast_dtype("16-mixed", torch.device("cpu")) == torch.bfloat16  # what Lightning does on CPU
    assert autocast_dtype("32-true", torch.device("cpu")) is None


@pytest.mark.parametrize("image, message", [
    (np.zeros((8, 8, 4), np.uint8), "transparency"),  # alpha 0: the transparency would be lost
    (np.zeros((8, 8, 2), np.uint8), "transparency"),
    (np.zeros((8, 8, 5), np.uint8), "image has 5 channel\\(s\\), expected 3"),
    (np.zeros((8, 8, 3), np.uint16), "uint16, the model was trained on uint8"),
])
def test_images_the_model_cannot_take_are_named(image, message):
    with pytest.raises(ValueError, match=message) as err:
        prep(3, dtype="uint8").check(image, "scene_7.png")
    assert "scene_7.png" in str(err.value)


def test_images_are_conformed_to_the_models_channels_as_training_conforms_them():
    rng = np.random.default_rng(9)
    gray = rng.integers(0, 256, size=(6, 7, 1), dtype=np.uint8)
    np.testing.assert_array_equal(prep(3).check(gray, "g.png"), np.repeat(gray, 3, axis=2))
    np.testing.assert_array_equal(prep(3).check(gray[:, :, 0], "g.png"), np.repeat(gray, 3, axis=2))  # (H, W) too
    rgb = rng.integers(0, 256, size=(6, 7, 3), dtype=np.uint8)
    opaque = np.concatenate([rgb, np.full((6, 7, 1), 255, np.uint8)], axis=2)
    np.testing.assert_array_equal(prep(3).check(opaque, "a.png"), rgb)
    np.testing.assert_array_equal(prep(1).check(np.repeat(gray, 3, axis=2), "g.jpg"), gray)  # gray stored as RGB
    assert prep(3).check(rgb, "c.png") is rgb  # nothing to do: no copy


def test_a_colour_image_for_a_one_channel_model_is_a_clear_error():
    colour = np.random.default_rng(10).integers(0, 256, size=(6, 7, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"photo.jpg: image is in colour .* the model was trained on 1-channel images: convert the file"):
        prep(1).check(colour, "photo.jpg")


def test_bad_tile_settings_are_refused():
    module = conv1x1_module()
    with pytest.raises(ValueError, match="overlap must be in"):
        Predictor(module, prep(), tile=64, overlap=64)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        Predictor(module, prep(), batch_size=0)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_window_staging_reuses_two_buffers_and_never_hands_out_one(dtype):
    """On CUDA windows are cut into two reused pinned buffers (non-blocking uploads); the same
    logic on a CPU: every batch arrives intact (uint8 as uint8, 16-bit as float32), a batch
    handed out stays intact while later ones are cut, and no new buffer is made per batch."""
    from segkit.predictor import WindowStaging

    rng = np.random.default_rng(3)
    image = rng.integers(0, np.iinfo(dtype).max, size=(40, 40, 3), dtype=dtype)
    staging = WindowStaging("cpu", pinned=True)
    batches = [[image[y : y + 16, x : x + 16] for x in (0, 8, 16)] for y in (0, 12, 24, 4)]
    handed = [staging.upload(batch) for batch in batches]
    for batch, tensor in zip(batches, handed):
        assert tensor.dtype == (torch.uint8 if dtype == np.uint8 else torch.float32)
        np.testing.assert_array_equal(tensor.numpy(), np.stack(batch).astype(tensor.numpy().dtype))
    (pair,) = staging._buffers.values()
    assert len(pair) == 2 and all(tensor.data_ptr() not in (b.data_ptr() for b, _ in pair) for tensor in handed)
    plain = WindowStaging("cpu").upload(batches[0])
    torch.testing.assert_close(plain, handed[0])
