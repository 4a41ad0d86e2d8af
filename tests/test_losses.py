import math

import pytest
import torch

from segkit.losses import build_loss


def reference_binary(logits, target, bce_weight=1.0, dice_weight=1.0):
    p = torch.sigmoid(logits.double())
    t = target.double()
    bce = -(t * torch.log(p) + (1 - t) * torch.log(1 - p)).mean()
    dice = 2 * (p * t).sum() / (p.sum() + t.sum())
    return bce_weight * bce + dice_weight * (1 - dice)


def reference_multiclass(logits, target):
    p = torch.softmax(logits.double(), dim=1)
    n_classes = logits.shape[1]
    ce = -torch.log(p.gather(1, target.unsqueeze(1))).mean()
    one_hot = torch.nn.functional.one_hot(target, n_classes).permute(0, 3, 1, 2).double()
    losses = []
    for c in range(n_classes):
        if one_hot[:, c].sum() == 0:
            continue  # smp's Dice skips classes absent from the target
        dice = 2 * (p[:, c] * one_hot[:, c]).sum() / (p[:, c].sum() + one_hot[:, c].sum())
        losses.append(1 - dice)
    return ce + sum(losses) / n_classes


def test_binary_bce_dice_matches_the_formula():
    torch.manual_seed(0)
    logits = torch.randn(3, 1, 8, 8)
    target = (torch.rand(3, 8, 8) > 0.7).long()
    loss = build_loss("bce_dice", num_classes=1, bce_weight=0.3, dice_weight=2.0)
    assert math.isclose(loss(logits, target).item(), reference_binary(logits[:, 0], target, 0.3, 2.0).item(), rel_tol=1e-5)
    assert math.isclose(loss(logits, target.float()).item(), loss(logits, target).item(), rel_tol=1e-6)


def test_multiclass_ce_dice_matches_the_formula():
    torch.manual_seed(1)
    logits = torch.randn(2, 4, 8, 8)
    target = torch.randint(0, 3, (2, 8, 8))  # class 3 absent
    loss = build_loss("bce_dice", num_classes=4)
    assert math.isclose(loss(logits, target).item(), reference_multiclass(logits, target).item(), rel_tol=1e-5)


@pytest.mark.parametrize("num_classes", [1, 3])
def test_ignore_index_pixels_do_not_count(num_classes):
    torch.manual_seed(2)
    logits = torch.randn(2, num_classes, 8, 8)
    target = torch.randint(0, max(num_classes, 2), (2, 8, 8))
    loss = build_loss("bce_dice", num_classes=num_classes, ignore_index=255)
    ignored = target.clone()
    ignored[:, :, 4:] = 255
    wild = logits.clone()
    wild[:, :, :, 4:] = 100.0  # anything on ignored pixels
    assert math.isclose(loss(logits, ignored).item(), loss(wild, ignored).item(), rel_tol=1e-5)
    # and equals the loss of the valid part alone
    assert math.isclose(
        loss(logits, ignored).item(), loss(logits[..., :4], target[..., :4]).item(), rel_tol=1e-4
    )


@pytest.mark.parametrize("num_classes", [1, 3])
def test_half_precision_logits_give_a_finite_float32_loss(num_classes):
    logits = (torch.randn(2, num_classes, 16, 16) * 40).to(torch.bfloat16)
    target = torch.randint(0, max(num_classes, 2), (2, 16, 16))
    value = build_loss("bce_dice", num_classes=num_classes)(logits, target)
    assert value.dtype == torch.float32 and torch.isfinite(value)


def test_unknown_loss():
    with pytest.raises(ValueError, match="unknown loss 'dicey'; available: bce_dice"):
        build_loss("dicey", num_classes=1)
