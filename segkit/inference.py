"""Sliding-window prediction with blended overlaps, and test-time augmentation.

Large images (a 4000x4000 DOTA scene) are cut into overlapping ``tile`` windows (the grid
of :mod:`segkit.data.tiling`: stride ``tile - overlap``, the last window flush with the
border); windows go through the model in batches of ``batch_size``, and their outputs are
accumulated with a weight that falls towards the window's edges (Gaussian or linear), then
divided by the summed weights. Rows are handed out as soon as no later window touches
them, so memory holds one batch of windows and one band of ``tile`` rows, whatever the
image height. Whole-image tensors are built only by the :func:`sliding_window_logits`
convenience wrapper.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from segkit.data.tiling import axis_starts

__all__ = [
    "TTA_TRANSFORMS", "WindowLayout", "blend_weight", "iter_blended_rows", "predict_with_tta",
    "sliding_window_logits", "window_layout",
]

Model = Callable[[torch.Tensor], torch.Tensor]
_MIN_WEIGHT = 1e-3  # edge pixels keep a little weight, so every pixel is covered


def blend_weight(height: int, width: int, mode: str = "gaussian", sigma_scale: float = 0.125) -> torch.Tensor:
    """``(height, width)`` float32 weight, 1 at the centre, falling towards the edges.

    ``gaussian``: ``exp(-d² / 2σ²)`` per axis with ``σ = sigma_scale · side``;
    ``linear``: a tent, 1 at the centre to ~0 at the border; ``constant``: all ones
    (plain averaging). Values are clamped to at least 1e-3.
    """

    def axis(n: int) -> torch.Tensor:
        centre = (n - 1) / 2
        d = torch.arange(n, dtype=torch.float64) - centre
        if mode == "gaussian":
            return torch.exp(-(d**2) / (2 * (sigma_scale * n) ** 2))
        if mode == "linear":
            return 1 - d.abs() / (centre + 1)
        if mode == "constant":
            return torch.ones(n, dtype=torch.float64)
        raise ValueError(f"blend mode must be 'gaussian', 'linear' or 'constant', got {mode!r}")

    weight = axis(height)[:, None] * axis(width)[None, :]
    return weight.clamp_min(_MIN_WEIGHT).float()


@dataclass(frozen=True)
class WindowLayout:
    """Where the windows of a ``height x width`` image go.

    Per axis: a side that fits in one window is padded up to the model's multiple and
    covered by a single window of that size; a longer side gets ``tile``-sized windows
    every ``tile - overlap`` pixels, the last one flush with the border (no padding).
    """

    height: int
    width: int
    window_h: int
    window_w: int
    ys: list[int]
    xs: list[int]

    @property
    def padded_h(self) -> int:
        return self.ys[-1] + self.window_h

    @property
    def padded_w(self) -> int:
        return self.xs[-1] + self.window_w

    @property
    def n_windows(self) -> int:
        return len(self.ys) * len(self.xs)


def window_layout(height: int, width: int, tile: int, overlap: int, size_multiple: int = 1) -> WindowLayout:
    """The :class:`WindowLayout` of an image; ``tile`` is rounded up to ``size_multiple``."""
    tile = -(-tile // size_multiple) * size_multiple
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile {tile}), got {overlap}")

    def axis(size: int) -> tuple[int, list[int]]:
        if size <= tile:
            return -(-size // size_multiple) * size_multiple, [0]
        return tile, axis_starts(size, tile, overlap)

    window_h, ys = axis(height)
    window_w, xs = axis(width)
    return WindowLayout(height, width, window_h, window_w, ys, xs)


WindowFn = Callable[[list[tuple[int, int]], int, int], torch.Tensor]


def iter_blended_rows(
    layout: WindowLayout,
    predict_windows: WindowFn,
    batch_size: int = 4,
    blend: str = "gaussian",
    device: torch.device | str = "cpu",
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Blend window outputs and yield finished rows of the image, top to bottom.

    ``predict_windows(corners, window_h, window_w)`` returns the ``(B, K, window_h,
    window_w)`` outputs of the windows whose top-left corners are given (at most
    ``batch_size`` of them). Yields ``(y0, y1, band)`` with ``band`` the blended ``(K, y1 -
    y0, width)`` outputs of rows ``y0:y1``; the bands tile ``0:height``. Rows are final as
    soon as no later window covers them, so memory holds one band of ``window_h`` rows
    (``K x window_h x width`` floats) and one batch of windows, whatever the image height.

    ``band`` is a view into the accumulator, valid until the generator resumes: use it or
    copy it first. (One accumulator, updated in place: at 16 classes and 4000 px wide a
    band is 260 MB, and every fresh buffer of that size costs page faults.)
    """
    wh, ww = layout.window_h, layout.window_w
    weight = blend_weight(wh, ww, blend).to(device)
    summed: torch.Tensor | None = None
    weights = torch.zeros(wh, layout.padded_w, device=device)
    for row, y in enumerate(layout.ys):
        for start in range(0, len(layout.xs), batch_size):
            xs = layout.xs[start : start + batch_size]
            outputs = predict_windows([(y, x) for x in xs], wh, ww)  # any float dtype: added in float32
            if summed is None:
                summed = torch.zeros(outputs.shape[1], wh, layout.padded_w, device=device)
            for x, output in zip(xs, outputs):
                summed[:, :, x : x + ww].addcmul_(output, weight)
                weights[:, x : x + ww] += weight
        assert summed is not None
        last = row == len(layout.ys) - 1
        done = layout.height - y if last else layout.ys[row + 1] - y
        band = summed[:, :done, : layout.width]
        band.div_(weights[:done, : layout.width])
        yield y, y + done, band
        if not last:  # move the rows the next windows still add to up to the top
            _shift_rows_up(summed, done)
            _shift_rows_up(weights, done)


def _shift_rows_up(t: torch.Tensor, rows: int) -> None:
    """In place: rows ``rows:`` of ``t`` (rows on dim -2) move to the top, the rest become 0.
    Copied in chunks of ``rows`` so source and destination never overlap, with no second buffer."""
    n = t.shape[-2]
    for start in range(0, n - rows, rows):
        stop = min(start + rows, n - rows)
        t[..., start:stop, :].copy_(t[..., start + rows : stop + rows, :])
    t[..., max(n - rows, 0) :, :].zero_()


@torch.no_grad()
def sliding_window_logits(
    image: torch.Tensor,
    model: Model,
    tile: int,
    overlap: int,
    batch_size: int = 4,
    blend: str = "gaussian",
    size_multiple: int = 1,
    pad_value: float = 0.0,
) -> torch.Tensor:
    """Model outputs for a whole ``(C, H, W)`` image from overlapping windows: ``(K, H, W)``.

    Args:
        image: one image, already normalised, on the model's device.
        model: ``(B, C, h, w) → (B, K, h, w)``.
        tile: window side; rounded up to ``size_multiple``.
        overlap: pixels shared by neighbouring windows (``< tile``).
        batch_size: windows per model call (bounds memory).
        blend: ``gaussian``, ``linear`` or ``constant`` weighting of overlaps.
        size_multiple: the model's size multiple; sides shorter than a window are padded to it.
        pad_value: value of that padding (in normalised units).
    """
    _, height, width = image.shape
    layout = window_layout(height, width, tile, overlap, size_multiple)
    image = F.pad(image, (0, layout.padded_w - width, 0, layout.padded_h - height), value=pad_value)

    def windows(corners: list[tuple[int, int]], wh: int, ww: int) -> torch.Tensor:
        return model(torch.stack([image[:, y : y + wh, x : x + ww] for y, x in corners]))

    bands = [band.clone() for _, _, band in iter_blended_rows(layout, windows, batch_size, blend, image.device)]
    return torch.cat(bands, dim=1)


def _rot90(k: int) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
    return (lambda t: torch.rot90(t, k, dims=(-2, -1))), (lambda t: torch.rot90(t, -k, dims=(-2, -1)))


TTA_TRANSFORMS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]] = {
    "hflip": ((lambda t: t.flip(-1)), (lambda t: t.flip(-1))),
    "vflip": ((lambda t: t.flip(-2)), (lambda t: t.flip(-2))),
    "rot90": _rot90(1),
    "rot180": _rot90(2),
    "rot270": _rot90(3),
}


def predict_with_tta(model: Model, images: torch.Tensor, transforms: Sequence[str] = ()) -> torch.Tensor:
    """Mean of the model's outputs over the identity and each named transform, each output
    mapped back to the original orientation. ``images``: ``(B, C, H, W)``; a 90° rotation
    of a non-square batch gives the model a ``W x H`` input (both sides must then be
    multiples of the model's size multiple, as they are after :func:`window_layout`)."""
    unknown = [t for t in transforms if t not in TTA_TRANSFORMS]
    if unknown:
        raise ValueError(f"unknown TTA transform(s) {unknown}; available: {', '.join(TTA_TRANSFORMS)}")
    total = model(images)
    if not transforms:
        return total  # as the model returned it (no float32 copy of a bf16 batch)
    total = total.float()
    for name in transforms:
        forward, inverse = TTA_TRANSFORMS[name]
        total += inverse(model(forward(images)))
    return total.div_(1 + len(transforms))
