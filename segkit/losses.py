"""Loss registry: ``build_loss(name, num_classes, **params)`` → ``nn.Module``.

Every loss is called as ``loss(logits, target)`` with
``logits``: ``(B, C, H, W)`` (``C = num_classes``; ``C == 1`` means binary, sigmoid) and
``target``: ``(B, H, W)`` class indices (``long``; for binary also float 0/1). Pixels equal
to ``ignore_index`` do not count. Losses compute in float32 whatever autocast hands them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.losses import DiceLoss
from torch import nn

__all__ = ["LOSSES", "BCEDiceLoss", "build_loss", "register_loss"]

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
    return LOSSES[name](num_classes=num_classes, ignore_index=ignore_index, **params)


def _valid_pixels(target: torch.Tensor, ignore_index: int | None) -> torch.Tensor | None:
    return None if ignore_index is None else target != ignore_index


@register_loss("bce_dice")
class BCEDiceLoss(nn.Module):
    """``bce_weight * BCE + dice_weight * (1 − Dice)`` (binary) or CE + (1 − Dice) (multiclass).

    The Dice term is smp's soft Dice over the whole batch (per class, then averaged over
    the classes present in the target, for multiclass).

    Args:
        num_classes: 1 for binary (sigmoid), > 1 for softmax over classes.
        bce_weight: weight of the (binary) cross-entropy term.
        dice_weight: weight of the ``1 − Dice`` term.
        ignore_index: target value whose pixels are left out of both terms.
        smooth: Dice smoothing constant.
    """

    def __init__(
        self,
        num_classes: int,
        bce_weight: float = 1.0,
        dice_weight: float = 1.0,
        ignore_index: int | None = None,
        smooth: float = 0.0,
    ) -> None:
        super().__init__()
        self.binary = num_classes == 1
        self.bce_weight = bce_weight
        self.dice_weight = dice_weight
        self.ignore_index = ignore_index
        self.dice = DiceLoss(
            mode="binary" if self.binary else "multiclass",
            from_logits=True,
            smooth=smooth,
            ignore_index=ignore_index,
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.binary:
            valid = _valid_pixels(target, self.ignore_index)
            flat_logits = logits[:, 0]
            target_f = target.float()
            if valid is not None:
                target_f = torch.where(valid, target_f, torch.zeros_like(target_f))
                per_pixel = F.binary_cross_entropy_with_logits(flat_logits, target_f, reduction="none")
                bce = (per_pixel * valid).sum() / valid.sum().clamp_min(1)
            else:
                bce = F.binary_cross_entropy_with_logits(flat_logits, target_f)
            dice_target = target.long() if valid is not None else target_f
            dice = self.dice(logits, dice_target.unsqueeze(1))
        else:
            target = target.long()
            bce = F.cross_entropy(
                logits, target, ignore_index=-100 if self.ignore_index is None else self.ignore_index
            )
            dice = self.dice(logits, target)
        return self.bce_weight * bce + self.dice_weight * dice
