"""Per-item tables without a Python object per item.

A dataset of 200,000 images held as lists of ``str`` / ``Path`` objects costs every
DataLoader worker a private copy of those objects over its first epoch: a forked worker
shares the parent's memory until it writes to a page, and merely reading a Python object
writes its reference count (and the garbage collector writes its header). The columns
here keep all the strings in one byte buffer with an offsets array (two numpy arrays, no
per-item objects), and hand out a fresh ``str`` / ``Path`` per access, so the shared pages
stay shared. :func:`freeze_before_fork` and :func:`init_loader_worker` keep the
garbage collector, in the parent and in each worker, off the objects they share.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["PathColumn", "StringColumn", "collection_paused", "freeze_before_fork", "init_loader_worker"]


class StringColumn(Sequence[str]):
    """An immutable sequence of strings stored as UTF-8 bytes and offsets."""

    def __init__(self, values: Iterable[str]) -> None:
        encoded = [str(v).encode("utf-8", "surrogateescape") for v in values]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        if encoded:
            np.cumsum([len(e) for e in encoded], out=self._offsets[1:])
        self._data = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy() if encoded else np.zeros(0, np.uint8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def _text(self, index: int) -> str:
        start, end = self._offsets[index], self._offsets[index + 1]
        return self._data[start:end].tobytes().decode("utf-8", "surrogateescape")

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        return self._text(index)

    def __iter__(self) -> Iterator[str]:
        return (self._text(i) for i in range(len(self)))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, StringColumn):
            return np.array_equal(self._offsets, other._offsets) and np.array_equal(self._data, other._data)
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __add__(self, other: Iterable[str]) -> list[str]:  # as the lists it replaces: train.names + val.names
        return [*self, *other]

    def __radd__(self, other: Iterable[str]) -> list[str]:
        return [*other, *self]

    def __repr__(self) -> str:
        shown = ", ".join(repr(v) for v in self[:3]) + (", ..." if len(self) > 3 else "")
        return f"{type(self).__name__}([{shown}], {len(self)} items)"

    @property
    def nbytes(self) -> int:
        return self._data.nbytes + self._offsets.nbytes


class PathColumn(StringColumn):
    """A :class:`StringColumn` of file paths; ``None`` entries (no file) stay ``None``."""

    def __init__(self, values: Iterable[str | Path | None]) -> None:
        values = list(values)
        self._none = np.array([v is None for v in values], dtype=bool)
        super().__init__("" if v is None else str(v) for v in values)

    def _text(self, index: int) -> Path | None:  # type: ignore[override]
        return None if self._none[index] else Path(super()._text(index))


@contextlib.contextmanager
def collection_paused() -> Iterator[None]:
    """Build many long-lived objects (a listing's paths and items) without the cyclic garbage
    collector: each of its runs walks every object still alive, and the oldest generation's
    runs come round as the object count grows, so listing 100,000 tiles cost 1.8x per tile
    what 1,000 did. Nothing made here is cyclic garbage; the collector is on again after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def freeze_before_fork() -> None:
    """Before loader workers fork: collect, then freeze what the parent holds (its item lists,
    CSV tables, Lightning's objects). Collections in the parent then no longer write to those
    objects' pages either, and a page the parent writes after the fork is a page that becomes
    private to every worker (it keeps the old copy): with 190,000 items that was 3-4 MiB per
    worker per few epochs. Python's docs give this recipe for fork without exec."""
    gc.collect()
    gc.freeze()


def init_loader_worker(worker_id: int | None = None) -> None:
    """A DataLoader ``worker_init_fn``: move every object inherited from the parent to the
    collector's permanent generation, so that collections in the worker never write to
    (and so copy) the parent's pages (what :func:`gc.freeze` is for, per Python's docs).

    (OpenCV's thread count is left alone: ``cv2.setNumThreads`` in a forked worker, after the
    parent used OpenCV's thread pool, waits forever for threads the fork did not copy.)"""
    gc.freeze()
