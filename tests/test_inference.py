import pytest
import torch

from segkit.data.tiling import patch_grid
from segkit.inference import blend_weight, predict_with_tta, sliding_window_logits


class CountingModel(torch.nn.Module):
    """A 1x1 convolution (translation- and flip-equivariant) that records its calls."""

    def __init__(self, channels=3, classes=4):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(channels, classes, kernel_size=1)
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        return self.conv(x)


@pytest.mark.parametrize("blend", ["gaussian", "linear", "constant"])
@pytest.mark.parametrize("height, width", [(200, 333), (64, 64), (40, 90), (129, 65)])
@pytest.mark.parametrize("overlap", [16, 50])  # stride above and below half a window
def test_tiled_prediction_equals_whole_image_prediction(blend, height, width, overlap):
    model = CountingModel()
    image = torch.randn(3, height, width)
    whole = model(image[None])[0]
    tiled = sliding_window_logits(image, model, tile=64, overlap=overlap, batch_size=3, blend=blend)
    assert tiled.shape == whole.shape
    torch.testing.assert_close(tiled, whole, rtol=1e-5, atol=1e-5)


def test_memory_is_bounded_by_the_tile_batch():
    model = CountingModel()
    image = torch.randn(3, 1000, 1000)
    sliding_window_logits(image, model, tile=128, overlap=32, batch_size=5)
    n_tiles = len(patch_grid(1000, 1000, 128, 32))
    assert sum(shape[0] for shape in model.calls) == n_tiles  # every window once
    assert max(shape[0] for shape in model.calls) <= 5
    assert {shape[2:] for shape in model.calls} == {(128, 128)}  # never the whole image


def test_small_images_are_padded_to_one_window_of_the_model_multiple():
    model = CountingModel()
    image = torch.randn(3, 50, 61)
    out = sliding_window_logits(image, model, tile=60, overlap=8, size_multiple=32)
    assert out.shape == (4, 50, 61)
    assert model.calls == [(1, 3, 64, 64)]  # 60 rounded up to a multiple of 32


def test_blend_weights():
    gaussian = blend_weight(9, 9)
    assert gaussian[4, 4] == 1.0 and gaussian.min() >= 1e-3 and gaussian[0, 0] < gaussian[2, 2] < gaussian[4, 4]
    linear = blend_weight(5, 5, "linear")
    assert linear[2, 2] == 1.0 and torch.allclose(linear[2], torch.tensor([1 / 3, 2 / 3, 1, 2 / 3, 1 / 3]))
    with pytest.raises(ValueError, match="blend mode must be"):
        blend_weight(4, 4, "cosine")


def test_tta_with_an_equivariant_model_equals_no_tta():
    model = CountingModel()
    images = torch.randn(2, 3, 32, 32)
    plain = predict_with_tta(model, images)
    tta = predict_with_tta(model, images, ["hflip", "vflip", "rot90", "rot180", "rot270"])
    torch.testing.assert_close(tta, plain, rtol=1e-5, atol=1e-6)
    assert len(model.calls) == 1 + 6


def test_tta_maps_outputs_back():
    # a model that is not flip-equivariant: it marks the left column. Averaging the
    # identity and hflip must put half the mark on each side, in original orientation.
    def left_marker(x):
        out = torch.zeros(x.shape[0], 1, *x.shape[2:])
        out[..., 0] = 1.0
        return out

    images = torch.zeros(1, 3, 4, 4)
    out = predict_with_tta(left_marker, images, ["hflip"])
    assert torch.allclose(out[0, 0, :, 0], torch.full((4,), 0.5)) and torch.allclose(out[0, 0, :, -1], torch.full((4,), 0.5))
    with pytest.raises(ValueError, match="unknown TTA transform"):
        predict_with_tta(left_marker, images, ["shear"])


@pytest.mark.parametrize("rows", [1, 3, 5, 7, 10])
def test_rows_shift_up_in_place(rows):
    from segkit.inference import _shift_rows_up

    t = torch.arange(2 * 10 * 4, dtype=torch.float32).reshape(2, 10, 4)
    expected = torch.zeros_like(t)
    expected[:, : 10 - rows] = t[:, rows:]
    pointer = t.data_ptr()
    _shift_rows_up(t, rows)
    assert torch.equal(t, expected) and t.data_ptr() == pointer
