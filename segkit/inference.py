"""Sliding-window prediction with blended overlaps, and test-time augmentation.

Large images (a 4000x4000 DOTA scene) are cut into overlapping ``tile`` windows (the grid
of :mod:`segkit.data.tiling`: stride ``tile - overlap``, the last window flush with the
border); windows go through the model in batches of ``batch_size``, and their outputs are
accumulated with a weight that falls towards the window's edges (Gaussian or linear), then
divided by the summed weights. Memory is bounded by one batch of windows plus two
accumulators of the image's size, whatever the number of windows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from segkit.data.tiling import patch_grid

__all__ = ["TTA_TRANSFORMS", "blend_weight", "predict_with_tta", "sliding_window_logits"]

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
        model: ``(B, C, tile, tile) → (B, K, tile, tile)``.
        tile: window side; rounded up to ``size_multiple``.
        overlap: pixels shared by neighbouring windows (``< tile``).
        batch_size: windows per model call (bounds memory).
        blend: ``gaussian``, ``linear`` or ``constant`` weighting of overlaps.
        size_multiple: the model's size multiple; images smaller than a window are padded.
        pad_value: value of the padding of small images (in normalised units).
    """
    channels, height, width = image.shape
    tile = -(-tile // size_multiple) * size_multiple
    pad_h, pad_w = max(tile - height, 0), max(tile - width, 0)
    if pad_h or pad_w:
        image = F.pad(image, (0, pad_w, 0, pad_h), value=pad_value)
    full_h, full_w = image.shape[1:]
    weight = blend_weight(tile, tile, blend).to(image.device)
    grid = patch_grid(full_h, full_w, tile, overlap)
    summed: torch.Tensor | None = None
    weights = torch.zeros(full_h, full_w, device=image.device)
    for start in range(0, len(grid), batch_size):
        corners = grid[start : start + batch_size]
        windows = torch.stack([image[:, y : y + tile, x : x + tile] for y, x in corners])
        outputs = model(windows).float()
        if summed is None:
            summed = torch.zeros(outputs.shape[1], full_h, full_w, device=image.device)
        for (y, x), output in zip(corners, outputs):
            summed[:, y : y + tile, x : x + tile] += output * weight
            weights[y : y + tile, x : x + tile] += weight
    assert summed is not None
    return (summed / weights)[:, :height, :width]


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
    mapped back to the original orientation. ``images``: ``(B, C, H, W)``; 90° rotations
    need square inputs."""
    unknown = [t for t in transforms if t not in TTA_TRANSFORMS]
    if unknown:
        raise ValueError(f"unknown TTA transform(s) {unknown}; available: {', '.join(TTA_TRANSFORMS)}")
    total = model(images).float()
    for name in transforms:
        forward, inverse = TTA_TRANSFORMS[name]
        total = total + inverse(model(forward(images)).float())
    return total / (1 + len(transforms))
