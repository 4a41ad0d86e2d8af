"""Polygon rasterisation into semantic masks."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import cv2
import numpy as np

__all__ = ["polygon_area", "rasterize_bands", "rasterize_polygons"]

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
    return _fill(polygons, labels, sorted(range(len(polygons)), key=lambda i: -polygon_area(polygons[i])),
                 shape, background, top=0)


def _fill(polygons: Sequence[np.ndarray], labels: Sequence[int], order: Sequence[int], shape: tuple[int, int],
          background: int, top: int) -> np.ndarray:
    mask = np.full(shape, background, dtype=np.uint8)
    for i in order:
        points = np.round(np.asarray(polygons[i], dtype=np.float64) * (1 << _SHIFT)).astype(np.int64)
        points[:, 1] -= top << _SHIFT  # whole pixels in fixed point: an exact translation
        cv2.fillPoly(mask, [points.astype(np.int32)], int(labels[i]), lineType=cv2.LINE_8, shift=_SHIFT)
    return mask


def rasterize_bands(
    polygons: Sequence[np.ndarray], labels: Sequence[int], height: int, width: int, bands: Iterable[tuple[int, int]],
    background: int = 0,
) -> Iterator[np.ndarray]:
    """For each ``(start, stop)`` of ``bands``, rows ``[start, stop)`` of
    :func:`rasterize_polygons` of a ``height x width`` image, equal to them bit for bit, without
    the whole image's mask: a large scene is rasterised a band of patch rows at a time. The
    polygons' extents and drawing order are worked out once for all the bands.

    OpenCV fills a polygon the same after a whole-pixel shift, but not when the image edge
    cuts it somewhere else; so the band drawn is stretched to hold, whole, every polygon that
    reaches into it (clipped only where the full image clips it, at its own edges).
    """
    lows = np.array([float(np.min(p[:, 1])) for p in polygons])
    highs = np.array([float(np.max(p[:, 1])) for p in polygons])
    order = np.array(sorted(range(len(polygons)), key=lambda i: -polygon_area(polygons[i])), dtype=np.int64)
    for start, stop in bands:
        reach = order[(highs[order] >= start - 2) & (lows[order] <= stop + 1)]  # largest first, as the whole image
        top, bottom = start, stop
        if len(reach):
            top = max(0, min(top, int(np.floor(lows[reach].min())) - 2))
            bottom = min(height, max(bottom, int(np.ceil(highs[reach].max())) + 3))
        band = _fill(polygons, labels, reach.tolist(), (bottom - top, width), background, top)
        yield np.ascontiguousarray(band[start - top : stop - top])
