"""SegmentationModule: model + loss + metrics, binary and multiclass through one code path."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryAccuracy, BinaryF1Score

from segkit.losses import build_loss
from segkit.metrics import SegmentationMetrics, logits_to_labels
from segkit.models import build_model

__all__ = ["CHECKPOINT_FORMAT", "NonFiniteLossError", "SegmentationModule"]

#: version of the ``segkit`` section every checkpoint carries (read by :mod:`segkit.checkpoint`)
CHECKPOINT_FORMAT = 1

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the message names the step, batch and images."""


_CAUSES = ("Usual causes: a learning rate too high (optimizer.lr), exploding gradients (trainer.gradient_clip_val=1.0), "
           "fp16 overflow (trainer.precision=bf16-mixed or 32-true), or broken images/masks in the batch above "
           "(segkit-prepare check=true). ")


class _PendingCheck:
    """One training step's "was the loss finite?", read later without stalling the device.

    The flag is computed on the device right after the forward pass; under DDP it is summed
    over the ranks with an asynchronous all-reduce (queued before backward on every rank, so
    the collectives stay in one order and all ranks read the same verdict at the same step).
    On CUDA it then travels to page-locked host memory without blocking, behind a CUDA event;
    :meth:`bad` waits for that event only, i.e. for this step's forward pass and not for the
    backward and optimizer step queued after it.
    """

    def __init__(self, loss: torch.Tensor, batch: Mapping[str, Any], batch_idx: int, step: int, epoch: int,
                 world_size: int) -> None:
        self.loss = loss.detach()
        self.names = list(batch.get("name") or [])
        self.batch_idx, self.step, self.epoch = batch_idx, step, epoch
        flag = (~torch.isfinite(self.loss)).any().to(torch.int32)
        if world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(flag, op=dist.ReduceOp.SUM, async_op=True).wait()  # on CUDA: the stream waits, not the host
        self._event = None
        if flag.is_cuda:
            self.host = torch.empty((), dtype=torch.int32, pin_memory=True)
            self.host.copy_(flag, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self.host = flag

    def bad(self) -> bool:
        if self._event is not None:
            self._event.synchronize()
        return bool(self.host.numpy())


class SegmentationModule(L.LightningModule):
    """Trains a segmentation network on ``{"image": B×C×H×W float, "mask": B×H×W long}`` batches.

    All arguments are plain data (saved as hyperparameters), so a checkpoint alone rebuilds
    the module: ``SegmentationModule.load_from_checkpoint(path)``.

    Args:
        model: ``{"name": <registered model>, **options}`` (see ``conf/model``).
        loss: ``{"name": <registered loss>, **options}`` (see ``conf/loss``).
        optimizer: Hydra-style ``{"_target_": "torch.optim.AdamW", "lr": ..., ...}``.
        scheduler: ``{"scheduler": {"_target_": ...}, "interval": "epoch", "monitor": ...}``
            or ``None``; the inner ``scheduler`` gets the optimizer.
        num_classes: 1 = binary (sigmoid), > 1 = softmax over classes.
        in_channels: image channels.
        class_names: names used in per-class metric keys (two for binary).
        threshold: probability threshold for binary predictions.
        ignore_index: mask value excluded from loss and metrics.
        include_background: count class 0 in multiclass means (default: foreground classes only).
        metric_aggregation: ``"dataset"`` (pixels of the whole epoch) or ``"image"``
            (mean of per-image scores, Kaggle's Carvana metric).
        channels_last: keep weights and inputs in channels-last memory format
            (faster convolutions on CPU and on tensor-core GPUs).
        task: ``"segmentation"``, or ``"classification"`` — image-level "has foreground?"
            trained with BCE on the encoder's classification head (staged pretraining);
            logs ``val/cls_loss``, ``val/acc``, ``val/f1``.
        nonfinite_loss: a NaN/inf training loss ``"stop"``s training with
            :class:`NonFiniteLossError` before any checkpoint holds the weights it touched:
            the check is read one step late (or before validation or a checkpoint), so it
            never stalls the GPU; or ``"skip"``s the batch (no backward, no optimizer step;
            single process only; one host sync per step, since the decision comes before
            backward) — up to ``max_consecutive_skips`` in a row, then it stops.
    """

    def __init__(
        self,
        model: Mapping[str, Any],
        loss: Mapping[str, Any],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None = None,
        num_classes: int = 1,
        in_channels: int = 3,
        class_names: Sequence[str] | None = None,
        threshold: float = 0.5,
        ignore_index: int | None = None,
        include_background: bool = False,
        metric_aggregation: str = "dataset",
        channels_last: bool = True,
        task: str = "segmentation",
        nonfinite_loss: str = "stop",
        max_consecutive_skips: int = 10,
    ) -> None:
        super().__init__()
        if task not in ("segmentation", "classification"):
            raise ValueError(f"task must be 'segmentation' or 'classification', got {task!r}")
        if nonfinite_loss not in ("stop", "skip"):
            raise ValueError(f"module.nonfinite_loss must be 'stop' or 'skip', got {nonfinite_loss!r}")
        self._consecutive_skips = 0
        self.skipped_batches = 0
        self._pending_check: _PendingCheck | None = None
        self._checks_paused = False
        self.task = task
        self.save_hyperparameters()
        model_params = dict(model)
        self.net = build_model(model_params.pop("name"), in_channels=in_channels, num_classes=num_classes, **model_params)
        loss_params = dict(loss)
        self.loss_fn = build_loss(loss_params.pop("name"), num_classes=num_classes, ignore_index=ignore_index, **loss_params)
        self.val_metrics = SegmentationMetrics(
            num_classes,
            class_names=class_names,
            ignore_index=ignore_index,
            include_background=include_background,
            aggregation=metric_aggregation,
        )
        # plain (B)CE, logged as a monitorable metric whatever the training loss is
        self.val_ce = build_loss("weighted_ce", num_classes=num_classes, weights=None, ignore_index=ignore_index)
        self.val_ce_name = "val/bce" if num_classes == 1 else "val/ce"
        self.channels_last = channels_last
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        if task == "classification" and not self.net.has_classification_head:
            raise ValueError(
                f"task 'classification' needs a classification head on the encoder: set "
                f"model.classification_head=true (smp encoders; model {model['name']!r})"
            )
        for _, part in self.net.unused_parts(task):  # DDP's reducer expects a gradient for every trainable parameter
            part.requires_grad_(False)
        if task == "classification":
            # the image-level metrics of the classification stage only: a segmentation model's
            # summary (and its checkpoints) carry no metric it never computes
            self.val_accuracy = BinaryAccuracy()
            self.val_f1 = BinaryF1Score()
        # validation losses as torchmetrics means (sums of value x images, and of images):
        # exact under DDP when ranks validate different numbers of images, where Lightning's
        # own sync_dist mean divides by a per-rank integer batch count
        self.val_loss_mean = MeanMetric()
        self.val_ce_mean = MeanMetric()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` images → ``(B, num_classes, H, W)`` logits."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.net(images)

    def predict_labels(self, logits: torch.Tensor) -> torch.Tensor:
        return logits_to_labels(logits, self.hparams.threshold)

    def image_labels(self, masks: torch.Tensor) -> torch.Tensor:
        """``(B, H, W)`` masks → ``(B,)`` float: 1 where any pixel is foreground (ignore_index aside)."""
        foreground = masks > 0
        if self.hparams.ignore_index is not None:
            foreground &= masks != self.hparams.ignore_index
        return foreground.flatten(1).any(dim=1).float()

    @staticmethod
    def _images(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        images = batch["image"]
        if not images.is_floating_point() or images.ndim != 4:
            raise TypeError(
                f"the batch holds {images.dtype} images of shape {tuple(images.shape)}, not normalised (B, C, H, W) "
                "floats: segkit loaders hand over images as decoded; the Trainer normalises them when given "
                "the datamodule (trainer.fit(module, datamodule=dm)), or call dm.prepare_batch(batch)"
            )
        return images

    def _classification_loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images = self._images(batch)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        logits = self.net.classify(images)[:, 0].float()
        labels = self.image_labels(batch["mask"])
        return F.binary_cross_entropy_with_logits(logits, labels), logits, labels

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self._settle_nonfinite_check()  # the previous step's, read without waiting for this one
        if self.task == "classification":
            loss = self._classification_loss(batch)[0]
        else:
            loss = self.loss_fn(self(self._images(batch)), batch["mask"])
        if self._checks_paused:
            pass  # the LR finder drives the loss to diverge on purpose
        elif self.hparams.nonfinite_loss == "stop":
            self._pending_check = _PendingCheck(loss, batch, batch_idx, self.global_step, self.current_epoch,
                                                self._world_size())
        elif self._nonfinite(loss, batch, batch_idx):
            return None  # Lightning skips backward and the optimizer step
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch["image"]),
                 sync_dist=True)
        return loss

    def on_fit_start(self) -> None:
        if self.hparams.nonfinite_loss == "skip" and self.trainer.world_size > 1:
            raise ValueError(
                "module.nonfinite_loss=skip needs a single process: under DDP a skipped backward desynchronises "
                "the ranks. Use module.nonfinite_loss=stop (the default) and resume= after fixing the cause"
            )

    def _world_size(self) -> int:
        return self.trainer.world_size if self._trainer is not None else 1

    def _settle_nonfinite_check(self) -> None:
        """Read the pending ``stop``-mode check (the last training step's loss); raises
        :class:`NonFiniteLossError` when it was not finite. Called at the next step, before
        validation, before a checkpoint is written and at the end of fit."""
        pending, self._pending_check = self._pending_check, None
        if pending is not None and pending.bad():
            raise NonFiniteLossError(
                self._where(pending.loss, pending.names, pending.step, pending.epoch, pending.batch_idx)
                + ". Training stopped before any checkpoint held the weights that step changed; "
                + f"{self._last_good_checkpoint()}. " + _CAUSES + "module.nonfinite_loss=skip skips such batches instead."
            )

    @staticmethod
    def _where(loss: torch.Tensor, names: Sequence[Any], step: int, epoch: int, batch_idx: int) -> str:
        shown = (", ".join(map(str, names[:8])) + (" ..." if len(names) > 8 else "")) if names else "(not named in the batch)"
        return (f"non-finite training loss ({float(loss.float().flatten()[0])}) at global step "
                f"{step} (epoch {epoch}, batch {batch_idx} of the epoch); images: {shown}")

    def _nonfinite(self, loss: torch.Tensor, batch: Mapping[str, Any], batch_idx: int) -> bool:
        """``skip`` mode: ``True`` when this batch is to be skipped; raises
        :class:`NonFiniteLossError` after ``max_consecutive_skips`` in a row. One scalar read
        per step, since the decision must come before backward (single process only)."""
        if bool(torch.isfinite(loss.detach()).all()):
            self._consecutive_skips = 0
            return False
        where = self._where(loss.detach(), list(batch.get("name") or []), self.global_step, self.current_epoch, batch_idx)
        if self._consecutive_skips < self.hparams.max_consecutive_skips:
            self._consecutive_skips += 1
            self.skipped_batches += 1
            log.warning("%s: batch skipped (%d in a row, %d in all)", where, self._consecutive_skips, self.skipped_batches)
            return True
        raise NonFiniteLossError(
            where + (f" — {self._consecutive_skips} batches in a row skipped before it" if self._consecutive_skips else "")
            + f". Training stopped before this step changed the weights; {self._last_good_checkpoint()}. " + _CAUSES
            + "module.max_consecutive_skips sets how many in a row are skipped."
        )

    def on_validation_start(self) -> None:
        self._settle_nonfinite_check()

    @contextlib.contextmanager
    def nonfinite_checks_paused(self) -> Iterator[None]:
        """No non-finite loss check inside (the LR finder raises the LR until the loss diverges)."""
        self._pending_check, self._checks_paused = None, True
        try:
            yield
        finally:
            self._pending_check, self._checks_paused = None, False

    def on_train_end(self) -> None:
        self._settle_nonfinite_check()

    def _last_good_checkpoint(self) -> str:
        for callback in getattr(self.trainer, "checkpoint_callbacks", []):
            dirpath = getattr(callback, "dirpath", None)
            if dirpath and (Path(dirpath) / "last.ckpt").is_file():
                return f"the last good checkpoint is {Path(dirpath) / 'last.ckpt'} (continue with resume=<run dir>)"
        return "no checkpoint was written yet (it failed before the first validation)"

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        stand_in = batch.get("stand_in")
        if isinstance(stand_in, torch.Tensor) and bool(stand_in.any()):
            # data.on_bad_file=skip put the next readable image where an unreadable one was: that
            # image is scored in its own place, so here it is left out rather than counted twice
            keep = ~stand_in.to(torch.bool)
            if not bool(keep.any()):
                return
            batch = {key: value[keep] if isinstance(value, torch.Tensor) and len(value) == len(keep) else value
                     for key, value in batch.items()}
        if self.task == "classification":
            loss, logits, labels = self._classification_loss(batch)
            self.val_loss_mean.update(loss, weight=len(labels))
            self.log("val/cls_loss", self.val_loss_mean, on_epoch=True, prog_bar=True)
            self.val_accuracy.update(torch.sigmoid(logits), labels.long())
            self.val_f1.update(torch.sigmoid(logits), labels.long())
            return
        logits = self(self._images(batch))
        loss = self.loss_fn(logits, batch["mask"])
        self.val_loss_mean.update(loss, weight=len(logits))
        self.log("val/loss", self.val_loss_mean, on_epoch=True, prog_bar=True)
        self.val_ce_mean.update(self.val_ce(logits, batch["mask"]), weight=len(logits))
        self.log(self.val_ce_name, self.val_ce_mean, on_epoch=True)
        self.val_metrics.update(self.predict_labels(logits), batch["mask"])

    def on_validation_epoch_end(self) -> None:
        if self.task == "classification":
            # torchmetrics' compute() has already summed the ranks: sync_dist only averages equal values
            self.log_dict({"val/acc": self.val_accuracy.compute(), "val/f1": self.val_f1.compute()}, prog_bar=True, sync_dist=True)
            self.val_accuracy.reset()
            self.val_f1.reset()
            return
        scores = {f"val/{k}": v for k, v in self.val_metrics.compute().items()}
        self.log("val/dice", scores.pop("val/dice"), prog_bar=True, sync_dist=True)
        self.log_dict(scores, sync_dist=True)
        self.val_metrics.reset()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store what prediction needs besides the weights (see :mod:`segkit.checkpoint`)."""
        self._settle_nonfinite_check()  # no checkpoint holds weights a non-finite step touched
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        preprocessing: dict[str, Any] = {
            "dataset": None, "in_channels": self.hparams.in_channels, "image_dtype": None,
            "image_size": None, "pad_multiple": None, "normalize": None,
        }
        data = None
        if datamodule is not None and hasattr(datamodule, "preprocessing"):
            preprocessing.update(datamodule.preprocessing())
            data = datamodule.data_config()
        preprocessing.update(
            size_multiple=self.net.size_multiple,
            num_classes=self.hparams.num_classes,
            class_names=list(self.val_metrics.class_names),
            threshold=self.hparams.threshold,
            ignore_index=self.hparams.ignore_index,
        )
        checkpoint["segkit"] = {"format": CHECKPOINT_FORMAT, "preprocessing": preprocessing, "data": data}

    def configure_optimizers(self) -> Any:
        optimizer = instantiate(dict(self.hparams.optimizer), params=self.parameters())
        scheduler_cfg = self.hparams.scheduler
        if not scheduler_cfg:
            return optimizer
        scheduler_cfg = dict(scheduler_cfg)
        inner = dict(scheduler_cfg.pop("scheduler"))
        extra: dict[str, Any] = {}
        if inner.get("total_steps") == "auto":  # scheduler=poly: the run's optimizer steps, from the trainer
            inner["total_steps"] = float(self.trainer.estimated_stepping_batches)
        if inner.pop("follow_max_time", False):  # and the time budget, when trainer.max_time sets one
            from lightning.pytorch.callbacks import Timer

            extra["timer"] = next((c for c in self.trainer.callbacks if isinstance(c, Timer)), None)
        scheduler = instantiate(inner, optimizer=optimizer, **extra)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, **scheduler_cfg}}
