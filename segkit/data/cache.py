"""Where derived files live, and the fingerprints that say when they are out of date."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["default_cache_dir", "file_sha256", "stat_fingerprint"]

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
