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

__all__ = ["AtomicCheckpointIO", "EpochLog", "EpochSeeder", "MetricsHistory", "ValidationImages", "console_is_terminal"]

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


class ValidationImages(Callback):
    """A few validation images with their ground truth and the model's prediction, as
    overlays, in the run's TensorBoard (and W&B / MLflow where those log): one picture of
    ``num_images`` rows of ``image | ground truth | prediction``, under ``val/images``.

    The same images every time (the first of the validation set, which is not shuffled), so
    the pictures show the model learning them; logged at the first epoch, every
    ``every_n_epochs`` after it and at the last. The prediction is one more forward pass of
    those images in evaluation mode: nothing random is drawn, so a resumed run replays the
    same epochs. Each tile is shrunk to ``max_side`` pixels.
    """

    def __init__(self, every_n_epochs: int = 5, num_images: int = 4, max_side: int = 256) -> None:
        if every_n_epochs < 1 or num_images < 1 or max_side < 16:
            raise ValueError("callbacks.validation_images: every_n_epochs and num_images must be >= 1, max_side >= 16 "
                             "(callbacks.validation_images=null turns the images off)")
        self.every_n_epochs = every_n_epochs
        self.num_images = num_images
        self.max_side = max_side
        self._rows: list[np.ndarray] = []

    def _due(self, trainer: L.Trainer) -> bool:
        if trainer.sanity_checking or not trainer.is_global_zero or not trainer.loggers:
            return False
        epoch = trainer.current_epoch
        return epoch % self.every_n_epochs == 0 or epoch == (trainer.max_epochs or 0) - 1

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._rows = []

    @torch.no_grad()
    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if len(self._rows) >= self.num_images or not self._due(trainer):
            return
        if getattr(pl_module, "task", "segmentation") != "segmentation" or "mask" not in batch:
            return  # a classification stage: nothing to draw
        from segkit.data.datasets import label_count
        from segkit.visualize import _shrink, display_rgb, overlay

        take = self.num_images - len(self._rows)
        images = batch["image"][:take]
        labels = pl_module.predict_labels(pl_module(images)).cpu().numpy()
        masks = batch["mask"][:take].cpu().numpy()
        ignore = pl_module.hparams.get("ignore_index")
        num_labels = label_count(pl_module.hparams.num_classes)
        names = pl_module.hparams.get("class_names")
        for image, mask, prediction in zip(images.float().permute(0, 2, 3, 1).cpu().numpy(), masks, labels):
            if ignore is not None:
                mask = np.where(mask == ignore, 0, mask)
            tiles = [display_rgb(image), overlay(image, mask, num_labels, class_names=names),
                     overlay(image, prediction, num_labels)]
            self._rows.append(np.concatenate([_shrink(t, self.max_side) for t in tiles], axis=1))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._rows or not self._due(trainer):
            return
        width = max(r.shape[1] for r in self._rows)
        picture = np.concatenate([np.pad(r, ((0, 2), (0, width - r.shape[1]), (0, 0))) for r in self._rows], axis=0)
        self._rows = []
        step, key = trainer.current_epoch, "val/images"
        for logger in trainer.loggers:
            kind = type(logger).__name__
            if kind == "TensorBoardLogger":
                logger.experiment.add_image(key, picture, global_step=step, dataformats="HWC")
            elif kind == "WandbLogger":
                logger.log_image(key=key, images=[picture], step=trainer.global_step,
                                 caption=[f"epoch {step + 1}: image | ground truth | prediction"])
            elif kind == "MLFlowLogger" and hasattr(logger.experiment, "log_image"):
                logger.experiment.log_image(logger.run_id, picture, key=key.replace("/", "_"), step=step)


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
