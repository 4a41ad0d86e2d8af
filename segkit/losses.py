"""Loss registry: ``build_loss(name, num_classes, **params)`` → ``nn.Module``.

Every loss is called as ``loss(logits, target)`` with

- ``logits``: ``(B, C, H, W)``, ``C = num_classes``; ``C == 1`` means binary (sigmoid),
  ``C > 1`` softmax over classes;
- ``target``: ``(B, H, W)`` class indices (``long``; for binary also float 0/1).

Pixels whose target equals ``ignore_index`` count nowhere (e.g. the padding of DOTA
patches). Half-precision logits (fp16/bf16 from autocast) are upcast to float32 before
any arithmetic; float64 stays float64 (for gradcheck).

Layout, as segmentation-models-pytorch splits its losses: the formulas shared between
losses (class probabilities and one-hot targets, soft TP/FN/FP per class, the Tversky
index and soft Dice, (weighted) cross-entropy) live in :mod:`segkit.loss_functional`;
this module holds one small class per loss and the registry. Losses take numbers only:
``weights: auto`` (class weights from the dataset's ``class_stats.json``) is resolved by
the training set-up (:func:`segkit.stage.resolve_loss_config`) before a loss is built, and
no loss reads a file.

Losses written here: ``unified_focal``, ``focal_tversky``, ``bce_dice``, ``weighted_ce``,
``ce``, ``dice_ce`` (nnU-Net's) and ``compound`` (a weighted sum of named losses).
From segmentation-models-pytorch, with the mode chosen from ``num_classes``: ``dice``,
``jaccard``, ``lovasz``, ``focal``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import segmentation_models_pytorch.losses as smp_losses
import torch
from torch import nn

from segkit.loss_functional import (
    class_probabilities,
    cross_entropy,
    dice_score,
    focal_power,
    soft_counts,
    tversky_index,
    upcast,
)

__all__ = [
    "LOSSES",
    "BCEDiceLoss",
    "CompoundLoss",
    "DiceCELoss",
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
    signature = inspect.signature(LOSSES[name])
    if not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        accepted = set(signature.parameters) - {"num_classes", "ignore_index", "self"}
        unknown = sorted(set(params) - accepted)
        if unknown:
            raise ValueError(f"loss {name!r}: unknown parameter(s) {', '.join(unknown)}; it takes "
                             f"{', '.join(sorted(accepted)) or 'none'}")
    try:
        return LOSSES[name](num_classes=num_classes, ignore_index=ignore_index, **params)
    except TypeError as err:
        raise ValueError(f"loss {name!r}: {err}") from err


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
        variant: ``"symmetric"`` (the Airbus project's choice) or ``"asymmetric"``.
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
        mti = tversky_index(tp, fn, fp, self.delta, 1.0 - self.delta, self.epsilon, eps=self.epsilon)
        distance = (1.0 - mti).clamp_min(0.0)
        tversky_terms = torch.where(enhanced_classes, focal_power(distance, 1.0 - self.gamma), distance)
        return self.weight * focal + (1.0 - self.weight) * tversky_terms.mean()


# ------------------------------------------------------------- focal tversky
@register_loss("focal_tversky")
class FocalTverskyLoss(nn.Module):
    r"""Focal Tversky loss, Abraham & Khan (2019), ISBI, arXiv:1810.07842.

    .. math::

        TI_c = \frac{\sum_i p_{ic} g_{ic} + s}{\sum_i p_{ic} g_{ic}
            + \alpha\sum_i (1-p_{ic}) g_{ic} + \beta\sum_i p_{ic}(1-g_{ic}) + s},
        \qquad FTL = \sum_c (1 - TI_c)^{1/\gamma}

    segkit follows the paper: α weighs false negatives, β false positives, and the
    exponent is 1/γ; sums run over every valid pixel of the batch. Paper defaults:
    α = 0.7, β = 0.3, γ = 4/3 (exponent 0.75); ``smooth`` s = 1 as in the authors' code.
    Binary: the foreground term alone (the authors' binary setting). Multiclass: every
    class, background included, averaged (``reduction="mean"``, so the scale does not grow
    with the number of classes) or summed as in the paper (``reduction="sum"``).

    The oil-seep project (EvgenyDyshlyuk/Oil_Seep_Detection, ``segmentation_loss.py``)
    writes the index the other way round, ``(TP + s) / (TP + α·FP + β·FN + s)``, i.e. its
    α = 0.7 weighs false *positives*, and uses its γ = 1.33 directly as the exponent,
    ``(1 − TI)^1.33``. Both are legitimate choices; its loss is
    ``alpha=0.3 beta=0.7 exponent=1.33`` here (with the default ``smooth=1``), exactly for
    binary. For several classes that code applies a sigmoid to every channel and pools
    all channels into one index, which segkit (softmax, one index per class) does not
    reproduce.

    Args:
        alpha: weight of the false negatives.
        beta: weight of the false positives.
        gamma: γ; the exponent is 1/γ.
        exponent: the exponent itself, replacing 1/γ when given (the oil-seep project's
            1.33); ``None`` (default) uses 1/γ.
        smooth: s.
        reduction: ``"mean"`` or ``"sum"`` over classes.
    """

    def __init__(
        self,
        num_classes: int,
        alpha: float = 0.7,
        beta: float = 0.3,
        gamma: float = 4.0 / 3.0,
        exponent: float | None = None,
        smooth: float = 1.0,
        reduction: str = "mean",
        ignore_index: int | None = None,
    ) -> None:
        super().__init__()
        if gamma <= 0:
            raise ValueError(f"gamma must be > 0, got {gamma}")
        if exponent is not None and exponent <= 0:
            raise ValueError(f"exponent must be > 0, got {exponent}")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.binary = num_classes == 1
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.exponent = 1.0 / gamma if exponent is None else float(exponent)
        self.smooth = smooth
        self.reduction = reduction
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs, one_hot, valid = class_probabilities(logits, target, self.ignore_index)
        if self.binary:
            probs, one_hot = probs[:, 1:], one_hot[:, 1:]
        tp, fn, fp = soft_counts(probs, one_hot, valid, (0, 2, 3))
        tversky = tversky_index(tp, fn, fp, self.alpha, self.beta, self.smooth)
        terms = focal_power(1.0 - tversky, self.exponent)
        return terms.mean() if self.reduction == "mean" else terms.sum()


# ------------------------------------------------------------------ bce_dice
@register_loss("bce_dice")
class BCEDiceLoss(nn.Module):
    """``bce_weight · (B)CE + dice_weight · (1 − Dice)``: BCE for binary, CE for multiclass.

    The Carvana project's loss (BCE + (1 − Dice), both weights 1). The Dice is soft (on
    probabilities), computed per class over the whole batch; binary: the foreground class
    only; multiclass: the mean over *all* classes. With ``P = Σp``, ``T = Σg``, ``I = Σp·g``
    per class, ``dice_formula`` picks:

    - ``"smp"`` (default; segmentation-models-pytorch's ``DiceLoss``): ``1 − (2I + 2s) /
      (P + T + 2s)`` — smp's ``smooth`` s acts like 2s of the plain formula — and a class
      absent from the batch's target contributes 0 (still counted in the mean), so an
      all-background binary batch has Dice term 0;
    - ``"plain"`` (the Carvana and oil-seep projects' code): ``1 − (2I + s) / (P + T + s)``
      for every class, so a class absent from the target gives ``1 − s/(P + s)``, about 1
      when the prediction holds more than a few pixels of it (an all-background binary
      batch: about 1).

    The oil-seep project's ``DiceBCELoss`` is ``w·BCE + (1 − w)·(1 − Dice)`` with the plain
    formula, s = 1 and w = 0.01 (its journal also tries 0.001): here ``bce_weight=0.01
    dice_weight=0.99 dice_formula=plain smooth=1`` (exact for binary; with several classes
    that code used sigmoids on one-hot channels pooled together, segkit softmax CE and
    per-class Dice).

    Args:
        bce_weight: weight of the (binary) cross-entropy term.
        dice_weight: weight of the ``1 − Dice`` term.
        smooth: Dice smoothing constant s (see ``dice_formula``).
        dice_formula: ``"smp"`` or ``"plain"``.
    """

    def __init__(
        self,
        num_classes: int,
        bce_weight: float = 1.0,
        dice_weight: float = 1.0,
        smooth: float = 0.0,
        dice_formula: str = "smp",
        ignore_index: int | None = None,
    ) -> None:
        super().__init__()
        if dice_formula not in ("smp", "plain"):
            raise ValueError(f"dice_formula must be 'smp' or 'plain', got {dice_formula!r}")
        self.binary = num_classes == 1
        self.bce_weight = bce_weight
        self.dice_weight = dice_weight
        self.smooth = smooth
        self.dice_formula = dice_formula
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = cross_entropy(logits, target, self.ignore_index)
        probs, one_hot, valid = class_probabilities(logits, target, self.ignore_index)
        if self.binary:
            probs, one_hot = probs[:, 1:], one_hot[:, 1:]
        tp, fn, fp = soft_counts(probs, one_hot, valid, (0, 2, 3))
        dice = 1.0 - dice_score(tp, fn, fp, self.smooth, self.dice_formula)
        return self.bce_weight * ce + self.dice_weight * dice.mean()


# --------------------------------------------------------------- weighted_ce
class WeightedCELoss(nn.Module):
    """Cross-entropy with per-class weights (the DOTA project's loss: inverse pixel frequency).

    ``weights``: one number per class (two for binary: background, foreground), or
    ``None`` for plain cross-entropy. Numbers only: ``weights: auto`` in a config is
    resolved to numbers by the training set-up before the loss is built.

    ``normalize_by="weights"`` (default) is PyTorch's convention,
    ``Σ_i w_{y_i}·CE_i / Σ_i w_{y_i}`` over valid pixels: a weighted mean. The DOTA
    project's formula divides by the number N of valid pixels instead,
    ``(1/N)·Σ_i w_{y_i}·CE_i``: ``normalize_by="pixels"``. Binary uses the sigmoid form
    with the same weighting.
    """

    def __init__(
        self,
        num_classes: int,
        weights: Sequence[float] | None = None,
        normalize_by: str = "weights",
        ignore_index: int | None = None,
    ) -> None:
        super().__init__()
        if normalize_by not in ("weights", "pixels"):
            raise ValueError(f"weighted_ce: normalize_by must be 'weights' or 'pixels', got {normalize_by!r}")
        self.binary = num_classes == 1
        n_labels = 2 if self.binary else num_classes
        if isinstance(weights, str):
            raise ValueError(
                f"weighted_ce: weights={weights!r} is not a list of numbers. A loss reads no file: "
                "weights: auto is resolved by the training set-up (segkit.stage.resolve_loss_config reads "
                "the dataset's class_stats.json, which segkit-prepare writes) before the loss is built; "
                "pass the weights themselves (one per class, [background, foreground] for binary) or None"
            )
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
        self.normalize_by = normalize_by
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cross_entropy(logits, target, self.ignore_index, self.class_weights, self.normalize_by)


@register_loss("weighted_ce")
def _weighted_ce(
    num_classes: int,
    weights: Sequence[float] | str | None = "auto",
    class_stats: None = None,
    normalize_by: str = "weights",
    ignore_index: int | None = None,
) -> WeightedCELoss:
    """``loss=weighted_ce`` as ``conf/loss/weighted_ce.yaml`` spells it → :class:`WeightedCELoss`.

    The config's defaults ``weights: auto`` and ``class_stats: null`` are set-up keys:
    :func:`segkit.stage.resolve_loss_config` replaces ``auto`` by the numbers in the
    dataset's ``class_stats.json`` (or the file ``class_stats`` names) and drops
    ``class_stats``. Here ``auto`` (the default, unresolved) and a ``class_stats`` path are
    refused with a message saying so; ``class_stats: null`` is accepted (older checkpoints
    record it).
    """
    if class_stats is not None:
        raise ValueError(
            f"weighted_ce: class_stats={str(class_stats)!r} is a file, and a loss reads no file: the training "
            "set-up (segkit.stage.resolve_loss_config) reads it for weights: auto; pass the weights themselves"
        )
    return WeightedCELoss(num_classes, weights=weights, normalize_by=normalize_by, ignore_index=ignore_index)


# ------------------------------------------------------------------ dice_ce
class DiceCELoss(nn.Module):
    """nnU-Net's default loss: ``ce_weight · (B)CE + dice_weight · (1 − foreground soft Dice)``.

    As nnU-Net's ``DC_and_CE_loss`` computes it: the Dice of each class is
    ``(2·TP + s) / (2·TP + FP + FN + s)`` with soft counts, s = 1e-5; with ``batch_dice``
    (nnU-Net's default for 2-D) the counts are summed over the whole batch, otherwise each
    image has its own Dice and the images are averaged; the mean is over the foreground
    classes (``include_background=False``; binary: the foreground). nnU-Net adds ``−Dice``;
    ``1 − Dice`` here differs by a constant, so the gradients are the same and the loss
    stays positive. Binary uses the sigmoid form (BCE).

    Args:
        ce_weight, dice_weight: weights of the two terms (nnU-Net: 1 and 1).
        smooth: s in the Dice.
        batch_dice: counts over the batch (True) or per image (False).
        include_background: count class 0 in the Dice mean.
    """

    def __init__(
        self,
        num_classes: int,
        ce_weight: float = 1.0,
        dice_weight: float = 1.0,
        smooth: float = 1e-5,
        batch_dice: bool = True,
        include_background: bool = False,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__()
        self.binary = num_classes == 1
        self.ce_weight = ce_weight
        self.dice_weight = dice_weight
        self.smooth = smooth
        self.batch_dice = batch_dice
        self.first = 0 if include_background and not self.binary else 1
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = cross_entropy(logits, target, self.ignore_index)
        probs, one_hot, valid = class_probabilities(logits, target, self.ignore_index)
        dims = (0, 2, 3) if self.batch_dice else (2, 3)
        tp, fn, fp = soft_counts(probs[:, self.first:], one_hot[:, self.first:], valid, dims)
        dice = dice_score(tp, fn, fp, self.smooth, "plain")
        return self.ce_weight * ce + self.dice_weight * (1.0 - dice.mean())


register_loss("dice_ce")(DiceCELoss)


@register_loss("ce")
def _ce(num_classes: int, ignore_index: int | None = None) -> WeightedCELoss:
    """Plain cross-entropy (binary: BCE), the mean over valid pixels."""
    return WeightedCELoss(num_classes, weights=None, ignore_index=ignore_index)


# ----------------------------------------------------------------- compound
class CompoundLoss(nn.Module):
    """A weighted sum of named losses: ``Σ weight_i · loss_i(logits, target)``.

    ``terms``: ``[{name: ce, weight: 1}, {name: dice, weight: 1, smooth: 1}, ...]``; each
    term is built by :func:`build_loss` with its other keys as parameters (``weight``
    defaults to 1). Class weights of a ``weighted_ce`` term are numbers here too: the
    training set-up resolves ``weights: auto`` inside terms as well.
    """

    def __init__(self, num_classes: int, terms: Sequence[Any] = ({"name": "ce", "weight": 1.0}, {"name": "dice", "weight": 1.0}),
                 ignore_index: int | None = None) -> None:
        super().__init__()
        if not terms:
            raise ValueError("compound: terms is empty; give [{name: <loss>, weight: <number>}, ...]")
        losses, weights = [], []
        others = ", ".join(sorted(n for n in LOSSES if n != "compound"))
        for position, term in enumerate(terms):
            if not isinstance(term, Mapping):
                raise ValueError(f"compound: term {position} ({term!r}) is not {{name: <loss>, weight: <number>}}: "
                                 "write loss.terms=[{name: ce, weight: 1}, {name: dice, weight: 1}]")
            params = dict(term)
            name = params.pop("name", None)
            if name is None or name == "compound":
                raise ValueError(f"compound: term {position} ({term}) needs a name of another loss: {others}")
            try:
                weights.append(float(params.pop("weight", 1.0)))
            except (TypeError, ValueError):
                raise ValueError(f"compound: term {position} ({name}): weight {term['weight']!r} is not a number") from None
            try:
                losses.append(build_loss(name, num_classes, ignore_index=ignore_index, **params))
            except ValueError as err:
                raise ValueError(f"compound: term {position} ({name}): {err}") from None
        self.terms = nn.ModuleList(losses)
        self.weights = weights

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(w * loss(logits, target) for w, loss in zip(self.weights, self.terms))


register_loss("compound")(CompoundLoss)


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
        logits = logits.float() if self.float32_only else upcast(logits)
        target = target.to(logits.dtype) if self.binary else target.long()
        return self.loss(logits, target)


def _smp(loss_class: type[nn.Module], doc: str, float32_only: bool = False) -> Callable[..., nn.Module]:
    def factory(num_classes: int, ignore_index: int | None = None, **params: Any) -> nn.Module:
        return SmpLoss(loss_class, num_classes, ignore_index, float32_only=float32_only, **params)

    factory.__doc__ = doc
    return factory


register_loss("dice")(_smp(smp_losses.DiceLoss, (
    "smp DiceLoss: 1 − soft Dice per class over the whole batch, averaged over all classes; a class absent "
    "from the batch's target counts 0 in that mean (binary: the foreground only, 0 on an all-background "
    "batch). smp 0.6 smooths as (2I + 2s)/(P + T + 2s)."
)))
register_loss("jaccard")(_smp(smp_losses.JaccardLoss, (
    "smp JaccardLoss: 1 − soft IoU per class over the whole batch, averaged over all classes, a class absent "
    "from the batch's target counting 0 (the buildings project's suggestion)."
)))
register_loss("lovasz")(_smp(smp_losses.LovaszLoss, (
    "smp LovaszLoss: Lovász hinge (binary) / Lovász-softmax (multiclass), Berman et al. 2018."
), float32_only=True))
register_loss("focal")(_smp(smp_losses.FocalLoss, (
    "smp FocalLoss (Lin et al. 2017): sigmoid focal loss; multiclass: one-vs-rest per class, averaged."
)))
