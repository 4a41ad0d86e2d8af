"""Kaggle run-length encoding (RLE) of binary masks.

A Kaggle RLE string is a space-separated list of ``start length`` pairs. ``start``
is 1-indexed into the flattened mask; pixels are numbered column-major
(``order="F"``: top-to-bottom, then left-to-right — Airbus) or row-major
(``order="C"``: left-to-right, then top-to-bottom — Carvana).

Both directions are vectorised: no Python loop runs over the runs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

__all__ = ["rle_decode", "rle_encode", "rle_decode_many"]


def _is_empty(rle: str | float | None) -> bool:
    if rle is None:
        return True
    if isinstance(rle, float):
        if math.isnan(rle):
            return True
        raise ValueError(f"RLE must be a string, got the number {rle!r}")
    if not isinstance(rle, str):
        raise ValueError(f"RLE must be a string, got {type(rle).__name__}")
    return rle.strip() == ""


def _parse_runs(rle: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Parse and validate ``rle`` into 0-indexed starts and lengths (both int64)."""
    tokens = rle.split()
    if len(tokens) % 2:
        raise ValueError(
            f"RLE has an odd number of tokens ({len(tokens)}): expected 'start length' pairs"
        )
    try:
        values = np.array(tokens, dtype=np.int64)
    except ValueError:
        bad = next(t for t in tokens if not _is_int_token(t))
        raise ValueError(f"RLE token {bad!r} is not an integer") from None
    starts, lengths = values[0::2] - 1, values[1::2]
    ends = starts + lengths
    # fast path: one combined test for the usual case of valid runs in increasing order
    if starts.min() >= 0 and lengths.min() > 0 and ends.max() <= size and not (starts[1:] < ends[:-1]).any():
        return starts, lengths
    _diagnose(starts, lengths, ends, size)
    return starts, lengths


def _diagnose(starts: np.ndarray, lengths: np.ndarray, ends: np.ndarray, size: int) -> None:
    """Raise for the first invalid run (numbered from 1, as a person counts the row's pairs);
    return when the runs are only out of order."""
    if (starts < 0).any():
        i = int(np.flatnonzero(starts < 0)[0])
        raise ValueError(f"RLE run {i + 1} starts at {starts[i] + 1}: starts are 1-indexed (>= 1)")
    if (lengths <= 0).any():
        i = int(np.flatnonzero(lengths <= 0)[0])
        raise ValueError(f"RLE run {i + 1} has length {lengths[i]}: lengths must be >= 1")
    if (ends > size).any():
        i = int(np.flatnonzero(ends > size)[0])
        raise ValueError(
            f"RLE run {i + 1} (start {starts[i] + 1}, length {lengths[i]}) ends at pixel "
            f"{ends[i]}, beyond the mask's {size} pixels"
        )
    order = np.argsort(starts, kind="stable")
    overlap = starts[order][1:] < ends[order][:-1]
    if overlap.any():
        i = int(np.flatnonzero(overlap)[0])
        a, b = order[i], order[i + 1]
        raise ValueError(
            f"RLE runs {a + 1} (start {starts[a] + 1}, length {lengths[a]}) and "
            f"{b + 1} (start {starts[b] + 1}, length {lengths[b]}) overlap"
        )


def _is_int_token(token: str) -> bool:
    try:
        int(token)
    except ValueError:
        return False
    return True


def rle_decode(rle: str | float | None, shape: tuple[int, int], order: str = "F") -> np.ndarray:
    """Decode a Kaggle RLE string into a binary mask.

    Args:
        rle: ``"start length start length ..."``; ``""``, ``None`` or NaN give an empty mask.
        shape: mask shape ``(height, width)`` in pixels.
        order: ``"F"`` column-major pixel numbering (Airbus), ``"C"`` row-major (Carvana).

    Returns:
        ``uint8`` array of ``shape`` with values {0, 1}.

    Raises:
        ValueError: odd token count, a non-integer token, a start < 1, a length < 1,
            a run past the end of the mask, or two overlapping runs.
    """
    _check_order(order)
    size = int(np.prod(shape))
    flat = np.zeros(size, dtype=np.uint8)
    if not _is_empty(rle):
        starts, lengths = _parse_runs(rle, size)
        flat[_run_indices(starts, lengths)] = 1
    return flat.reshape(shape, order=order)


def rle_decode_many(
    rles: Iterable[str | float | None], shape: tuple[int, int], order: str = "F"
) -> np.ndarray:
    """Union of several RLE masks (e.g. all ships of one Airbus image), ``uint8`` {0, 1}."""
    _check_order(order)
    size = int(np.prod(shape))
    flat = np.zeros(size, dtype=np.uint8)
    for rle in rles:
        if not _is_empty(rle):
            starts, lengths = _parse_runs(rle, size)
            flat[_run_indices(starts, lengths)] = 1
    return flat.reshape(shape, order=order)


def _run_indices(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Flat indices covered by the runs, in one vectorised expression."""
    total = int(lengths.sum())
    run_offsets = np.cumsum(lengths) - lengths
    return np.repeat(starts - run_offsets, lengths) + np.arange(total)


def rle_encode(mask: np.ndarray, order: str = "F") -> str:
    """Encode a mask (non-zero = foreground) as a Kaggle RLE string.

    Args:
        mask: 2-D array ``(height, width)``; any non-zero pixel is foreground.
        order: ``"F"`` column-major (Airbus) or ``"C"`` row-major (Carvana).

    Returns:
        ``"start length ..."`` with 1-indexed starts in increasing order; ``""`` for an
        empty mask.
    """
    _check_order(order)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (height, width), got shape {mask.shape}")
    flat = np.asarray(mask).ravel(order=order) != 0
    padded = np.concatenate(([False], flat, [False]))
    runs = np.flatnonzero(padded[1:] != padded[:-1]) + 1
    runs[1::2] -= runs[0::2]
    return " ".join(map(str, runs.tolist()))


def _check_order(order: str) -> None:
    if order not in ("F", "C"):
        raise ValueError(f"order must be 'F' (column-major) or 'C' (row-major), got {order!r}")
