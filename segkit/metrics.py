"""Epoch-level Dice / IoU per class and mean, on top of torchmetrics.

True/false positives and false negatives are accumulated per class over the whole epoch
(torchmetrics ``MulticlassStatScores``, so they sum correctly across batches and DDP
ranks); then per class ``Dice = 2TP / (2TP + FP + FN)`` and ``IoU = TP / (TP + FP + FN)``.
A class that is neither in the targets nor in the predictions of the epoch has no score
(NaN) and is left out of the mean.

Binary (``num_classes == 1``) is scored as two classes {0: background, 1: foreground}:
the reported ``dice``/``iou`` are the foreground's. Multiclass means average over all
classes, background included unless ``include_background=False``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric
from torchmetrics.classification import MulticlassStatScores

__all__ = ["SegmentationMetrics", "logits_to_labels", "dice_iou_from_stats"]


def logits_to_labels(logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """``(B, C, H, W)`` logits → ``(B, H, W)`` long labels (sigmoid threshold when ``C == 1``)."""
    if logits.shape[1] == 1:
        return (torch.sigmoid(logits[:, 0].float()) > threshold).long()
    return logits.argmax(dim=1)


def dice_iou_from_stats(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class Dice and IoU from counts; NaN where a class has no pixels at all."""
    tp, fp, fn = tp.double(), fp.double(), fn.double()
    union = tp + fp + fn
    nan = torch.full_like(union, float("nan"))
    dice = torch.where(union > 0, 2 * tp / (2 * tp + fp + fn).clamp_min(1), nan)
    iou = torch.where(union > 0, tp / union.clamp_min(1), nan)
    return dice.float(), iou.float()


class SegmentationMetrics(Metric):
    """Dice and IoU per class and mean over an epoch.

    ``update(preds, target)``: ``(B, H, W)`` long labels each. ``compute()`` returns a dict
    ``{"dice", "iou", "dice/<class>", "iou/<class>"}`` of scalar tensors.

    Args:
        num_classes: model outputs; 1 = binary.
        class_names: one name per class (two for binary); defaults to ``class0``, ...
        ignore_index: target value left out.
        include_background: count class 0 in the multiclass mean.
    """

    full_state_update = False

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        ignore_index: int | None = None,
        include_background: bool = True,
    ) -> None:
        super().__init__()
        self.binary = num_classes == 1
        n_labels = 2 if self.binary else num_classes
        if class_names is None:
            class_names = ["background", "foreground"] if self.binary else [f"class{i}" for i in range(n_labels)]
        if len(class_names) != n_labels:
            raise ValueError(f"expected {n_labels} class names, got {len(class_names)}: {list(class_names)}")
        self.class_names = list(class_names)
        self.include_background = include_background
        self.stats = MulticlassStatScores(
            num_classes=n_labels, average="none", ignore_index=ignore_index, validate_args=False
        )

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self.stats.update(preds, target.long())

    def compute(self) -> dict[str, torch.Tensor]:
        tp, fp, _, fn, _ = self.stats.compute().unbind(dim=-1)
        dice, iou = dice_iou_from_stats(tp, fp, fn)
        if self.binary:
            mean_slice = slice(1, 2)
        else:
            mean_slice = slice(0 if self.include_background else 1, None)
        out = {"dice": torch.nanmean(dice[mean_slice]), "iou": torch.nanmean(iou[mean_slice])}
        for name, d, i in zip(self.class_names, dice, iou):
            out[f"dice/{name}"] = d
            out[f"iou/{name}"] = i
        return out

    def reset(self) -> None:
        super().reset()
        self.stats.reset()
