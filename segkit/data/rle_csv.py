"""Kaggle RLE CSV files (``<id column>,<rle column>``): reading, grouping, decoding per image."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from segkit.data.cache import MaskCache, file_sha256
from segkit.data.io import DEFAULT_MAX_IMAGE_PIXELS, image_size
from segkit.data.rle import rle_decode_many

__all__ = ["RleCsvMasks", "RleTable", "cache_rle_masks", "read_rle_csv"]


@dataclass(frozen=True)
class RleTable:
    """A CSV of RLE masks grouped per image.

    Attributes:
        path: the CSV.
        ids: unique image ids in CSV order.
        rows: id → ``(csv_line, rle)`` of its non-empty rows (line 1 is the header).
        first_line: id → its first CSV line.
    """

    path: Path
    ids: list[str]
    rows: dict[str, list[tuple[int, str]]]
    first_line: dict[str, int]

    def has_mask(self, image_id: str) -> bool:
        return image_id in self.rows

    def decode(self, image_id: str, shape: tuple[int, int], order: str) -> np.ndarray:
        """Union of the image's RLE rows as a ``uint8`` mask; errors name the CSV line."""
        rows = self.rows.get(image_id, [])
        try:
            return rle_decode_many([rle for _, rle in rows], shape, order=order)
        except ValueError:
            for line, rle in rows:  # find the offending row for the message
                try:
                    rle_decode_many([rle], shape, order=order)
                except ValueError as err:
                    raise ValueError(
                        f"{self.path}:{line}: {image_id!r}: bad RLE for a {shape[0]}x{shape[1]} image: {err}"
                    ) from None
            raise


def read_rle_csv(path: str | os.PathLike, id_column: str, rle_column: str, one_row_per_id: bool = False) -> RleTable:
    """Read and group an RLE CSV; errors name the file (and line) and what was expected.

    ``one_row_per_id``: each id has exactly one row (Carvana: one mask per image); otherwise
    an id may have several rows (Airbus: one per ship), but not both an empty row ("no
    object") and rows with runs.
    """
    path = Path(path)
    columns = (id_column, rle_column)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: the file is empty; expected a header '{','.join(columns)}'") from None
    except pd.errors.ParserError as err:
        raise ValueError(f"{path}: not a valid CSV ({err})") from err
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); is it the right file?") from None
    # a header saved with spaces around the names ("ImageId , EncodedPixels") means the same columns
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{path}: expected columns {','.join(columns)}, found {','.join(map(str, frame.columns))} "
            f"(missing {', '.join(missing)})"
        )
    extra = [str(c) for c in frame.columns if c not in columns]
    if extra:
        hint = " — a pandas index written by to_csv without index=False?" if any(c.startswith("Unnamed") for c in extra) else ""
        raise ValueError(
            f"{path}: unexpected column(s) {', '.join(extra)}; expected exactly {','.join(columns)}{hint}"
        )
    if frame.empty:
        raise ValueError(f"{path}: the CSV has a header but no rows")
    ids = frame[id_column].str.strip()
    rles = frame[rle_column].str.strip()
    lines = np.arange(len(frame)) + 2
    bad = ~ids.map(_is_plain_file_name)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(
            f"{path}:{lines[i]}: {id_column} {ids.iloc[i]!r} is not a plain file name "
            "(empty, or contains a path separator or '..')"
        )
    has_rle = (rles != "").to_numpy()
    _check_duplicates(path, id_column, ids.to_numpy(), lines, has_rle, one_row_per_id)
    rows: dict[str, list[tuple[int, str]]] = {}
    for image_id, line, rle in zip(ids[has_rle], lines[has_rle], rles[has_rle]):
        rows.setdefault(image_id, []).append((int(line), rle))
    first_line: dict[str, int] = {}
    for image_id, line in zip(ids, lines):
        first_line.setdefault(image_id, int(line))
    return RleTable(path=path, ids=list(first_line), rows=rows, first_line=first_line)


def _check_duplicates(
    path: Path, id_column: str, ids: np.ndarray, lines: np.ndarray, has_rle: np.ndarray, one_row_per_id: bool
) -> None:
    """Raise naming both lines of the first id whose rows contradict each other."""
    frame = pd.DataFrame({"id": ids, "line": lines, "has_rle": has_rle})
    repeated = frame[frame.duplicated("id", keep=False)]
    if repeated.empty:
        return
    if one_row_per_id:
        second = repeated[repeated.duplicated("id", keep="first")].iloc[0]
        first = int(repeated.line[repeated.id == second.id].iloc[0])
        raise ValueError(
            f"{path}:{int(second.line)}: {id_column} {second.id!r} appears again (first on line {first}); "
            "each image must have exactly one row"
        )
    mixed = repeated.groupby("id", sort=False).has_rle.agg(["any", "all"])
    conflicting = mixed.index[mixed["any"] & ~mixed["all"]]
    if len(conflicting):
        group = repeated[repeated.id == conflicting[0]]
        empty, filled = int(group.line[~group.has_rle].iloc[0]), int(group.line[group.has_rle].iloc[0])
        raise ValueError(
            f"{path}:{empty}: {id_column} {conflicting[0]!r} has an empty mask here (no object) but runs on line "
            f"{filled}: the rows contradict each other"
        )


def _is_plain_file_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name


def cache_rle_masks(
    table: RleTable, directory: Path, images: Mapping[str, Path], order: str,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
) -> tuple[MaskCache, int]:
    """Decode the masks of ``images`` (id → image file, whose header gives the shape) from
    ``table`` into a PNG cache keyed by the CSV's hash; build or complete it if needed.

    Returns the cache and how many masks were written now (0 when it was up to date).
    """
    cache = MaskCache(directory, fingerprint=file_sha256(table.path))
    if cache.is_complete():
        return cache, 0
    written = cache.build(sorted(images), lambda key: table.decode(key, image_size(images[key], max_pixels), order))
    return cache, written


class RleCsvMasks:
    """The part of a datamodule whose masks are RLE rows of a CSV (Airbus, Carvana).

    The table is read once (:meth:`rle_table`, from the subclass's :meth:`read_rle_table`);
    checks and evaluation decode rows straight from it (:meth:`rle_decoder`), so they need
    no cache; training reads PNG masks decoded once into the work folder (:meth:`mask_cache`).
    The datamodule sets ``csv_file`` and ``rle_order`` (``"F"``: column-major, Airbus;
    ``"C"``: row-major, Carvana).
    """

    csv_file: str
    rle_order: str
    _rle: RleTable | None = None
    _cache: MaskCache | None = None
    _cache_written = 0

    @property
    def csv_path(self) -> Path:
        return self.root / self.csv_file

    def read_rle_table(self) -> RleTable:
        raise NotImplementedError

    def rle_table(self) -> RleTable:
        """The CSV's RLE rows, read once."""
        if self._rle is None:
            self._rle = self.read_rle_table()
        return self._rle

    def rle_decoder(self) -> Callable[[str, tuple[int, int]], np.ndarray]:
        """``decoder(image_id, shape) -> mask`` from the CSV's rows."""
        return functools.partial(self.rle_table().decode, order=self.rle_order)

    def mask_cache(self, images: Mapping[str, Path]) -> MaskCache:
        """The PNG masks of ``images`` (id → image file) decoded from the CSV, built or
        completed once per instance; :meth:`describe_cache` says what that did."""
        if self._cache is None:
            self._cache, self._cache_written = cache_rle_masks(
                self.rle_table(), self.work_dir / "masks", images, self.rle_order, self.max_image_pixels)
        return self._cache

    def describe_cache(self) -> str:
        return self._cache.describe(self._cache_written)
