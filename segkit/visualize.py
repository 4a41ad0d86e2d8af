"""Pictures of predictions: colour overlays, error panels, confusion heatmaps.

Images of any dtype and channel count are shown as 8-bit RGB: 8-bit as they are, 16-bit
and float stretched between their 1st and 99th percentiles, one channel as grey.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import cv2
import numpy as np

__all__ = ["ERROR_COLOURS", "confusion_heatmap", "display_rgb", "error_map", "error_panel", "overlay", "palette"]

# tab10-like, high contrast on aerial and grey images; class 0 (background) is never drawn
_BASE = np.array(
    [[0, 0, 0], [255, 210, 0], [0, 220, 255], [255, 56, 56], [120, 255, 80], [200, 80, 255],
     [255, 128, 0], [0, 255, 200], [255, 80, 180], [160, 160, 255], [180, 120, 60], [0, 140, 255],
     [255, 255, 120], [90, 180, 90], [255, 150, 150], [150, 255, 255]],
    dtype=np.uint8,
)
# error map: correct foreground, false positive, false negative, wrong foreground class
ERROR_COLOURS = {"correct": (40, 200, 40), "false positive": (255, 40, 40), "missed": (40, 120, 255), "wrong class": (255, 0, 255)}


def palette(n: int) -> np.ndarray:
    """``(n, 3)`` uint8 RGB colours, one per class (class 0 black)."""
    if n <= len(_BASE):
        return _BASE[:n].copy()
    rng = np.random.default_rng(0)
    return np.concatenate([_BASE, rng.integers(40, 256, size=(n - len(_BASE), 3), dtype=np.uint8)])


def display_rgb(image: np.ndarray) -> np.ndarray:
    """``(H, W, C)`` or ``(H, W)`` image of any dtype → ``(H, W, 3)`` uint8 RGB for viewing."""
    if image.ndim == 2:
        image = image[:, :, None]
    image = image[:, :, :3]
    if image.dtype != np.uint8:
        values = image.astype(np.float32)
        low, high = np.percentile(values, (1, 99))
        if high <= low:
            low, high = float(values.min()), float(values.max()) + 1e-6
        image = np.clip((values - low) / (high - low) * 255, 0, 255).astype(np.uint8)
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image)


def overlay(image: np.ndarray, labels: np.ndarray, num_labels: int, alpha: float = 0.45) -> np.ndarray:
    """The image with each foreground class filled in its colour and outlined: ``(H, W, 3)`` uint8 RGB."""
    rgb = display_rgb(image)
    colours = palette(max(num_labels, 2))
    foreground = (labels > 0) & (labels < len(colours))
    if not foreground.any():
        return rgb
    tint = colours[np.where(foreground, labels, 0)]
    out = rgb.copy()
    out[foreground] = (rgb[foreground] * (1 - alpha) + tint[foreground] * alpha).astype(np.uint8)
    thickness = max(1, round(max(labels.shape) / 500))
    for cls in np.unique(labels[foreground]):
        contours, _ = cv2.findContours((labels == cls).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, tuple(int(c) for c in colours[cls]), thickness)
    return out


def error_map(image: np.ndarray, target: np.ndarray, prediction: np.ndarray, ignore_index: int | None = None) -> np.ndarray:
    """The image dimmed, with correct foreground green, false positives red, missed pixels
    blue and foreground of the wrong class yellow (``ERROR_COLOURS``)."""
    rgb = (display_rgb(image) * 0.5).astype(np.uint8)
    valid = np.ones(target.shape, bool) if ignore_index is None else target != ignore_index
    cases = {
        "correct": valid & (target > 0) & (prediction == target),
        "false positive": valid & (target == 0) & (prediction > 0),
        "missed": valid & (target > 0) & (prediction == 0),
        "wrong class": valid & (target > 0) & (prediction > 0) & (prediction != target),
    }
    for name, where in cases.items():
        rgb[where] = ERROR_COLOURS[name]
    return rgb


def _shrink(image: np.ndarray, max_side: int) -> np.ndarray:
    scale = max_side / max(image.shape[:2])
    if scale >= 1:
        return image
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def error_panel(
    path: str | os.PathLike,
    image: np.ndarray,
    target: np.ndarray,
    prediction: np.ndarray,
    num_labels: int,
    title: str,
    ignore_index: int | None = None,
    max_side: int = 512,
) -> None:
    """Save ``image | ground truth | prediction | errors`` side by side as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    shown_target = np.where(target == ignore_index, 0, target) if ignore_index is not None else target
    tiles = [
        ("image", display_rgb(image)),
        ("ground truth", overlay(image, shown_target, num_labels)),
        ("prediction", overlay(image, prediction, num_labels)),
        ("errors", error_map(image, target, prediction, ignore_index)),
    ]
    figure, axes = plt.subplots(1, 4, figsize=(16, 4.6))
    for axis, (name, tile) in zip(axes, tiles):
        axis.imshow(_shrink(tile, max_side))
        axis.set_title(name)
        axis.axis("off")
    handles = [Patch(color=np.array(c) / 255, label=n) for n, c in ERROR_COLOURS.items()]
    figure.legend(handles=handles, loc="lower center", ncol=4, fontsize=9, frameon=False)
    figure.suptitle(title)
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    _save_figure(figure, path)


def confusion_heatmap(path: str | os.PathLike, confusion: np.ndarray, class_names: Sequence[str], title: str) -> None:
    """Row-normalised confusion matrix (rows: ground truth) as a PNG heatmap, with the shares written in."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    confusion = np.asarray(confusion, dtype=np.float64)
    rows = confusion.sum(axis=1, keepdims=True)
    shares = np.divide(confusion, rows, out=np.zeros_like(confusion), where=rows > 0)
    k = len(class_names)
    side = max(4.0, 0.55 * k + 2)
    figure, axis = plt.subplots(figsize=(side + 1, side))
    shown = axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    axis.set_xticks(range(k), class_names, rotation=45, ha="right")
    axis.set_yticks(range(k), class_names)
    axis.set_xlabel("prediction")
    axis.set_ylabel("ground truth")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                axis.text(j, i, f"{shares[i, j]:.2f}", ha="center", va="center", fontsize=7,
                          color="white" if shares[i, j] > 0.5 else "black")
    figure.colorbar(shown, ax=axis, fraction=0.046, label="share of the row's pixels")
    axis.set_title(title)
    figure.tight_layout()
    _save_figure(figure, path)


def _save_figure(figure, path: str | os.PathLike) -> None:
    import io

    import matplotlib.pyplot as plt

    from segkit.data.io import write_bytes_atomic

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    write_bytes_atomic(path, buffer.getvalue())
