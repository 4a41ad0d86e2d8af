"""Kaggle RLE CSV files (``<id column>,<rle column>``): reading, grouping, decoding per image."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from segkit.data.cache import file_sha256
from segkit.data.io import image_size, write_json_atomic
from segkit.data.rle import rle_decode_many
from segkit.data.table import StringColumn
from segkit.errors import format_problems

log = logging.getLogger(__name__)

__all__ = ["CompactRle", "RleCsvMasks", "RleTable", "read_rle_csv"]


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
        return _decode_rows(self.path, image_id, self.rows.get(image_id, []), shape, order)


class CompactRle:
    """The rows of an :class:`RleTable` for decoding in loader workers: the ids in a sorted
    numpy array (looked up by binary search), the RLE strings in one
    :class:`~segkit.data.table.StringColumn`, CSV lines in an int array — no Python object
    per row, so forked workers share it with the parent instead of copying it
    (:mod:`segkit.data.table`). ``decode`` equals :meth:`RleTable.decode`, errors included.
    Picklable (spawned workers, DDP)."""

    def __init__(self, table: RleTable, order: str) -> None:
        ids = sorted(table.rows)
        self.path, self.order = table.path, order
        self._ids = np.array(ids, dtype=str) if ids else np.zeros(0, dtype="<U1")
        counts = [len(table.rows[i]) for i in ids]
        self._starts = np.zeros(len(ids) + 1, dtype=np.int64)
        if counts:
            np.cumsum(counts, out=self._starts[1:])
        self._rles = StringColumn(rle for i in ids for _, rle in table.rows[i])
        self._lines = np.array([line for i in ids for line, _ in table.rows[i]], dtype=np.int64)

    def _index(self, image_id: str) -> int | None:
        """Where ``image_id`` is among the ids with rows (binary search), or ``None``."""
        at = int(np.searchsorted(self._ids, image_id))
        return at if at < len(self._ids) and self._ids[at] == image_id else None

    def rows(self, image_id: str) -> list[tuple[int, str]]:
        """``(csv_line, rle)`` of the image's non-empty rows (none: no object)."""
        at = self._index(image_id)
        if at is None:
            return []
        return [(int(self._lines[k]), self._rles[k]) for k in range(self._starts[at], self._starts[at + 1])]

    def has_mask(self, image_id: str) -> bool:
        return self._index(image_id) is not None

    def __call__(self, image_id: str, shape: tuple[int, int]) -> np.ndarray:
        return _decode_rows(self.path, image_id, self.rows(image_id), shape, self.order)


def _decode_rows(path: Path, image_id: str, rows: list[tuple[int, str]], shape: tuple[int, int], order: str) -> np.ndarray:
    """Union of one image's RLE rows as a ``uint8`` mask; errors name the CSV line."""
    try:
        return rle_decode_many([rle for _, rle in rows], shape, order=order)
    except ValueError:
        for line, rle in rows:  # find the offending row for the message
            try:
                rle_decode_many([rle], shape, order=order)
            except ValueError as err:
                raise ValueError(f"{path}:{line}: {image_id!r}: bad RLE for a {shape[0]}x{shape[1]} image: {err}") from None
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


class RleCsvMasks:
    """The part of a datamodule whose masks are RLE rows of a CSV (Airbus, Carvana).

    The table is read once (:meth:`rle_table`, from the subclass's :meth:`read_rle_table`).
    Training, checks and evaluation all decode the rows as they load each image
    (:meth:`rle_decoder`, a :class:`CompactRle` the loader workers share): decoding a row
    costs less than reading a cached PNG mask, so nothing is written per image.
    :meth:`check_rle_rows` decodes every row once before the first training (its result
    kept by the CSV's hash), so a bad row stops the run at the start, naming its line.
    The datamodule sets ``csv_file`` and ``rle_order`` (``"F"``: column-major, Airbus;
    ``"C"``: row-major, Carvana).
    """

    csv_file: str
    rle_order: str
    _rle: RleTable | None = None
    _compact: CompactRle | None = None

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

    def rle_decoder(self) -> CompactRle:
        """``decoder(image_id, shape) -> mask`` from the CSV's rows."""
        if self._compact is None:
            self._compact = CompactRle(self.rle_table(), self.rle_order)
        return self._compact

    def check_rle_rows(self, images: Mapping[str, Path]) -> str:
        """Decode the rows of ``images`` (id → image file, whose header gives the shape) once;
        raise naming the first bad row's line. Kept as passed for this CSV (by its hash) in the
        work folder, so later runs skip it. Returns what it did."""
        record = self.work_dir / "rle_rows_checked.json"
        fingerprint = file_sha256(self.csv_path) + f"|{self.rle_order}|{len(images)}"
        if record.is_file() and json.loads(record.read_text()).get("fingerprint") == fingerprint:
            return f"the RLE rows of {self.csv_path.name} were checked before: masks are decoded from them while loading"
        from tqdm.auto import tqdm

        decode = self.rle_decoder()
        started = time.perf_counter()
        unreadable = []
        for image_id in tqdm(sorted(images), desc=f"checking {self.csv_path.name}", unit="image", mininterval=1.0,
                             disable=None):
            try:
                shape = image_size(images[image_id], self.max_image_pixels)
            except ValueError as err:  # the image, not its row: data.on_bad_file decides
                if getattr(self, "on_bad_file", "error") != "skip":
                    raise ValueError(f"{err} — fix or remove the file, or set data.on_bad_file=skip to train without "
                                     "such files (segkit-prepare ... check=true lists every problem)") from None
                unreadable.append(str(err))
                continue
            decode(image_id, shape)
        if unreadable:
            log.warning("%s", format_problems(unreadable, f"data.on_bad_file=skip: {len(unreadable)} image(s) with RLE "
                                                          "rows cannot be read; they are skipped while loading:", limit=5))
        write_json_atomic(record, {"fingerprint": fingerprint, "images": len(images)})
        return (f"checked the RLE rows of {len(images)} images in {self.csv_path.name} ({time.perf_counter() - started:.1f} s, "
                "nothing written per image): masks are decoded from them while loading")
