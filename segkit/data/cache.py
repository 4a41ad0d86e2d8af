"""On-disk caches of per-image masks derived from a source file (e.g. an RLE CSV)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from segkit.data.io import write_json_atomic, write_png_atomic

__all__ = ["MaskCache", "default_cache_dir", "file_sha256", "stat_fingerprint"]

MANIFEST = "manifest.json"
log = logging.getLogger(__name__)


def default_cache_dir(kind: str, key: str) -> Path:
    """``$SEGKIT_CACHE`` (or ``$XDG_CACHE_HOME/segkit``, ``~/.cache/segkit``) ``/<kind>-<hash of key>``.

    ``key`` identifies what is cached (a data root's absolute path, generator parameters).
    Caches never go inside the user's data folder, which may be read-only or shared.
    """
    base = os.environ.get("SEGKIT_CACHE")
    if base is None:
        xdg = os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))
        base = os.path.join(xdg, "segkit")
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    return Path(base) / f"{kind}-{digest}"


def stat_fingerprint(paths: Iterable[str | os.PathLike], salt: str = "") -> str:
    """SHA-1 over ``salt`` and each file's path, size and modification time: changes when any
    of the files is added, removed, renamed or rewritten, without reading their contents."""
    sha = hashlib.sha1(salt.encode())
    for path in paths:
        stat = os.stat(path)
        sha.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return sha.hexdigest()


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            sha.update(block)
    return sha.hexdigest()


class MaskCache:
    """Masks stored as PNG files ``<directory>/<key>.png``, valid for one source fingerprint.

    ``manifest.json`` records the fingerprint of the source the masks were made from and
    whether the build finished. A changed source clears the cache; a build that was
    interrupted is completed on the next call (each PNG is written atomically, so every
    file present is whole).
    """

    def __init__(self, directory: str | os.PathLike, fingerprint: str) -> None:
        self.directory = Path(directory)
        self.fingerprint = fingerprint

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.png"

    def _manifest(self) -> dict | None:
        try:
            return json.loads((self.directory / MANIFEST).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def _write_manifest(self, complete: bool, count: int) -> None:
        write_json_atomic(self.directory / MANIFEST, {"fingerprint": self.fingerprint, "complete": complete, "masks": count})

    def describe(self, written: int) -> str:
        """What the last :meth:`build` did, for ``segkit-prepare``."""
        if written:
            return f"mask cache {self.directory}: wrote {written} masks"
        return f"mask cache {self.directory} is up to date: nothing to do"

    def is_complete(self) -> bool:
        manifest = self._manifest()
        return bool(manifest and manifest["fingerprint"] == self.fingerprint and manifest["complete"])

    def build(self, keys: Iterable[str], make_mask: Callable[[str], np.ndarray]) -> int:
        """Write the mask of every key not yet cached; return how many were written."""
        self.directory.mkdir(parents=True, exist_ok=True)
        manifest = self._manifest()
        if manifest is None or manifest["fingerprint"] != self.fingerprint:
            for stale in self.directory.glob("*.png"):
                stale.unlink()
            self._write_manifest(complete=False, count=0)
        keys = list(keys)
        log.info("mask cache %s: writing masks of %d images (once per source)", self.directory, len(keys))
        started = time.perf_counter()
        from tqdm.auto import tqdm

        written = total = 0
        for key in tqdm(keys, desc=f"mask cache {self.directory.name}", unit="mask", mininterval=1.0):
            total += 1
            target = self.path(key)
            if target.exists():
                continue
            write_png_atomic(target, make_mask(key))
            written += 1
        self._write_manifest(complete=True, count=total)
        log.info("mask cache %s: %d written, %d reused, %.1f s", self.directory, written, total - written,
                 time.perf_counter() - started)
        return written
