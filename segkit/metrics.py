"""Dice and IoU per class and their mean, over an epoch, on top of torchmetrics.

:class:`SegmentationMetrics` accumulates, as torchmetrics states summed across batches
and DDP ranks, a ``K x K`` confusion matrix (rows: target, columns: prediction) and the
sums of per-image scores. From them:

- ``aggregation="dataset"`` (default): per class ``Dice = 2TP / (2TP + FP + FN)`` and
  ``IoU = TP / (TP + FP + FN)`` over all pixels of the epoch. A class present in some
  batches but not others simply adds its counts. A class that is in no target and no
  prediction of the whole epoch has no score (NaN) and is left out of the mean.
- ``aggregation="image"``: the score of each image, then the mean over images — the
  Kaggle Carvana metric. Binary: an image with no foreground in the target and none
  predicted scores 1 (Kaggle's convention for empty masks), so every image counts.
  Multiclass: an image where a class is neither in the target nor predicted is left out
  of that class's mean (scoring it 1 would lift the mean with every image a class is
  absent from: 0.665 instead of 0.498 in a 4-class case where one class never occurs);
  a class scored on no image has no score (NaN) and is left out of the mean over classes.

The reported ``dice`` / ``iou`` are the mean over the foreground classes: class 1 for
binary (``num_classes == 1``, scored as {0: background, 1: foreground}), classes
``1..C-1`` for multiclass — all classes with ``include_background=True``. Pixels whose
target is ``ignore_index`` count nowhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric

__all__ = ["SegmentationMetrics", "confusion_matrices", "dice_iou_from_confusion", "logits_to_labels"]


def logits_to_labels(logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """``(B, C, H, W)`` logits → ``(B, H, W)`` long labels (sigmoid threshold when ``C == 1``)."""
    if logits.shape[1] == 1:
        return (torch.sigmoid(logits[:, 0].float()) > threshold).long()
    return logits.argmax(dim=1)


def confusion_matrices(
    preds: torch.Tensor, target: torch.Tensor, n_labels: int, ignore_index: int | None = None
) -> torch.Tensor:
    """Per-image confusion matrices ``(B, K, K)`` (rows: target, columns: prediction).

    Raises ``ValueError`` for a target or prediction outside ``0..K-1`` (``ignore_index``
    aside). On CUDA see :func:`confusion_and_outside`, which counts them without a host sync.
    """
    counts, outside = confusion_and_outside(preds, target, n_labels, ignore_index)
    if preds.is_cuda:
        outside = int(outside)  # one sync, for a direct caller; the metric defers it to compute()
    if outside:
        _raise_outside(preds, target, n_labels, ignore_index)
    return counts


def confusion_and_outside(
    preds: torch.Tensor, target: torch.Tensor, n_labels: int, ignore_index: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, K, K)`` confusion matrices and the number of (non-ignored) pixels whose target or
    prediction lies outside ``0..K-1``, left out of them. Fixed-size tensor work only — no
    boolean indexing, no ``bincount`` sized by the data, no ``int()`` — so on a GPU nothing
    waits for the device."""
    batch = preds.shape[0]
    preds = preds.reshape(batch, -1).long()
    target = target.reshape(batch, -1).long()
    valid = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
    inside = (target >= 0) & (target < n_labels) & (preds >= 0) & (preds < n_labels)
    cells = batch * n_labels * n_labels
    image = torch.arange(batch, device=preds.device).unsqueeze(1)
    index = torch.where(valid & inside, (image * n_labels + target) * n_labels + preds, cells)  # the rest: one spare cell
    counts = torch.zeros(cells + 1, dtype=torch.long, device=preds.device)
    counts.scatter_add_(0, index.flatten(), torch.ones_like(index).flatten())
    return counts[:cells].reshape(batch, n_labels, n_labels), (valid & ~inside).sum()


def _raise_outside(preds: torch.Tensor, target: torch.Tensor, n_labels: int, ignore_index: int | None) -> None:
    target = target.long().flatten()
    valid = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
    for name, values in (("target", target[valid]), ("prediction", preds.long().flatten()[valid])):
        if values.numel() and (int(values.min()) < 0 or int(values.max()) >= n_labels):
            bad = int(values.max()) if int(values.max()) >= n_labels else int(values.min())
            raise ValueError(f"{name} holds class {bad}, outside 0..{n_labels - 1} (num_classes / ignore_index?)")


def dice_iou_from_confusion(confusion: torch.Tensor, empty_score: float = float("nan")) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class Dice and IoU from ``(..., K, K)`` confusion; ``empty_score`` where a class has no pixels."""
    confusion = confusion.double()
    tp = torch.diagonal(confusion, dim1=-2, dim2=-1)
    fn = confusion.sum(dim=-1) - tp
    fp = confusion.sum(dim=-2) - tp
    union = tp + fp + fn
    empty = torch.full_like(union, empty_score)
    dice = torch.where(union > 0, 2 * tp / (2 * tp + fp + fn).clamp_min(1), empty)
    iou = torch.where(union > 0, tp / union.clamp_min(1), empty)
    return dice, iou


class SegmentationMetrics(Metric):
    """Dice and IoU per class and mean over an epoch (see the module docstring).

    ``update(preds, target)``: ``(B, H, W)`` long labels each. ``compute()`` returns
    ``{"dice", "iou", "dice/<class>", "iou/<class>"}`` (scalar tensors);
    :meth:`confusion` the epoch's ``K x K`` pixel confusion matrix.

    Args:
        num_classes: model outputs; 1 = binary.
        class_names: one name per class (two for binary); default ``background, foreground``
            for binary, ``class0, class1, ...`` otherwise.
        ignore_index: target value left out.
        include_background: count class 0 in the multiclass mean.
        aggregation: ``"dataset"`` (pixels of the whole epoch) or ``"image"`` (mean of per-image scores).
    """

    full_state_update = False

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        ignore_index: int | None = None,
        include_background: bool = False,
        aggregation: str = "dataset",
    ) -> None:
        super().__init__()
        if aggregation not in ("dataset", "image"):
            raise ValueError(f"aggregation must be 'dataset' or 'image', got {aggregation!r}")
        self.binary = num_classes == 1
        self.n_labels = 2 if self.binary else num_classes
        if class_names is None:
            class_names = ["background", "foreground"] if self.binary else [f"class{i}" for i in range(self.n_labels)]
        if len(class_names) != self.n_labels:
            raise ValueError(f"expected {self.n_labels} class names, got {len(class_names)}: {list(class_names)}")
        self.class_names = list(class_names)
        self.ignore_index = ignore_index
        self.include_background = include_background
        self.aggregation = aggregation
        k = self.n_labels
        self.add_state("confusion_sum", default=torch.zeros(k, k, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("image_dice_sum", default=torch.zeros(k, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("image_iou_sum", default=torch.zeros(k, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("image_counts", default=torch.zeros(k, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("outside", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """No host sync on a GPU: labels outside the classes are counted on the device and
        refused by :meth:`compute` (on a CPU, at once, naming the class)."""
        per_image, outside = confusion_and_outside(preds, target, self.n_labels, self.ignore_index)
        if not preds.is_cuda and int(outside):
            _raise_outside(preds, target, self.n_labels, self.ignore_index)
        self.outside += outside
        self.confusion_sum += per_image.sum(dim=0)
        dice, iou = dice_iou_from_confusion(per_image, empty_score=1.0)
        if self.binary:  # Kaggle: an empty image counts, with score 1
            scored = torch.ones_like(dice, dtype=torch.bool)
        else:  # the class is in the image's target or prediction
            scored = (per_image.sum(dim=-1) + per_image.sum(dim=-2)) > 0
        self.image_dice_sum += torch.where(scored, dice, 0.0).sum(dim=0)
        self.image_iou_sum += torch.where(scored, iou, 0.0).sum(dim=0)
        self.image_counts += scored.sum(dim=0)

    def confusion(self) -> torch.Tensor:
        """The epoch's ``K x K`` confusion matrix (rows: target, columns: prediction)."""
        return self.confusion_sum

    def compute(self) -> dict[str, torch.Tensor]:
        if int(self.outside):
            raise ValueError(f"{int(self.outside)} pixel(s) of this epoch have a target or prediction outside "
                             f"0..{self.n_labels - 1} (num_classes / ignore_index?): no scores are given for it")
        if self.aggregation == "dataset":
            dice, iou = dice_iou_from_confusion(self.confusion_sum)
        else:
            count = self.image_counts.double()
            none = torch.full_like(count, float("nan"))
            dice = torch.where(count > 0, self.image_dice_sum / count.clamp_min(1), none)
            iou = torch.where(count > 0, self.image_iou_sum / count.clamp_min(1), none)
        first = 0 if (self.include_background and not self.binary) else 1
        out = {"dice": torch.nanmean(dice[first:]).float(), "iou": torch.nanmean(iou[first:]).float()}
        for name, d, i in zip(self.class_names, dice.float(), iou.float()):
            out[f"dice/{name}"] = d
            out[f"iou/{name}"] = i
        return out
