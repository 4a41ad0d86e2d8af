"""Pairing a dataset's images with their masks (or label files) by a key from the file name.

Every dataset made of two folders pairs them the same way, so each says only how a name
gives its key: the whole name (oil seeps), the stem (DOTA, folder), the stem less a prefix
(buildings) or a suffix (Carvana's ``_mask.gif``). Unpaired files are reported one line
each, in the words ``data.missing`` acts on; names that give no key, and two files with
one key, are problems.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from segkit.data.io import list_files

__all__ = ["files_by_key", "pair_by_key", "stem"]


def stem(path: Path) -> str:
    """The key of a file paired by its stem (``P0001`` of ``P0001.png``)."""
    return path.stem


def files_by_key(
    folder: Path,
    suffixes: Iterable[str],
    key: Callable[[Path], str | None] = lambda path: path.name,
    *,
    problems: list[str],
    what: str = "file",
    key_word: str = "key",
    bad_name: str = "",
) -> dict[str, Path]:
    """``{key: path}`` of the files in ``folder`` with one of ``suffixes`` (hidden files left out).

    A file whose name gives no key (``key`` returns ``None``) is reported as
    ``<path>: <bad_name>``; a second file with a key already taken as
    ``<path>: two <what>s with the <key_word> '<k>' (<first> too)``. Both go to ``problems``.
    """
    keyed: dict[str, Path] = {}
    for path in list_files(folder, tuple(suffixes)):
        k = key(path)
        if k is None:
            problems.append(f"{path}: {bad_name}")
        elif k in keyed:
            problems.append(f"{path}: two {what}s with the {key_word} {k!r} ({keyed[k].name} too)")
        else:
            keyed[k] = path
    return keyed


def pair_by_key(
    images: Mapping[str, Path],
    masks: Mapping[str, Path],
    *,
    mask_for: Callable[[str], object],
    image_for: Callable[[str], object],
    mask_word: str = "mask",
) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """Pair ``images[k]`` with ``masks[k]``.

    Returns:
        ``(pairs, missing)``: ``(key, image, mask)`` in the order of ``images``, and one line
        per file without its counterpart — ``<image>: image has no <mask_word> (expected <mask_for(k)>)``
        and ``<mask>: <mask_word> has no image <image_for(k)>`` (where it was looked for).
    """
    pairs = [(k, image, masks[k]) for k, image in images.items() if k in masks]
    missing = [f"{image}: image has no {mask_word} (expected {mask_for(k)})" for k, image in images.items() if k not in masks]
    missing += [f"{mask}: {mask_word} has no image {image_for(k)}" for k, mask in masks.items() if k not in images]
    return pairs, missing
