"""Reading segkit checkpoints back: the network, and the preprocessing it was trained with.

``segkit-train`` checkpoints are Lightning checkpoints with one extra section,
``checkpoint["segkit"]``, written by :meth:`SegmentationModule.on_save_checkpoint`::

    {"format": 1,
     "preprocessing": {in_channels, image_dtype, image_size, size_multiple, normalize,
                       num_classes, class_names, threshold, ignore_index},
     "data": {"_target_": <datamodule class>, **its arguments}}

so prediction, evaluation and export need the checkpoint file alone: no training config
to repeat, no dataset statistics to recompute.
"""

from __future__ import annotations

import glob
import hashlib
import os
import pickle
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from segkit.module import CHECKPOINT_FORMAT, SegmentationModule

__all__ = [
    "CHECKPOINT_FORMAT", "LoadedCheckpoint", "checkpoint_paths", "load_checkpoint", "load_checkpoints", "read_checkpoint",
]


@dataclass
class LoadedCheckpoint:
    """A trained module (eval mode, on CPU) with what it needs to be applied to new images."""

    path: Path
    module: SegmentationModule
    preprocessing: dict[str, Any]
    data: dict[str, Any] | None

    @property
    def num_classes(self) -> int:
        return int(self.preprocessing["num_classes"])

    @property
    def class_names(self) -> list[str]:
        return list(self.preprocessing["class_names"])


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's contents, loaded as data only (``torch.load(weights_only=True)``);
    ``ValueError`` naming the file when it holds pickled objects other than tensors and
    plain data (code would run on an ordinary load), or is no checkpoint at all."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint file not found")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a PyTorch checkpoint (not a torch.save zip archive)")
    try:
        # weights_only: a checkpoint is data; refuse anything that would run code on load
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path}: refused: the checkpoint holds objects other than tensors and plain data "
            f"(weights-only loading failed: {str(err).splitlines()[0]})"
        ) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: cannot read the checkpoint ({err})") from err
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path}: not a segkit checkpoint (holds a {type(checkpoint).__name__}, not a dict)")
    return checkpoint


def load_checkpoint(path: str | os.PathLike) -> LoadedCheckpoint:
    """Rebuild the trained network and its preprocessing from a ``segkit-train`` checkpoint.

    Raises ``FileNotFoundError`` / ``ValueError`` naming the file when it is missing, not a
    checkpoint, or a checkpoint some other program wrote.
    """
    path = Path(path)
    checkpoint = read_checkpoint(path)
    section = checkpoint.get("segkit")
    if not isinstance(section, dict) or "preprocessing" not in section or "state_dict" not in checkpoint:
        keys = ", ".join(sorted(map(str, checkpoint))[:8]) or "none"
        raise ValueError(
            f"{path}: not a segkit checkpoint (no 'segkit' section; top-level keys: {keys}). "
            "Use a checkpoint written by segkit-train (checkpoints/best.ckpt or last.ckpt of a run)"
        )
    if section.get("format", 0) > CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path}: checkpoint format {section['format']} is newer than this segkit reads "
            f"({CHECKPOINT_FORMAT}); upgrade segkit"
        )
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    if isinstance(hparams.get("model"), dict) and hparams["model"].get("encoder_weights") is not None:
        # the trained weights are in the state dict: no pretrained download (or file) needed to rebuild
        hparams["model"] = {**hparams["model"], "encoder_weights": None}
    try:
        module = SegmentationModule(**hparams)
        module.load_state_dict(checkpoint["state_dict"])
    except (TypeError, ValueError, RuntimeError, KeyError) as err:
        raise ValueError(f"{path}: the checkpoint does not rebuild a SegmentationModule: {err}") from err
    module.eval()
    return LoadedCheckpoint(path=path, module=module, preprocessing=dict(section["preprocessing"]), data=section.get("data"))


def _run_checkpoint(run: Path) -> Path | None:
    """A run directory's best checkpoint (its last one when it kept no best)."""
    for name in ("best.ckpt", "last.ckpt"):
        if (run / "checkpoints" / name).is_file():
            return run / "checkpoints" / name
    return None


def checkpoint_paths(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The checkpoint files ``ckpt=`` names: a file; a glob pattern (``'sweep/*/checkpoints/best.ckpt'``);
    a run directory (its ``checkpoints/best.ckpt``, else ``last.ckpt``); a sweep directory (that
    of every run in it, e.g. the folds of ``segkit-train -m data.fold=0,1,2,3,4``); or a list of
    these. ``FileNotFoundError`` naming what matched nothing; ``ValueError`` for a file named twice
    or a sweep run without a checkpoint (a failed run would otherwise drop out unseen)."""
    specs = [spec] if isinstance(spec, (str, os.PathLike, int)) else list(spec)  # ckpt=0: Hydra reads a sweep's run 0 as int
    if not specs:
        raise ValueError("ckpt=[]: name at least one checkpoint")
    paths: list[Path] = []
    for one in map(str, specs):
        path = Path(one)
        if path.is_file():
            paths.append(path)
        elif path.is_dir():
            own = _run_checkpoint(path)
            if own is not None:
                _refuse_live(path, one)
                paths.append(own)
                continue
            runs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith((".", "_")) and
                          ((p / "checkpoints").is_dir() or (p / ".hydra").is_dir()))
            if not runs:
                raise FileNotFoundError(f"ckpt={one}: the folder is neither a run (no checkpoints/best.ckpt or "
                                        "last.ckpt) nor a sweep of runs")
            missing = [str(r) for r in runs if _run_checkpoint(r) is None]
            if missing:
                raise ValueError(f"ckpt={one}: run(s) {', '.join(missing)} have no checkpoint (failed or still "
                                 "running?): finish them, or name the checkpoints to use (ckpt=[a.ckpt,b.ckpt])")
            for run in runs:
                _refuse_live(run, one)
            paths.extend(_run_checkpoint(r) for r in runs)
        elif any(c in one for c in "*?["):
            matched = sorted(Path(p) for p in glob.glob(one, recursive=True) if Path(p).is_file())
            if not matched:
                raise FileNotFoundError(f"ckpt={one}: the pattern matches no file")
            paths.extend(matched)
        else:
            raise FileNotFoundError(f"{path}: checkpoint file not found")
    seen: set[Path] = set()
    runs: dict[Path, Path] = {}
    digests: dict[str, Path] = {}
    for path in paths:
        resolved = path.resolve()
        if resolved in seen:
            raise ValueError(f"ckpt: {path} is named twice (it would count double in the average)")
        seen.add(resolved)
        if resolved.parent.name == "checkpoints":  # best.ckpt and last.ckpt of one run: one model, twice
            run = resolved.parent.parent
            if run in runs:
                raise ValueError(f"ckpt: {runs[run]} and {path} are two checkpoints of one run ({run}): an ensemble "
                                 "averages different models; name one of them")
            runs[run] = path
    if len(paths) > 1:
        for path in paths:  # a copy of a checkpoint under another name
            with path.open("rb") as handle:
                digest = hashlib.file_digest(handle, "sha256").hexdigest()
            if digest in digests:
                raise ValueError(f"ckpt: {digests[digest]} and {path} hold the same bytes (a copy?): it would count "
                                 "double in the average; name it once")
            digests[digest] = path
    return paths


def _refuse_live(run: Path, spec: str) -> None:
    """A run still training, or one stopped before its end (interrupted, killed by a time limit,
    failed), has a checkpoint of its first epochs only: not one to use unseen. A finished run
    is one with ``metrics.json`` (written by ``segkit-train`` after its last epoch)."""
    from segkit.rundir import run_holder

    holder = run_holder(run)
    if holder is not None:
        raise ValueError(f"ckpt={spec}: {run} is still training ({holder}): wait for it to finish, or name its "
                         f"checkpoint file to use it as it is now")
    if (run / "config.yaml").is_file() and not (run / "metrics.json").is_file():
        raise ValueError(f"ckpt={spec}: {run} stopped before the end of its training (it has checkpoints but no "
                         f"metrics.json: interrupted, killed by a time limit, or failed; its train.log says how it "
                         f"ended): finish it with segkit-train resume={run}, or name its checkpoint file to use it "
                         f"as it is now")


def load_checkpoints(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[LoadedCheckpoint]:
    """:func:`load_checkpoint` of every file :func:`checkpoint_paths` finds."""
    return [load_checkpoint(path) for path in checkpoint_paths(spec)]
