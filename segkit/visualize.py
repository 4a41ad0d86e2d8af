"""Pictures of predictions: colour overlays, error panels, confusion heatmaps.

Images of any dtype and channel count are shown as 8-bit RGB: 8-bit as they are, 16-bit
and float stretched between their 1st and 99th percentiles, one channel as grey.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import cv2
import numpy as np

__all__ = [
    "ERROR_COLOURS", "class_name", "confusion_heatmap", "display_rgb", "draw_legend", "error_map", "error_panel",
    "legend_classes", "overlay", "palette",
]

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


def overlay(
    image: np.ndarray,
    labels: np.ndarray,
    num_labels: int,
    alpha: float = 0.45,
    class_names: Sequence[str] | None = None,
) -> np.ndarray:
    """The image with each foreground class filled in its colour and outlined: ``(H, W, 3)`` uint8 RGB.

    With ``class_names`` (one per label, background first) a legend is drawn into the
    corner that hides the least foreground: a swatch and the name of each class in the
    picture, or of every class when there are few (:func:`legend_classes`).
    """
    rgb = display_rgb(image)
    colours = palette(max(num_labels, 2))
    foreground = (labels > 0) & (labels < len(colours))
    out = rgb.copy()
    if foreground.any():
        tint = colours[np.where(foreground, labels, 0)]
        out[foreground] = (rgb[foreground] * (1 - alpha) + tint[foreground] * alpha).astype(np.uint8)
        thickness = max(1, round(max(labels.shape) / 500))
        for cls in np.unique(labels[foreground]):
            contours, _ = cv2.findContours((labels == cls).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, contours, -1, tuple(int(c) for c in colours[cls]), thickness)
    if class_names is not None:
        shown = legend_classes(num_labels, labels)
        if shown:
            draw_legend(out, [(class_name(class_names, c), colours[c]) for c in shown], avoid=foreground)
    return out


# up to this many foreground classes, a legend lists them all (absent ones too: "no ship here"
# is worth reading); above it, only those in the picture
LEGEND_ALL_UP_TO = 4


def legend_classes(num_labels: int, *label_maps: np.ndarray) -> list[int]:
    """The foreground labels a legend shows: all when there are at most ``LEGEND_ALL_UP_TO``,
    else those present in any of ``label_maps`` (sorted)."""
    count = max(num_labels, 2)
    if count - 1 <= LEGEND_ALL_UP_TO:
        return list(range(1, count))
    present: set[int] = set()
    for labels in label_maps:
        present.update(int(v) for v in np.unique(labels))
    return [c for c in sorted(present) if 0 < c < count]


def class_name(class_names: Sequence[str] | None, label: int) -> str:
    """The name of ``label``, or ``class <label>`` when the list has none for it."""
    if class_names is not None and 0 <= label < len(class_names) and str(class_names[label]):
        return str(class_names[label])
    return f"class {label}"


_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _legend_layout(names: list[str], scale: float) -> dict[str, int]:
    """Sizes in pixels of a legend of ``names`` at font ``scale``."""
    thickness = 1 if scale < 0.8 else 2
    sizes = [cv2.getTextSize(name, _FONT, scale, thickness) for name in names]
    text = max(h + b for (_, h), b in sizes)
    swatch = max(6, round(text * 0.9))
    row = max(text, swatch)
    gap = max(2, round(text * 0.35))
    pad = max(3, round(text * 0.4))
    return {
        "thickness": thickness, "swatch": swatch, "row": row, "line": row + gap, "pad": pad,
        "width": pad + swatch + pad + max(w for (w, _), _ in sizes) + pad,
        "height": pad + len(names) * (row + gap) - gap + pad,
    }


def draw_legend(out: np.ndarray, entries: list[tuple[str, np.ndarray]], avoid: np.ndarray | None = None) -> None:
    """Draw ``(name, RGB colour)`` entries as a legend box into ``out`` (``(H, W, 3)`` uint8, in
    place): a colour swatch and the name per line on a darkened background, in the corner
    where it covers the fewest ``avoid`` pixels. The font follows the image size; on a small
    image lines that do not fit are summed up as ``+N more`` and long names shortened."""
    height, width = out.shape[:2]
    margin = max(2, round(min(height, width) / 100))
    room_w, room_h = width - 2 * margin, height - 2 * margin
    # OpenCV's Hershey font draws ASCII only
    names = [name.encode("ascii", "replace").decode() for name, _ in entries]
    colours: list[np.ndarray | None] = [colour for _, colour in entries]
    if not names or room_w <= 0 or room_h <= 0:
        return
    scale = float(np.clip(min(height, width) / 700, 0.35, 1.2))
    layout = _legend_layout(names, scale)
    while (layout["width"] > room_w or layout["height"] > room_h) and scale > 0.3:
        scale = max(0.3, scale * 0.85)
        layout = _legend_layout(names, scale)
    if layout["height"] > room_h:  # too many lines even at the smallest font
        fit = max(1, (room_h - 2 * layout["pad"] + layout["line"] - layout["row"]) // layout["line"])
        if fit < len(names):
            keep = max(0, fit - 1)
            names, colours = [*names[:keep], f"+{len(names) - keep} more"], [*colours[:keep], None]
            layout = _legend_layout(names, scale)
    while layout["width"] > room_w:  # shorten the longest name
        longest = max(range(len(names)), key=lambda i: len(names[i]))
        if len(names[longest]) <= 3:
            break
        names[longest] = names[longest].removesuffix("..")[:-1] + ".."
        layout = _legend_layout(names, scale)
    box_w, box_h = layout["width"], layout["height"]
    if box_w > width or box_h > height:
        return  # an image of a few pixels: no legend fits

    corners = [(margin, margin), (width - margin - box_w, margin),
               (margin, height - margin - box_h), (width - margin - box_w, height - margin - box_h)]
    corners = [(max(0, x), max(0, y)) for x, y in corners]
    if avoid is not None:  # the first corner with the least foreground under it (stable sort)
        corners.sort(key=lambda xy: int(np.count_nonzero(avoid[xy[1]:xy[1] + box_h, xy[0]:xy[0] + box_w])))
    x0, y0 = corners[0]
    region = out[y0:y0 + box_h, x0:x0 + box_w]
    region[:] = (region * 0.3).astype(np.uint8)  # darkened: white text reads on any picture
    pad, swatch, thickness = layout["pad"], layout["swatch"], layout["thickness"]
    for i, (name, colour) in enumerate(zip(names, colours)):
        top = y0 + pad + i * layout["line"]
        text_x = x0 + pad + swatch + pad
        if colour is not None:
            cv2.rectangle(out, (x0 + pad, top), (x0 + pad + swatch - 1, top + swatch - 1),
                          tuple(int(c) for c in colour), cv2.FILLED)
        (_, text_h), _ = cv2.getTextSize(name, _FONT, scale, thickness)
        cv2.putText(out, name, (text_x, top + (layout["row"] + text_h) // 2), _FONT, scale, (255, 255, 255),
                    thickness, cv2.LINE_AA)


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
    class_names: Sequence[str] | None = None,
) -> None:
    """Save ``image | ground truth | prediction | errors`` side by side as a PNG, with a
    legend of the classes (those in the ground truth or the prediction, or all when few;
    named by ``class_names``) above the legend of the error colours."""
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
    colours = palette(max(num_labels, 2))
    classes = [Patch(color=colours[c] / 255, label=class_name(class_names, c))
               for c in legend_classes(num_labels, shown_target, prediction)]
    columns = 8
    class_rows = -(-len(classes) // columns)
    row_inches = 0.28
    height = 4.6 + row_inches * class_rows
    figure, axes = plt.subplots(1, 4, figsize=(16, height))
    for axis, (name, tile) in zip(axes, tiles):
        axis.imshow(_shrink(tile, max_side))
        axis.set_title(name)
        axis.axis("off")
    errors = [Patch(color=np.array(c) / 255, label=n) for n, c in ERROR_COLOURS.items()]
    bottom = 0.06 * 4.6 / height  # the error legend's band, as before
    figure.legend(handles=errors, loc="lower center", ncol=4, fontsize=9, frameon=False)
    if classes:
        figure.legend(handles=classes, loc="lower center", ncol=min(columns, len(classes)), fontsize=9,
                      frameon=False, bbox_to_anchor=(0.5, bottom), title="classes", title_fontsize=9)
        bottom += (row_inches * class_rows + 0.2) / height
    figure.suptitle(title)
    figure.tight_layout(rect=(0, bottom, 1, 1))
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
