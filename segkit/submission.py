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

import csv
import hashlib
import io
import itertools
import json
import os
from collections.abc import Iterator, KeysView
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from segkit.data.io import temporary_path
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
        journal: a file the rows go to as each image is added (one JSON line per image, flushed),
            instead of memory: memory stays flat over 100,000 images, and an interrupted run
            leaves what it predicted. ``resume``: keep the journal's complete lines (a last line
            cut off by a kill is dropped) and say which images they hold (:attr:`done`).
    """

    def __init__(self, kind: str, path: str | os.PathLike, min_size: int = 0, connectivity: int = 8,
                 journal: str | os.PathLike | None = None, resume: bool = False) -> None:
        if kind not in FORMATS:
            raise ValueError(f"unknown submission format {kind!r}; available: {', '.join(FORMATS)}")
        if connectivity not in (4, 8):
            raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
        self.kind = kind
        self.format = FORMATS[kind]
        self.path = Path(path)
        self.min_size = min_size
        self.connectivity = connectivity
        self.rows: list[tuple[str, str]] = []  # without a journal
        self.expected: dict[str, tuple[tuple[int, int], str]] = {}
        self.journal = Path(journal) if journal is not None else None
        self._handle = None
        if self.journal is not None:
            if resume and self.journal.is_file():
                self._read_journal()
            self.journal.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.journal.open("a" if resume else "w", encoding="utf-8")

    @property
    def done(self) -> KeysView[str]:
        """The images added so far (a resumed journal's included); a live view, O(1) to test."""
        return self.expected.keys()

    def _read_journal(self) -> None:
        kept = 0
        with self.journal.open("rb") as handle:
            for raw in handle:
                try:
                    entry = json.loads(raw) if raw.endswith(b"\n") else None
                except ValueError:
                    entry = None
                if entry is None:
                    break  # cut off by the kill that interrupted the run: that image is predicted again
                self.expected[entry["id"]] = (tuple(entry["shape"]), entry["digest"])
                kept += len(raw)
        os.truncate(self.journal, kept)

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
        digest = _digest(kept)
        if self._handle is not None:
            self._handle.write(json.dumps({"id": image_id, "rows": rows, "shape": list(mask.shape), "digest": digest}) + "\n")
            self._handle.flush()
        else:
            self.rows.extend((image_id, rle) for rle in rows)
        self.expected[image_id] = (mask.shape, digest)
        return kept

    def _all_rows(self) -> Iterator[tuple[str, str]]:
        if self.journal is None:
            yield from self.rows
            return
        with self.journal.open(encoding="utf-8") as handle:
            for line in handle:
                entry = json.loads(line)
                for rle in entry["rows"]:
                    yield entry["id"], rle

    def close(self) -> dict[str, int]:
        """Write the CSV under a temporary name, decode it back and compare, move it into place
        (then the journal goes); returns row and image counts. Streams: memory stays flat."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        fmt = self.format
        tmp = temporary_path(self.path)
        rows = empty = 0
        try:
            with tmp.open("w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle, lineterminator="\n")
                writer.writerow([fmt.id_column, fmt.rle_column])
                for image_id, rle in self._all_rows():
                    writer.writerow([image_id, rle])
                    rows += 1
                    empty += rle == ""
            self.validate(tmp)
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
        if self.journal is not None:
            self.journal.unlink(missing_ok=True)
        return {"rows": rows, "images": len(self.expected), "empty_images": empty}

    def validate(self, data: bytes | Path) -> None:
        """Decode every row of the CSV (bytes, or a file read line by line) and compare with
        the masks that were added."""
        fmt = self.format
        handle = io.StringIO(data.decode("utf-8")) if isinstance(data, bytes) else open(data, newline="", encoding="utf-8")  # noqa: SIM115 — closed by the with below
        problems: list[str] = []
        found: set[str] = set()
        with handle:
            reader = csv.reader(handle)
            header = next(reader, [])
            if header != [fmt.id_column, fmt.rle_column]:
                raise AssertionError(f"{self.path}: header {header} is not {[fmt.id_column, fmt.rle_column]}")
            for image_id, group in itertools.groupby(reader, key=lambda row: row[0]):
                rles = [row[1] if len(row) > 1 else "" for row in group]
                if image_id in found:
                    problems.append(f"{image_id}: its rows are not together (it appears twice)")
                    continue
                found.add(image_id)
                problems += self._check_image(image_id, rles)
        problems += [f"{i}: predicted but missing from the file" for i in self.expected if i not in found]
        if problems:
            raise AssertionError(
                f"{self.path}: the {self.kind} submission does not decode back to the predictions "
                f"({len(problems)} problem(s)); nothing written:\n  " + "\n  ".join(problems[:10])
            )

    def _check_image(self, image_id: str, rles: list[str]) -> list[str]:
        fmt = self.format
        if image_id not in self.expected:
            return [f"{image_id}: in the file but never predicted"]
        problems = []
        shape, digest = self.expected[image_id]
        union = np.zeros(shape, bool)
        encoded = [r for r in rles if r != ""]
        if len(encoded) != len(rles) and (encoded or len(rles) > 1):
            problems.append(f"{image_id}: an empty row beside other rows")
        if not fmt.per_component and len(rles) != 1:
            problems.append(f"{image_id}: {len(rles)} rows, {self.kind} wants one per image")
        for rle in encoded:
            decoded = rle_decode(rle, shape, order=fmt.order).astype(bool)
            if (union & decoded).any():
                problems.append(f"{image_id}: rows overlap (Kaggle refuses overlapping ships)")
            union |= decoded
        if _digest(union) != digest:
            problems.append(f"{image_id}: the rows do not decode to the predicted mask")
        return problems
