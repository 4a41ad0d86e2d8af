"""Kaggle submission files, checked by decoding them back before they are put in place.

- ``airbus``: ``ImageId,EncodedPixels``, one row per predicted ship — a connected component
  of the mask of at least ``min_size`` pixels — in column-major RLE; an image without
  ships gets one row with empty ``EncodedPixels``. Ships never overlap (they are disjoint
  components), as Kaggle requires.
- ``carvana``: ``img,rle_mask``, one row per image, row-major RLE.

:class:`SubmissionWriter` keeps the rows and, per image, a hash of the mask they should
encode. :meth:`SubmissionWriter.close` writes the CSV under a temporary name, reads that
file back with pandas, decodes every row and compares it with the hash; only a file that
decodes to exactly the predicted masks is renamed into place.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from segkit.data.io import write_bytes_atomic
from segkit.data.rle import rle_decode, rle_encode

__all__ = ["FORMATS", "SubmissionWriter", "ship_components"]


@dataclass(frozen=True)
class Format:
    id_column: str
    rle_column: str
    order: str  # RLE pixel order: "F" column-major, "C" row-major
    per_component: bool


FORMATS = {
    "airbus": Format("ImageId", "EncodedPixels", "F", per_component=True),
    "carvana": Format("img", "rle_mask", "C", per_component=False),
}


def _digest(mask: np.ndarray) -> str:
    return hashlib.sha1(np.packbits(mask.astype(bool)).tobytes() + str(mask.shape).encode()).hexdigest()


def ship_components(mask: np.ndarray, min_size: int = 0, connectivity: int = 8) -> list[np.ndarray]:
    """The connected components of a binary ``(H, W)`` mask with at least ``min_size`` pixels,
    as boolean masks, in label order (top-left first)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=connectivity)
    return [labels == i for i in range(1, count) if stats[i, cv2.CC_STAT_AREA] >= min_size]


class SubmissionWriter:
    """Collects one submission's rows; :meth:`close` writes and validates the CSV.

    Args:
        kind: ``airbus`` or ``carvana``.
        path: the CSV to write.
        min_size: airbus: components smaller than this many pixels are dropped.
        connectivity: airbus: 4 or 8 (pixels touching at a corner are one ship with 8).
    """

    def __init__(self, kind: str, path: str | os.PathLike, min_size: int = 0, connectivity: int = 8) -> None:
        if kind not in FORMATS:
            raise ValueError(f"unknown submission format {kind!r}; available: {', '.join(FORMATS)}")
        if connectivity not in (4, 8):
            raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
        self.kind = kind
        self.format = FORMATS[kind]
        self.path = Path(path)
        self.min_size = min_size
        self.connectivity = connectivity
        self.rows: list[tuple[str, str]] = []
        self.expected: dict[str, tuple[tuple[int, int], str]] = {}

    def add(self, image_id: str, mask: np.ndarray) -> np.ndarray:
        """Add an image's binary ``(H, W)`` mask; returns the mask the rows encode (airbus:
        without the components under ``min_size``)."""
        if image_id in self.expected:
            raise ValueError(f"{image_id}: added twice to the {self.kind} submission (two inputs with one name?)")
        if "," in image_id or "\n" in image_id:
            raise ValueError(f"{image_id!r}: an image id for a CSV may not hold a comma or a newline")
        mask = np.asarray(mask) > 0
        fmt = self.format
        if fmt.per_component:
            components = ship_components(mask, self.min_size, self.connectivity)
            kept = np.zeros_like(mask)
            for component in components:
                kept |= component
            rows = [rle_encode(c, order=fmt.order) for c in components] or [""]
        else:
            kept = mask
            rows = [rle_encode(mask, order=fmt.order)]
        self.rows.extend((image_id, rle) for rle in rows)
        self.expected[image_id] = (mask.shape, _digest(kept))
        return kept

    def close(self) -> dict[str, int]:
        """Write, decode back, compare, move into place; returns row and image counts."""
        fmt = self.format
        frame = pd.DataFrame(self.rows, columns=[fmt.id_column, fmt.rle_column])
        buffer = io.StringIO()
        frame.to_csv(buffer, index=False)
        data = buffer.getvalue().encode()
        self.validate(data)
        write_bytes_atomic(self.path, data)
        return {"rows": len(frame), "images": len(self.expected), "empty_images": int((frame[fmt.rle_column] == "").sum())}

    def validate(self, data: bytes) -> None:
        """Decode every row of the CSV bytes and compare with the masks that were added."""
        fmt = self.format
        frame = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
        if list(frame.columns) != [fmt.id_column, fmt.rle_column]:
            raise AssertionError(f"{self.path}: header {list(frame.columns)} is not {[fmt.id_column, fmt.rle_column]}")
        problems: list[str] = []
        found = set()
        for image_id, group in frame.groupby(fmt.id_column, sort=False):
            found.add(image_id)
            if image_id not in self.expected:
                problems.append(f"{image_id}: in the file but never predicted")
                continue
            shape, digest = self.expected[image_id]
            union = np.zeros(shape, bool)
            encoded = [r for r in group[fmt.rle_column] if r != ""]
            if len(encoded) != len(group) and (encoded or len(group) > 1):
                problems.append(f"{image_id}: an empty row beside other rows")
            if not fmt.per_component and len(group) != 1:
                problems.append(f"{image_id}: {len(group)} rows, {self.kind} wants one per image")
            for rle in encoded:
                decoded = rle_decode(rle, shape, order=fmt.order).astype(bool)
                if (union & decoded).any():
                    problems.append(f"{image_id}: rows overlap (Kaggle refuses overlapping ships)")
                union |= decoded
            if _digest(union) != digest:
                problems.append(f"{image_id}: the rows do not decode to the predicted mask")
        problems += [f"{i}: predicted but missing from the file" for i in self.expected if i not in found]
        if problems:
            raise AssertionError(
                f"{self.path}: the {self.kind} submission does not decode back to the predictions "
                f"({len(problems)} problem(s)); nothing written:\n  " + "\n  ".join(problems[:10])
            )
