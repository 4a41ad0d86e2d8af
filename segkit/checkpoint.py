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

import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from segkit.module import CHECKPOINT_FORMAT, SegmentationModule

__all__ = ["CHECKPOINT_FORMAT", "LoadedCheckpoint", "load_checkpoint", "read_checkpoint"]


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
    try:
        module = SegmentationModule(**hparams)
        module.load_state_dict(checkpoint["state_dict"])
    except (TypeError, ValueError, RuntimeError, KeyError) as err:
        raise ValueError(f"{path}: the checkpoint does not rebuild a SegmentationModule: {err}") from err
    module.eval()
    return LoadedCheckpoint(path=path, module=module, preprocessing=dict(section["preprocessing"]), data=section.get("data"))
