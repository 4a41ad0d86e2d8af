"""Polygon rasterisation into semantic masks."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

__all__ = ["polygon_area", "rasterize_polygons"]

_SHIFT = 4  # sub-pixel bits for cv2.fillPoly: vertices keep 1/16 px precision


def polygon_area(points: np.ndarray) -> float:
    """Shoelace area of an ``(N, 2)`` polygon, in pixels²."""
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def rasterize_polygons(
    polygons: Sequence[np.ndarray], labels: Sequence[int], shape: tuple[int, int], background: int = 0
) -> np.ndarray:
    """Fill ``(N, 2)`` float ``(x, y)`` polygons with their labels into a ``uint8`` mask.

    Larger polygons are drawn first, so a small object lying on a large one (a vehicle on a
    bridge) stays visible. Parts outside ``shape`` are clipped.
    """
    mask = np.full(shape, background, dtype=np.uint8)
    order = sorted(range(len(polygons)), key=lambda i: -polygon_area(polygons[i]))
    for i in order:
        points = np.round(np.asarray(polygons[i], dtype=np.float64) * (1 << _SHIFT)).astype(np.int32)
        cv2.fillPoly(mask, [points], int(labels[i]), lineType=cv2.LINE_8, shift=_SHIFT)
    return mask
