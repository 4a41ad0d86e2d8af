"""Loss registry: ``build_loss(name, num_classes, **params)`` → ``nn.Module``.

Every loss is called as ``loss(logits, target)`` with

- ``logits``: ``(B, C, H, W)``, ``C = num_classes``; ``C == 1`` means binary (sigmoid),
  ``C > 1`` softmax over classes;
- ``target``: ``(B, H, W)`` class indices (``long``; for binary also float 0/1).

Pixels whose target equals ``ignore_index`` count nowhere (e.g. the padding of DOTA
patches). Half-precision logits (fp16/bf16 from autocast) are upcast to float32 before
any arithmetic; float64 stays float64 (for gradcheck).

Losses written here: ``unified_focal``, ``focal_tversky``, ``bce_dice``, ``weighted_ce``.
From segmentation-models-pytorch, with the mode chosen from ``num_classes``: ``dice``,
``jaccard``, ``lovasz``, ``focal``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import segmentation_models_pytorch.losses as smp_losses
import torch
import torch.nn.functional as F
from torch import nn

from segkit.data.class_stats import read_class_weights

__all__ = [
    "LOSSES",
    "BCEDiceLoss",
    "FocalTverskyLoss",
    "SmpLoss",
    "UnifiedFocalLoss",
    "WeightedCELoss",
    "build_loss",
    "register_loss",
]

LOSSES: dict[str, Callable[..., nn.Module]] = {}


def register_loss(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        LOSSES[name] = factory
        return factory

    return decorator


def build_loss(name: str, num_classes: int, ignore_index: int | None = None, **params: Any) -> nn.Module:
    """Build a registered loss for ``num_classes`` outputs (1 = binary)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; available: {', '.join(sorted(LOSSES))}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    try:
        return LOSSES[name](num_classes=num_classes, ignore_index=ignore_index, **params)
    except TypeError as err:
        raise ValueError(f"loss {name!r}: {err}") from err


# --------------------------------------------------------------------- helpers
def _upcast(x: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 → float32; float32/float64 unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


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
    logits = _upcast(logits)
    if logits.shape[1] == 1:
        probs = torch.cat([torch.sigmoid(-logits), torch.sigmoid(logits)], dim=1)
    else:
        probs = torch.softmax(logits, dim=1)
    target = target.long()
    if ignore_index is None:
        valid = torch.ones_like(target, dtype=torch.bool)
    else:
        valid = target != ignore_index
    safe = torch.where(valid, target, torch.zeros_like(target))
    n_classes = probs.shape[1]
    if safe.numel() and int(safe.max()) >= n_classes:
        raise ValueError(f"target holds class {int(safe.max())} but the loss has {n_classes} classes")
    one_hot = F.one_hot(safe, n_classes).permute(0, 3, 1, 2).to(probs.dtype)
    valid_f = valid.unsqueeze(1).to(probs.dtype)
    return probs, one_hot * valid_f, valid_f


def soft_counts(
    probs: torch.Tensor, one_hot: torch.Tensor, valid: torch.Tensor, dims: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Soft true positives, false negatives and false positives per class, summed over ``dims``."""
    tp = (probs * one_hot).sum(dim=dims)
    fn = ((1.0 - probs) * one_hot).sum(dim=dims)
    fp = (probs * (valid - one_hot)).sum(dim=dims)
    return tp, fn, fp


# ------------------------------------------------------------- unified focal
@register_loss("unified_focal")
class UnifiedFocalLoss(nn.Module):
    r"""Unified Focal loss, Yeung et al. (2022), Computerized Medical Imaging and Graphics 95:102026.

    .. math::

        \mathcal{L}_{UF} = \lambda\,\mathcal{L}_{mF} + (1-\lambda)\,\mathcal{L}_{mFT}

    Modified focal loss, averaged over the N valid pixels, with :math:`p_{i,c}` the predicted
    probability of class c and :math:`g_{i,c}` the one-hot target; class 0 (background)
    has weight :math:`1-\delta`, every other (rare) class weight :math:`\delta`:

    .. math::

        \mathcal{L}_{mF} = -\frac{1}{N}\sum_i\Big[(1-\delta)\,m_0\,g_{i,0}\log p_{i,0}
            + \delta\sum_{c\ge1} m_c\, g_{i,c}\log p_{i,c}\Big]

    with :math:`m_c = (1-p_{i,c})^{\gamma}` for every class in the symmetric variant, and
    only for the background in the asymmetric one (foreground: :math:`m_c = 1`).

    Modified focal Tversky loss, with the modified Tversky index per class

    .. math::

        mTI_c = \frac{\sum_i p_{i,c} g_{i,c} + \epsilon}
            {\sum_i p_{i,c} g_{i,c} + \delta\sum_i (1-p_{i,c}) g_{i,c}
             + (1-\delta)\sum_i p_{i,c}(1-g_{i,c}) + \epsilon}

    (δ weighs false negatives), :math:`\mathcal{L}_{mFT} = \mathrm{mean}_c\,(1-mTI_c)^{1-\gamma}`
    over all classes in the symmetric variant; in the asymmetric variant the background
    term is :math:`1-mTI_0` (not enhanced).

    Paper defaults: λ = 0.5, δ = 0.6, γ = 0.5. λ weighs the focal part as in the paper's
    equations (the authors' code names its weight for the Tversky part; both agree at the
    default 0.5). Binary logits are treated as the two classes ``[1 − p, p]``; more
    classes generalise background = class 0, rare = the others. Probabilities are clipped
    to ``[ε, 1 − ε]`` as in the authors' code.

    Args:
        variant: ``"symmetric"`` (the Airbus seed's) or ``"asymmetric"``.
        weight: λ.
        delta: δ.
        gamma: γ.
        per_image: Tversky sums per image, then averaged over images (the authors' Keras
            code); ``False`` (default) sums over the whole batch, as the equations read,
            which stays informative on images without any foreground.
        epsilon: ε, the clip and smoothing constant.
    """

    def __init__(
        self,
        num_classes: int,
        variant: str = "symmetric",
        weight: float = 0.5,
        delta: float = 0.6,
        gamma: float = 0.5,
        per_image: bool = False,
        epsilon: float = 1e-7,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__()
        if variant not in ("symmetric", "asymmetric"):
            raise ValueError(f"variant must be 'symmetric' or 'asymmetric', got {variant!r}")
        for label, value in (("weight", weight), ("delta", delta), ("gamma", gamma)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{label} must be in [0, 1], got {value}")
        self.num_classes = num_classes
        self.symmetric = variant == "symmetric"
        self.weight, self.delta, self.gamma = weight, delta, gamma
        self.per_image = per_image
        self.epsilon = epsilon
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs, one_hot, valid = class_probabilities(logits, target, self.ignore_index)
        p = probs.clamp(self.epsilon, 1.0 - self.epsilon)
        n_classes = p.shape[1]
        class_weight = torch.full((n_classes,), self.delta, dtype=p.dtype, device=p.device)
        class_weight[0] = 1.0 - self.delta
        # symmetric: every class suppressed (focal) and enhanced (Tversky); asymmetric:
        # only the background suppressed, only the foreground classes enhanced
        is_background = torch.arange(n_classes, device=p.device) == 0
        suppressed = torch.ones_like(is_background) if self.symmetric else is_background
        enhanced_classes = torch.ones_like(is_background) if self.symmetric else ~is_background
        view = (1, n_classes, 1, 1)
        modulation = torch.where(suppressed.view(view), (1.0 - p) ** self.gamma, torch.ones_like(p))
        focal_map = -(class_weight.view(view) * modulation * one_hot * torch.log(p)).sum(dim=1)
        focal = focal_map.sum() / valid.sum().clamp_min(1.0)

        tp, fn, fp = soft_counts(p, one_hot, valid, (2, 3) if self.per_image else (0, 2, 3))
        mti = (tp + self.epsilon) / (tp + self.delta * fn + (1.0 - self.delta) * fp + self.epsilon)
        distance = (1.0 - mti).clamp_min(0.0)
        enhanced = distance.clamp_min(1e-12) ** (1.0 - self.gamma)
        tversky_terms = torch.where(enhanced_classes, enhanced, distance)
        tversky = tversky_terms.mean()
        return self.weight * focal + (1.0 - self.weight) * tversky


# ------------------------------------------------------------- focal tversky
@register_loss("focal_tversky")
class FocalTverskyLoss(nn.Module):
    r"""Focal Tversky loss, Abraham & Khan (2019), ISBI, arXiv:1810.07842.

    .. math::

        TI_c = \frac{\sum_i p_{ic} g_{ic} + s}{\sum_i p_{ic} g_{ic}
            + \alpha\sum_i (1-p_{ic}) g_{ic} + \beta\sum_i p_{ic}(1-g_{ic}) + s},
        \qquad FTL = \sum_c (1 - TI_c)^{1/\gamma}

    α weighs false negatives, β false positives; sums run over every valid pixel of the
    batch. Paper defaults: α = 0.7, β = 0.3, γ = 4/3; ``smooth`` s = 1 as in the authors' code.
    Binary: the foreground term alone (the authors' binary setting). Multiclass: every
    class, background included, averaged (``reduction="mean"``, so the scale does not grow
    with the number of classes) or summed as in the paper (``reduction="sum"``).
    """

    def __init__(
        self,
        num_classes: int,
        alpha: float = 0.7,
        beta: float = 0.3,
        gamma: float = 4.0 / 3.0,
        smooth: float = 1.0,
        reduction: str = "mean",
        ignore_index: int | None = None,
    ) -> None:
        super().__init__()
        if gamma <= 0:
            raise ValueError(f"gamma must be > 0, got {gamma}")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.binary = num_classes == 1
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.smooth = smooth
        self.reduction = reduction
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs, one_hot, valid = class_probabilities(logits, target, self.ignore_index)
        if self.binary:
            probs, one_hot = probs[:, 1:], one_hot[:, 1:]
        tp, fn, fp = soft_counts(probs, one_hot, valid, (0, 2, 3))
        tversky = (tp + self.smooth) / (tp + self.alpha * fn + self.beta * fp + self.smooth)
        terms = (1.0 - tversky).clamp_min(1e-12) ** (1.0 / self.gamma)
        return terms.mean() if self.reduction == "mean" else terms.sum()


# ------------------------------------------------------------------ bce_dice
@register_loss("bce_dice")
class BCEDiceLoss(nn.Module):
    """``bce_weight · BCE + dice_weight · (1 − Dice)`` (binary) or CE + (1 − Dice) (multiclass).

    The Carvana seed's loss (the oil-seep seed used a small BCE weight). The Dice term is
    smp's soft Dice over the whole batch (per class, then averaged over the classes present
    in the target, for multiclass).

    Args:
        bce_weight: weight of the (binary) cross-entropy term.
        dice_weight: weight of the ``1 − Dice`` term.
        smooth: Dice smoothing constant.
    """

    def __init__(
        self,
        num_classes: int,
        bce_weight: float = 1.0,
        dice_weight: float = 1.0,
        smooth: float = 0.0,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__()
        self.binary = num_classes == 1
        self.bce_weight = bce_weight
        self.dice_weight = dice_weight
        self.ignore_index = ignore_index
        self.dice = smp_losses.DiceLoss(
            mode="binary" if self.binary else "multiclass",
            from_logits=True,
            smooth=smooth,
            ignore_index=ignore_index,
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = _upcast(logits)
        if self.binary:
            bce = _binary_cross_entropy(logits[:, 0], target, self.ignore_index)
            dice = self.dice(logits, target.long())
        else:
            target = target.long()
            bce = F.cross_entropy(logits, target, ignore_index=_ce_ignore(self.ignore_index))
            dice = self.dice(logits, target)
        return self.bce_weight * bce + self.dice_weight * dice


def _ce_ignore(ignore_index: int | None) -> int:
    return -100 if ignore_index is None else ignore_index


def _binary_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None, class_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean BCE over valid pixels; with ``class_weights`` ``[w0, w1]`` a weighted mean as in
    ``F.cross_entropy(weight=...)``: ``Σ w_y · bce / Σ w_y``."""
    valid = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
    target_f = torch.where(valid, target, torch.zeros_like(target)).to(logits.dtype)
    per_pixel = F.binary_cross_entropy_with_logits(logits, target_f, reduction="none")
    weight = valid.to(logits.dtype)
    if class_weights is not None:
        weight = weight * class_weights.to(logits.dtype)[target_f.long()]
    return (per_pixel * weight).sum() / weight.sum().clamp_min(torch.finfo(logits.dtype).tiny)


# --------------------------------------------------------------- weighted_ce
@register_loss("weighted_ce")
class WeightedCELoss(nn.Module):
    """Cross-entropy with per-class weights (the DOTA seed: inverse pixel frequency).

    ``weights``: ``"auto"`` (default) reads the inverse-frequency weights from
    ``class_stats`` — the ``class_stats.json`` that ``segkit-prepare`` writes for a
    dataset; or a list of one weight per class (two for binary: background, foreground);
    or ``None`` for plain cross-entropy. The loss is the weighted mean ``Σ w_y · CE / Σ w_y`` over valid pixels
    (PyTorch's convention); binary uses the sigmoid form with the same weighting.
    """

    def __init__(
        self,
        num_classes: int,
        weights: Sequence[float] | str | None = "auto",
        class_stats: str | os.PathLike | None = None,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__()
        self.binary = num_classes == 1
        n_labels = 2 if self.binary else num_classes
        if weights == "auto":
            weights = read_class_weights(class_stats, n_labels)
        if weights is not None:
            weights = [float(w) for w in weights]
            if len(weights) != n_labels:
                raise ValueError(
                    f"weighted_ce: {len(weights)} weights given for {n_labels} classes"
                    + (" (binary needs [background, foreground])" if self.binary else "")
                )
            if any(w < 0 for w in weights) or not any(w > 0 for w in weights):
                raise ValueError(f"weighted_ce: weights must be >= 0 and not all zero, got {weights}")
            self.register_buffer("class_weights", torch.tensor(weights, dtype=torch.float32))
        else:
            self.class_weights = None
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = _upcast(logits)
        weights = None if self.class_weights is None else self.class_weights.to(logits.dtype)
        if self.binary:
            return _binary_cross_entropy(logits[:, 0], target.long(), self.ignore_index, weights)
        return F.cross_entropy(logits, target.long(), weight=weights, ignore_index=_ce_ignore(self.ignore_index))


# ------------------------------------------------------------ smp's own losses
class SmpLoss(nn.Module):
    """A segmentation-models-pytorch loss in binary or multiclass mode, on upcast logits.

    ``float32_only``: smp's Lovász code mixes float32 into its arithmetic and fails on
    float64 input, so that loss always computes in float32.
    """

    def __init__(
        self, loss_class: type[nn.Module], num_classes: int, ignore_index: int | None, float32_only: bool = False, **params: Any
    ) -> None:
        super().__init__()
        self.float32_only = float32_only
        self.binary = num_classes == 1
        self.loss = loss_class(mode="binary" if self.binary else "multiclass", ignore_index=ignore_index, **params)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float() if self.float32_only else _upcast(logits)
        target = target.to(logits.dtype) if self.binary else target.long()
        return self.loss(logits, target)


def _smp(loss_class: type[nn.Module], doc: str, float32_only: bool = False) -> Callable[..., nn.Module]:
    def factory(num_classes: int, ignore_index: int | None = None, **params: Any) -> nn.Module:
        return SmpLoss(loss_class, num_classes, ignore_index, float32_only=float32_only, **params)

    factory.__doc__ = doc
    return factory


register_loss("dice")(_smp(smp_losses.DiceLoss, "smp DiceLoss: 1 − soft Dice over the batch, mean over classes present."))
register_loss("jaccard")(_smp(smp_losses.JaccardLoss, "smp JaccardLoss: 1 − soft IoU over the batch (the buildings seed's suggestion)."))
register_loss("lovasz")(_smp(smp_losses.LovaszLoss, "smp LovaszLoss: Lovász hinge (binary) / Lovász-softmax (multiclass), Berman et al. 2018.", float32_only=True))
register_loss("focal")(_smp(smp_losses.FocalLoss, "smp FocalLoss (Lin et al. 2017): sigmoid focal loss; multiclass: one-vs-rest per class, averaged."))
