"""Lightning callbacks and plugins segkit adds to every run."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO

from segkit.data.io import temporary_path

__all__ = ["AtomicCheckpointIO", "EpochLog", "EpochSeeder", "MetricsHistory", "console_is_terminal"]

log = logging.getLogger("segkit.train")


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


def console_is_terminal() -> bool:
    """Whether the console (stdout, where Hydra's console log and the progress bar go) is a terminal."""
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


class EpochLog(Callback):
    """One line per epoch — epoch, train loss, the validation metrics, the best so far, the
    epoch's time and the time left — in ``train.log``, and on the console when it is not a
    terminal (a run under SLURM, ``nohup`` or piped to a file), where no progress bar is
    drawn. On a terminal the progress bar shows the same and the console is left to it."""

    def __init__(self, monitor: str, mode: str, stage: str = "") -> None:
        self.monitor, self.mode, self.stage = monitor, mode, stage
        self.best: float | None = None
        self.started = 0.0
        self.durations: list[float] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        seconds = time.perf_counter() - self.started
        self.durations.append(seconds)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v is not None and v.numel() == 1}
        epoch, total = trainer.current_epoch + 1, trainer.max_epochs
        parts = [f"{self.stage}epoch {epoch}" + (f"/{total}" if total and total > 0 else "")]
        parts += [f"{key.removesuffix('_epoch')} {value:.4f}" for key, value in metrics.items()
                  if key.startswith("train/") and key.endswith("_epoch")]
        # the validation means (per-class scores are in metrics.csv / TensorBoard), and the monitored one
        parts += [f"{key} {value:.4f}" for key, value in sorted(metrics.items())
                  if key.startswith("val/") and (key.count("/") == 1 or key == self.monitor)]
        value = metrics.get(self.monitor)
        if value is not None and math.isfinite(value):
            better = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
            if better:
                self.best = value
            parts.append(f"best {self.monitor} {self.best:.4f}" + (" (this epoch)" if better else ""))
        parts.append(f"{seconds:.1f} s")
        if total and total > 0 and epoch < total:
            recent = self.durations[-5:]
            parts.append(f"ETA {_duration(sum(recent) / len(recent) * (total - epoch))}")
        line = " | ".join(parts)
        # straight to the run's handlers (Hydra's console and train.log, on the root logger), so
        # another library's logging set-up cannot silence it; on a terminal the bar has the
        # console and the line goes to the log files only
        root = logging.getLogger().handlers
        if not root:
            log.info("%s", line)  # library use without a logging set-up
        terminal = console_is_terminal()
        handlers = [h for h in root if not terminal or isinstance(h, logging.FileHandler)]
        record = logging.LogRecord(log.name, logging.INFO, __file__, 0, line, None, None)
        for handler in handlers:
            if record.levelno >= handler.level:
                handler.handle(record)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict.get("best")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


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
