"""Deterministic train/validation splits."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["group_kfold", "group_split", "read_name_list", "stratified_split"]


def stratified_split(
    keys: Sequence[str], strata: Sequence[int], val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Split indices into train/val keeping each stratum's share in both.

    The result depends only on the set of ``(key, stratum)`` pairs and ``seed``, not on
    their order. Each stratum with at least two members contributes at least one
    validation item when ``val_fraction > 0``.

    Returns:
        ``(train_indices, val_indices)``, each sorted by key.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
    strata = np.asarray(strata)
    train: list[int] = []
    val: list[int] = []
    for offset, stratum in enumerate(np.unique(strata)):
        members = sorted(np.flatnonzero(strata == stratum).tolist(), key=lambda i: keys[i])
        order = np.random.default_rng((seed, offset)).permutation(len(members))
        n_val = int(round(val_fraction * len(members)))
        if val_fraction > 0 and n_val == 0 and len(members) >= 2:
            n_val = 1
        val.extend(members[i] for i in order[:n_val])
        train.extend(members[i] for i in order[n_val:])
    return sorted(train, key=lambda i: keys[i]), sorted(val, key=lambda i: keys[i])


def group_split(
    keys: Sequence[str], groups: Sequence[str], val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Split indices so that every group (a car, a source scene) lies wholly on one side.

    ``round(val_fraction * n_groups)`` groups (at least one when there are two or more and
    ``val_fraction > 0``) go to validation, drawn by ``seed`` from the sorted group names.

    Returns:
        ``(train_indices, val_indices)``, each sorted by key.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
    names = sorted(set(groups))
    n_val = int(round(val_fraction * len(names)))
    if val_fraction > 0 and n_val == 0 and len(names) >= 2:
        n_val = 1
    order = np.random.default_rng(seed).permutation(len(names))
    val_groups = {names[i] for i in order[:n_val]}
    train = [i for i in range(len(keys)) if groups[i] not in val_groups]
    val = [i for i in range(len(keys)) if groups[i] in val_groups]
    return sorted(train, key=lambda i: keys[i]), sorted(val, key=lambda i: keys[i])


def group_kfold(
    keys: Sequence[str], groups: Sequence[str], folds: int, fold: int, seed: int, strata: Sequence[int] | None = None
) -> tuple[list[int], list[int]]:
    """Fold ``fold`` of ``folds`` for validation, the other folds for training.

    Every group (a car, a scene) lies wholly in one fold. Groups are dealt to the folds
    largest first (ties in an order drawn by ``seed``), each to the fold holding the fewest
    items of its stratum so far, so folds are balanced in items and, with ``strata`` (e.g.
    ship / no ship), in each stratum. The folds depend only on the ``(key, group,
    stratum)`` triples and ``seed``: ``fold=0..folds-1`` together validate every item once.

    Returns:
        ``(train_indices, val_indices)``, each sorted by key.
    """
    if folds < 2:
        raise ValueError(f"data.folds must be at least 2 (or null for one train/validation split), got {folds}")
    if not 0 <= fold < folds:
        raise ValueError(f"data.fold must be one of 0..{folds - 1} for data.folds={folds}, got {fold}")
    names = sorted(set(groups))
    if len(names) < folds:
        raise ValueError(f"data.folds={folds} needs at least {folds} split groups, the data has {len(names)}: "
                         f"lower data.folds, or add data")
    size: dict[str, int] = {}
    stratum: dict[str, int] = {}
    for index, group in enumerate(groups):
        size[group] = size.get(group, 0) + 1
        value = int(strata[index]) if strata is not None else 0
        stratum[group] = max(stratum.get(group, value), value)
    shuffled = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    shuffled.sort(key=lambda g: -size[g])  # stable: largest first, ties in the drawn order
    levels = sorted(set(stratum.values()))
    load = np.zeros((len(levels), folds), dtype=np.int64)
    assigned: dict[str, int] = {}
    for group in shuffled:
        row = levels.index(stratum[group])
        target = min(range(folds), key=lambda f: (load[row, f], load[:, f].sum(), f))
        assigned[group] = target
        load[row, target] += size[group]
    train = [i for i in range(len(keys)) if assigned[groups[i]] != fold]
    val = [i for i in range(len(keys)) if assigned[groups[i]] == fold]
    return sorted(train, key=lambda i: keys[i]), sorted(val, key=lambda i: keys[i])


def read_name_list(path: str | Path) -> list[str]:
    """Image names from a split file: a JSON list of strings (``.json``), or one name per
    line (any other suffix; blank lines and ``#`` comments skipped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file {path} does not exist (a JSON list, or one image name per line)")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Windows editors) is not a name
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err.reason}); expected a JSON list or one image name per line") from None
    if path.suffix.lower() == ".json":
        try:
            names = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err}); expected a list of image names") from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{path}: expected a JSON list of image names (strings)")
        return names
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
