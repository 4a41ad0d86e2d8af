"""The pieces segkit's losses are built from, as plain tensor functions.

Shared by the loss classes in :mod:`segkit.losses` (one small class per loss, as
segmentation-models-pytorch splits ``losses/_functional.py`` from its loss classes), so no
formula is written twice. Numbers in, tensors out: nothing here reads a file, and these
functions know no configuration.

Conventions: ``logits`` ``(B, C, H, W)`` with ``C == 1`` binary (sigmoid) and ``C > 1``
multiclass (softmax); ``target`` ``(B, H, W)`` class indices; pixels whose target equals
``ignore_index`` count nowhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "check_classes_off_device",
    "class_probabilities",
    "cross_entropy",
    "dice_score",
    "focal_power",
    "needs_deterministic_ce",
    "per_pixel_cross_entropy",
    "soft_counts",
    "tversky_index",
    "upcast",
]


def upcast(x: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 → float32; float32/float64 unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _valid(target: torch.Tensor, ignore_index: int | None) -> torch.Tensor:
    return torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index


def class_probabilities(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class probabilities, one-hot target and valid-pixel mask, ignored pixels zeroed.

    Binary logits ``(B, 1, H, W)`` become two classes ``[1 − p, p]`` (computed as
    ``sigmoid(−z), sigmoid(z)`` for accuracy), so binary and multiclass share the formulas.

    Returns:
        ``probs`` ``(B, K, H, W)``, ``one_hot`` ``(B, K, H, W)`` (zero on ignored pixels) and
        ``valid`` ``(B, 1, H, W)``, all in the (upcast) dtype of the logits; ``K = max(C, 2)``.
    """
    logits = upcast(logits)
    if logits.shape[1] == 1:
        probs = torch.cat([torch.sigmoid(-logits), torch.sigmoid(logits)], dim=1)
    else:
        probs = torch.softmax(logits, dim=1)
    target = target.long()
    valid = _valid(target, ignore_index)
    safe = torch.where(valid, target, torch.zeros_like(target))
    n_classes = probs.shape[1]
    check_classes_off_device(safe, n_classes)
    one_hot = F.one_hot(safe, n_classes).permute(0, 3, 1, 2).to(probs.dtype)
    valid_f = valid.unsqueeze(1).to(probs.dtype)
    return probs, one_hot * valid_f, valid_f


def check_classes_off_device(target: torch.Tensor, n_classes: int) -> None:
    """Refuse labels ``>= n_classes`` where that costs no device sync (CPU tensors). On a GPU
    the loaders have checked every mask against the classes already (segkit.data.datasets),
    and one_hot's scatter asserts."""
    if not target.is_cuda and target.numel() and int(target.max()) >= n_classes:
        raise ValueError(f"target holds class {int(target.max())} but the loss has {n_classes} classes")


def soft_counts(
    probs: torch.Tensor, one_hot: torch.Tensor, valid: torch.Tensor, dims: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Soft true positives, false negatives and false positives per class, summed over ``dims``.

    ``TP = Σ p·g``, ``FN = Σ (1 − p)·g``, ``FP = Σ p·(1 − g)`` over valid pixels; the
    prediction's total is ``TP + FP`` and the target's ``TP + FN``.
    """
    tp = (probs * one_hot).sum(dim=dims)
    fn = ((1.0 - probs) * one_hot).sum(dim=dims)
    fp = (probs * (valid - one_hot)).sum(dim=dims)
    return tp, fn, fp


def tversky_index(
    tp: torch.Tensor, fn: torch.Tensor, fp: torch.Tensor, alpha: float, beta: float, smooth: float, eps: float = 1e-7
) -> torch.Tensor:
    """``(TP + s) / (TP + α·FN + β·FP + s)``: α weighs false negatives, β false positives.

    The denominator is clamped to ``eps`` (as smp does), so ``s = 0`` on a class with no
    prediction and no target gives 0, not NaN.
    """
    return (tp + smooth) / (tp + alpha * fn + beta * fp + smooth).clamp_min(eps)


def dice_score(
    tp: torch.Tensor, fn: torch.Tensor, fp: torch.Tensor, smooth: float, formula: str = "smp", eps: float = 1e-7
) -> torch.Tensor:
    """Soft Dice per class from the soft counts; with ``P = TP + FP``, ``T = TP + FN``:

    - ``"smp"`` (as segmentation-models-pytorch 0.6 computes it): ``(2·TP + 2s) / (P + T + 2s)``
      — the Tversky index with α = β = ½ and smoothing s, so smp's ``smooth`` s acts like 2s
      of the plain formula; a class with no target pixel (``T = 0``) scores 1, i.e. loss 0.
    - ``"plain"`` (the Carvana and oil-seep projects' code): ``(2·TP + s) / (P + T + s)``
      for every class; a class absent from the target scores ``s / (P + s)``, about 0 when
      the prediction holds more than a few pixels of it, i.e. loss about 1.
    """
    if formula == "smp":
        score = tversky_index(tp, fn, fp, 0.5, 0.5, smooth, eps)
        return torch.where(tp + fn > 0, score, torch.ones_like(score))
    if formula == "plain":
        return tversky_index(tp, fn, fp, 0.5, 0.5, smooth / 2.0, eps)
    raise ValueError(f"dice formula must be 'smp' or 'plain', got {formula!r}")


def focal_power(distance: torch.Tensor, exponent: float) -> torch.Tensor:
    """``distance ** exponent`` for a distance ``1 − index`` in [0, 1], with a gradient that
    stays finite at 0 for exponents below 1."""
    return distance.clamp_min(1e-12) ** exponent


def ce_ignore(ignore_index: int | None) -> int:
    """``ignore_index`` as ``F.cross_entropy`` takes it (its own default when none)."""
    return -100 if ignore_index is None else ignore_index


def needs_deterministic_ce(logits: torch.Tensor) -> bool:
    """True where PyTorch's ``nll_loss2d`` would raise: deterministic algorithms asked for
    (``trainer.deterministic=true``) on a CUDA tensor, for which it has no deterministic kernel."""
    return logits.is_cuda and torch.are_deterministic_algorithms_enabled()


def per_pixel_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``F.cross_entropy(logits, target, reduction="none")`` for ``(B, C, H, W)`` logits and
    in-range labels; under :func:`needs_deterministic_ce` the same loss as
    ``-Σ_c onehot_c · log_softmax_c``, which is elementwise (deterministic forward and backward)."""
    if not needs_deterministic_ce(logits):
        return F.cross_entropy(logits, target, reduction="none")
    one_hot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype)
    return -(F.log_softmax(logits, dim=1) * one_hot).sum(1)


def cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int | None,
    class_weights: torch.Tensor | None = None,
    normalize_by: str = "weights",
) -> torch.Tensor:
    """(Binary) cross-entropy over valid pixels, optionally class-weighted.

    Binary logits ``(B, 1, H, W)`` use the sigmoid form; ``class_weights`` are then
    ``[background, foreground]``. With weights ``w``, the per-pixel losses are summed as
    ``Σ_i w_{y_i}·CE_i`` and divided by

    - ``"weights"``: ``Σ_i w_{y_i}``, PyTorch's convention (``F.cross_entropy(weight=...)``):
      a weighted mean, so its scale does not depend on how the weights are scaled;
    - ``"pixels"``: the number N of valid pixels, ``(1/N)·Σ_i w_{y_i}·CE_i``.

    Without weights both are the plain mean.
    """
    if normalize_by not in ("weights", "pixels"):
        raise ValueError(f"normalize_by must be 'weights' or 'pixels', got {normalize_by!r}")
    logits = upcast(logits)
    target = target.long()
    weights = None if class_weights is None else class_weights.to(logits.dtype)
    if logits.shape[1] > 1 and normalize_by == "weights" and not needs_deterministic_ce(logits):
        return F.cross_entropy(logits, target, weight=weights, ignore_index=ce_ignore(ignore_index))
    valid = _valid(target, ignore_index)
    safe = torch.where(valid, target, torch.zeros_like(target))
    if logits.shape[1] == 1:
        per_pixel = F.binary_cross_entropy_with_logits(logits[:, 0], safe.to(logits.dtype), reduction="none")
    else:
        per_pixel = per_pixel_cross_entropy(logits, safe)
    valid_f = valid.to(logits.dtype)
    pixel_weight = valid_f if weights is None else valid_f * weights[safe]
    denominator = pixel_weight if normalize_by == "weights" else valid_f
    return (per_pixel * pixel_weight).sum() / denominator.sum().clamp_min(torch.finfo(logits.dtype).tiny)
