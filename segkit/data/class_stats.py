"""Per-class pixel statistics of a dataset and the class weights derived from them.

``segkit-prepare`` counts the pixels of each class over a dataset's training split and
writes ``class_stats.json``::

    {"class_names": [...], "pixel_counts": [...], "frequencies": [...], "weights": [...],
     "images": N, "split": "train"}

``weights`` are inverse pixel frequencies normalised to mean 1 over the classes present
(a class with no pixels gets weight 0: it never appears in a target).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segkit.data.io import write_json_atomic

__all__ = [
    "CLASS_PLOT_FILE",
    "CLASS_STATS_FILE",
    "IMAGE_STATS_FILE",
    "count_pixels",
    "image_stats",
    "inverse_frequency_weights",
    "plot_class_distribution",
    "read_class_weights",
    "read_class_presence",
    "read_image_stats",
    "write_class_stats",
]

CLASS_STATS_FILE = "class_stats.json"
CLASS_PLOT_FILE = "class_distribution.png"
IMAGE_STATS_FILE = "image_stats.json"

HOW_TO_CREATE = (
    "create it with `segkit-prepare dataset=<name> data.root=<your data>` (it counts the pixels "
    "of every class over the training split), or give the weights yourself: loss.weights=[w0,w1,...]"
)


def count_pixels(mask: np.ndarray, n_labels: int, ignore_index: int | None = None) -> np.ndarray:
    """Pixels of each label ``0..n_labels-1`` in ``mask``; values outside are an error."""
    values = mask.ravel()
    if ignore_index is not None:
        values = values[values != ignore_index]
    counts = np.bincount(values.astype(np.int64), minlength=n_labels)
    if len(counts) > n_labels:
        raise ValueError(f"mask holds label {len(counts) - 1}, outside 0..{n_labels - 1}")
    return counts


def inverse_frequency_weights(pixel_counts: Sequence[int]) -> list[float]:
    """``1 / frequency`` per class, scaled to mean 1 over classes with pixels; 0 for absent ones."""
    counts = np.asarray(pixel_counts, dtype=np.float64)
    if counts.sum() <= 0:
        raise ValueError("no pixels counted: cannot derive class weights")
    present = counts > 0
    weights = np.zeros_like(counts)
    weights[present] = counts.sum() / counts[present]
    weights[present] *= present.sum() / weights[present].sum()
    return weights.tolist()


def write_class_stats(
    path: str | os.PathLike, pixel_counts: Sequence[int], class_names: Sequence[str], images: int, extra: dict | None = None
) -> dict:
    """Write ``class_stats.json`` atomically and return its content."""
    counts = [int(c) for c in pixel_counts]
    total = sum(counts)
    payload = {
        "class_names": list(class_names),
        "pixel_counts": counts,
        "frequencies": [c / total for c in counts],
        "weights": inverse_frequency_weights(counts),
        "images": images,
        "split": "train",
        **(extra or {}),
    }
    write_json_atomic(path, payload)
    return payload


def image_stats(images: Iterable[np.ndarray], max_pixel_value: float) -> dict[str, Any]:
    """Per-channel ``mean`` and ``std`` over every pixel of ``images`` (``(H, W, C)`` arrays), in
    units of ``max_pixel_value``, as ``normalize`` takes them; a constant channel gets std 1."""
    total = total_sq = None
    count = 0
    for image in images:
        flat = image.reshape(-1, image.shape[-1]).astype(np.float64) / max_pixel_value
        total = flat.sum(axis=0) + (0 if total is None else total)
        total_sq = (flat**2).sum(axis=0) + (0 if total_sq is None else total_sq)
        count += flat.shape[0]
    if total is None:
        raise ValueError("no images to compute statistics over")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    std = np.where(std > 1e-6, std, 1.0)  # constant images: no division by zero
    return {"mean": mean.tolist(), "std": std.tolist(), "max_pixel_value": float(max_pixel_value)}


def read_image_stats(path: str | os.PathLike, channels: int) -> dict[str, list[float]]:
    """Per-channel ``mean``/``std`` (in units of ``max_pixel_value``) written by ``segkit-prepare``
    (``path``: the file, or the work folder holding ``image_stats.json``)."""
    path = Path(path)
    if path.is_dir():
        path = path / IMAGE_STATS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"normalize mean/std: dataset reads {path}, which does not exist yet: create it with "
            "`segkit-prepare dataset=<name> data.root=<your data>`, or give fixed values (data.normalize.mean=[...])"
        )
    stats = json.loads(path.read_text())
    if len(stats["mean"]) != channels:
        raise ValueError(f"{path}: statistics for {len(stats['mean'])} channels, the images have {channels}")
    return stats


def read_class_weights(path: str | os.PathLike | None, n_labels: int) -> list[float]:
    """The ``weights`` of a ``class_stats.json``, checked against the number of classes."""
    if not path:
        raise ValueError(f"weights: auto needs the dataset's {CLASS_STATS_FILE}, and none is known: {HOW_TO_CREATE}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights: auto reads {path}, which does not exist yet: {HOW_TO_CREATE}")
    try:
        weights = json.loads(path.read_text())["weights"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a segkit class statistics file ({err}); {HOW_TO_CREATE}") from err
    if len(weights) != n_labels:
        raise ValueError(f"{path}: has weights for {len(weights)} classes, the model has {n_labels}")
    return [float(w) for w in weights]


def read_class_presence(path: str | os.PathLike, names: Sequence[str], dataset: str = "<name>") -> list[list[int]]:
    """The classes present in each of ``names`` (training images), from the ``presence`` that
    ``segkit-prepare`` writes into ``class_stats.json`` for every image of the dataset."""
    path = Path(path)
    how = (f"segkit-train writes it before training; to write it yourself, run `segkit-prepare dataset={dataset} "
           "data.root=<your data>` with the same experiment= and data.* arguments as the training")
    if not path.is_file():
        raise FileNotFoundError(f"data.sampling=repeat_factor reads the classes of each image from {path}, which "
                                f"does not exist yet: {how}")
    presence = json.loads(path.read_text()).get("presence")
    if presence is None:
        raise ValueError(f"{path} has no per-image class presence (written by an older segkit): {how}")
    unknown = [n for n in names if n not in presence]
    if unknown:
        raise ValueError(f"{path} was written for other data ({len(unknown)} of {len(names)} training "
                         f"images unknown to it, e.g. {unknown[0]!r}): {how}")
    return [list(presence[n]) for n in names]


def plot_class_distribution(stats: dict[str, Any], path: Path) -> None:
    """Bar plot of pixels per class, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, counts = stats["class_names"], stats["pixel_counts"]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(names) + 2), 3.6))
    ax.bar(range(len(names)), [max(c, 0.5) for c in counts], color="#3b75af")
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)), names, rotation=45 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center")
    ax.set_ylabel("pixels (log scale)")
    ax.set_title(f"class distribution over {stats['images']} training images")
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
