"""Lightning callbacks and plugins segkit adds to every run."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO

from segkit.data.io import temporary_path

__all__ = ["AtomicCheckpointIO", "EpochSeeder", "MetricsHistory"]


class MetricsHistory(Callback):
    """Keeps every validation epoch's metrics (sanity checks excluded); saved in checkpoints,
    so a resumed run still knows its whole history."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        row.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})
        self.epochs = [r for r in self.epochs if r["epoch"] != row["epoch"]] + [row]

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epochs = list(state_dict["epochs"])


def epoch_seed(seed: int, stage: int, epoch: int) -> int:
    """A 31-bit seed that depends only on (run seed, stage, epoch)."""
    digest = hashlib.sha256(f"{seed}/{stage}/{epoch}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class EpochSeeder(Callback):
    """Reseeds torch, numpy and random at every epoch start from (seed, stage, epoch).

    All randomness of an epoch (sampling, augmentation, dropout, DataLoader worker seeds)
    is then a function of those three numbers, so a run resumed from a checkpoint replays
    exactly the epochs an uninterrupted run would have trained.
    """

    def __init__(self, seed: int, stage: int = 0) -> None:
        self.seed = seed
        self.stage = stage

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = epoch_seed(self.seed, self.stage, trainer.current_epoch)
        torch.manual_seed(value)
        np.random.seed(value)
        random.seed(value)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint under a temporary name and renames it into place, so a killed
    process never leaves a half-written ``last.ckpt`` that looks complete."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        path = Path(path)
        tmp = temporary_path(path)
        super().save_checkpoint(checkpoint, tmp, storage_options)
        os.replace(tmp, path)
