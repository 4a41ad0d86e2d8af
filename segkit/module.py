"""SegmentationModule: model + loss + metrics, binary and multiclass through one code path."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
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
            :class:`NonFiniteLossError` before the weights are touched (checkpoints keep the
            last good state), or ``"skip"``s the batch (no backward, no optimizer step;
            single process only) — up to ``max_consecutive_skips`` in a row, then it stops.
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
        if self.task == "classification":
            loss = self._classification_loss(batch)[0]
        else:
            loss = self.loss_fn(self(self._images(batch)), batch["mask"])
        if self._nonfinite(loss, batch, batch_idx):
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

    def _nonfinite(self, loss: torch.Tensor, batch: Mapping[str, Any], batch_idx: int) -> bool:
        """``True`` when this batch is to be skipped; raises :class:`NonFiniteLossError` to stop.
        The check is one scalar read per step (the progress bar reads the loss anyway); under
        DDP the ranks decide together, so all stop or none."""
        bad = not bool(torch.isfinite(loss.detach()).all())
        if self._trainer is not None and self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        if not bad:
            self._consecutive_skips = 0
            return False
        names = list(batch.get("name") or [])
        shown = (", ".join(map(str, names[:8])) + (" ..." if len(names) > 8 else "")) if names else "(not named in the batch)"
        where = (f"non-finite training loss ({float(loss.detach().float().flatten()[0])}) at global step "
                 f"{self.global_step} (epoch {self.current_epoch}, batch {batch_idx} of the epoch); images: {shown}")
        if self.hparams.nonfinite_loss == "skip" and self._consecutive_skips < self.hparams.max_consecutive_skips:
            self._consecutive_skips += 1
            self.skipped_batches += 1
            log.warning("%s: batch skipped (%d in a row, %d in all)", where, self._consecutive_skips, self.skipped_batches)
            return True
        raise NonFiniteLossError(
            where + (f" — {self._consecutive_skips} batches in a row skipped before it" if self._consecutive_skips else "")
            + f". Training stopped before this step changed the weights; {self._last_good_checkpoint()}. "
            "Usual causes: a learning rate too high (optimizer.lr), exploding gradients (trainer.gradient_clip_val=1.0), "
            "fp16 overflow (trainer.precision=bf16-mixed or 32-true), or broken images/masks in the batch above "
            "(segkit-prepare check=true). "
            + ("module.nonfinite_loss=skip skips such batches instead." if self.hparams.nonfinite_loss == "stop"
               else "module.max_consecutive_skips sets how many in a row are skipped.")
        )

    def _last_good_checkpoint(self) -> str:
        for callback in getattr(self.trainer, "checkpoint_callbacks", []):
            dirpath = getattr(callback, "dirpath", None)
            if dirpath and (Path(dirpath) / "last.ckpt").is_file():
                return f"the last good checkpoint is {Path(dirpath) / 'last.ckpt'} (continue with resume=<run dir>)"
        return "no checkpoint was written yet (it failed before the first validation)"

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
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
