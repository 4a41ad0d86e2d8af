"""Post-processing chosen on validation: per class, predicted components smaller than a size
are removed (set to class 0), and only where that raises the class's score.

nnU-Net decides its post-processing on the cross-validation's out-of-fold predictions and
keeps a step only when it improves the Dice; this is the same idea with a size threshold per
class. ``segkit-eval postprocess=fit`` collects, for every predicted component of every class,
its size and the true classes of its pixels (:class:`ComponentTally`); removing the components
below a size then changes the pooled confusion matrix by exact counts, so every candidate size
is scored without predicting again. The sizes tried are powers of two (a coarse grid: a size
fitted exactly to the validation images would not carry over to new ones), and a class keeps
size 0 (nothing removed) unless a larger one raises its Dice by at least ``MIN_GAIN`` (0.001).

The choice is written to ``postprocessing.json``; ``segkit-predict`` and ``segkit-eval`` apply
it with ``postprocess=<that file>``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from segkit.data.io import write_json_atomic

__all__ = ["POSTPROCESS_FILE", "ComponentTally", "apply_min_sizes", "read_postprocessing"]

POSTPROCESS_FILE = "postprocessing.json"
FORMAT = 1
MIN_GAIN = 1e-3  # a size is kept only when it raises the class's Dice by at least this much


def _components(mask: np.ndarray, connectivity: int) -> tuple[int, np.ndarray, np.ndarray]:
    """``(count, labels, areas)`` of the connected components of a boolean mask (label 0: outside)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=connectivity)
    return count, labels, stats[:, cv2.CC_STAT_AREA]


def apply_min_sizes(labels: np.ndarray, min_sizes: Sequence[int], connectivity: int = 8) -> np.ndarray:
    """``labels`` with the components of class ``c`` smaller than ``min_sizes[c]`` pixels set to
    class 0 (a new array when anything changes; classes with size 0 or 1 are left as they are)."""
    out = labels
    for c, size in enumerate(min_sizes):
        if c == 0 or size <= 1:
            continue
        mask = labels == c
        if not mask.any():
            continue
        count, components, areas = _components(mask, connectivity)
        small = np.flatnonzero(areas < size)
        small = small[small > 0]
        if len(small):
            if out is labels:
                out = labels.copy()
            out[np.isin(components, small)] = 0
    return out


class ComponentTally:
    """What removing small predicted components would do to the pooled confusion matrix.

    Args:
        num_labels: classes (two for a binary model: 0 background, 1 foreground).
        ignore_index: target value that counts nowhere.
        connectivity: 8 (corner-touching pixels are one component) or 4.
    """

    def __init__(self, num_labels: int, ignore_index: int | None = None, connectivity: int = 8) -> None:
        if connectivity not in (4, 8):
            raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
        self.k, self.ignore_index, self.connectivity = num_labels, ignore_index, connectivity
        # per class: rows (size, truth histogram over the k classes) of its predicted components
        self.sizes: list[list[int]] = [[] for _ in range(num_labels)]
        self.truths: list[list[np.ndarray]] = [[] for _ in range(num_labels)]

    def add(self, target: np.ndarray, prediction: np.ndarray) -> None:
        """Tally the predicted components of one image against its target."""
        valid = np.ones(target.shape, bool) if self.ignore_index is None else target != self.ignore_index
        for c in range(1, self.k):
            mask = prediction == c
            if not mask.any():
                continue
            count, components, areas = _components(mask, self.connectivity)
            keep = valid & mask
            # truth histogram per component: bincount over (component, truth class) pairs
            pairs = components[keep].astype(np.int64) * self.k + np.clip(target[keep].astype(np.int64), 0, self.k - 1)
            hist = np.bincount(pairs, minlength=count * self.k).reshape(count, self.k)
            for index in range(1, count):
                self.sizes[c].append(int(areas[index]))
                self.truths[c].append(hist[index])

    def fit(self, confusion: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
        """The size per class that maximises its pooled Dice given ``confusion`` (rows: truth,
        columns: prediction, summed over the same images), and the scores before and after."""
        confusion = np.asarray(confusion, dtype=np.int64)
        chosen: dict[str, Any] = {}
        after = confusion.copy()
        for c in range(1, self.k):
            name = class_names[c]
            sizes = np.asarray(self.sizes[c], dtype=np.int64)
            truths = np.stack(self.truths[c]) if self.truths[c] else np.zeros((0, self.k), np.int64)
            row_total = int(confusion[c].sum())
            before = _dice(int(confusion[c, c]), row_total, int(confusion[:, c].sum()))
            best_size, best_dice = 0, before
            largest = int(sizes.max()) if len(sizes) else 0
            candidate = 2
            while candidate <= largest:
                removed = truths[sizes < candidate].sum(axis=0)
                tp = int(confusion[c, c] - removed[c])
                dice = _dice(tp, row_total, int(confusion[:, c].sum() - removed.sum()))
                if dice is not None and (best_dice is None or dice > best_dice + 1e-12):
                    best_size, best_dice = candidate, dice
                candidate *= 2
            if best_size and before is not None and best_dice < before + MIN_GAIN:
                best_size, best_dice = 0, before  # a gain this small is noise of these images, not a rule
            if best_size:
                removed = truths[sizes < best_size].sum(axis=0)
                after[:, c] -= removed
                after[:, 0] += removed
            chosen[name] = {"min_size": best_size, "dice_before": before, "dice_after": best_dice,
                            "components": len(sizes), "removed": int((sizes < best_size).sum()) if best_size else 0}
        return {"classes": chosen, "confusion_after": after}


def _dice(tp: int, truth: int, predicted: int) -> float | None:
    """Dice ``2TP / (truth + predicted)``; ``None`` when the class is in neither."""
    denominator = truth + predicted
    return None if denominator == 0 else 2.0 * tp / denominator


def write_postprocessing(path: Path, fitted: Mapping[str, Any], class_names: Sequence[str], connectivity: int,
                         source: Mapping[str, Any]) -> None:
    """``postprocessing.json``: the sizes per class, how they were chosen and on what."""
    write_json_atomic(path, {
        "format": FORMAT,
        "rule": "per class: predicted components smaller than min_size pixels become class 0",
        "connectivity": connectivity,
        "class_names": list(class_names),
        "min_size": {name: fitted["classes"].get(name, {}).get("min_size", 0) for name in class_names},
        "fit": fitted["classes"],
        "fitted_on": dict(source),
    })


def read_postprocessing(path: str | os.PathLike, class_names: Sequence[str]) -> tuple[list[int], int]:
    """``(min size per class index, connectivity)`` from a ``postprocessing.json``;
    ``ValueError`` naming the file when it is not one, or was fitted for other classes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"postprocess={path}: no such file (segkit-eval postprocess=fit writes "
                                f"{POSTPROCESS_FILE} into its output folder)")
    try:
        spec = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"postprocess={path}: not a {POSTPROCESS_FILE} ({err})") from err
    if not isinstance(spec, dict) or "min_size" not in spec or spec.get("format", 0) > FORMAT:
        raise ValueError(f"postprocess={path}: not a {POSTPROCESS_FILE} written by this segkit (segkit-eval postprocess=fit)")
    if list(spec.get("class_names", [])) != list(class_names):
        raise ValueError(f"postprocess={path} was fitted for the classes {spec.get('class_names')}, the model "
                         f"predicts {list(class_names)}: fit it for this model (segkit-eval ckpt=... postprocess=fit)")
    sizes = [int(spec["min_size"].get(name, 0)) for name in class_names]
    return sizes, int(spec.get("connectivity", 8))
