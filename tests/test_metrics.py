import math

import numpy as np
import pytest
import torch

from segkit.metrics import SegmentationMetrics, logits_to_labels


def numpy_scores(preds, target, n_classes, ignore=None):
    preds, target = preds.numpy().ravel(), target.numpy().ravel()
    if ignore is not None:
        keep = target != ignore
        preds, target = preds[keep], target[keep]
    dice, iou = [], []
    for c in range(n_classes):
        p, t = preds == c, target == c
        inter, total, union = (p & t).sum(), p.sum() + t.sum(), (p | t).sum()
        dice.append(2 * inter / total if total else math.nan)
        iou.append(inter / union if union else math.nan)
    return np.array(dice), np.array(iou)


def test_multiclass_epoch_scores_match_numpy():
    torch.manual_seed(0)
    batches = [(torch.randint(0, 4, (2, 9, 9)), torch.randint(0, 4, (2, 9, 9))) for _ in range(3)]
    metric = SegmentationMetrics(num_classes=4, class_names=["bg", "a", "b", "c"])
    for preds, target in batches:
        metric.update(preds, target)
    scores = metric.compute()
    preds = torch.cat([b[0] for b in batches])
    target = torch.cat([b[1] for b in batches])
    dice, iou = numpy_scores(preds, target, 4)
    for i, name in enumerate(["bg", "a", "b", "c"]):
        assert math.isclose(scores[f"dice/{name}"].item(), dice[i], rel_tol=1e-6)
        assert math.isclose(scores[f"iou/{name}"].item(), iou[i], rel_tol=1e-6)
    assert math.isclose(scores["dice"].item(), dice.mean(), rel_tol=1e-6)
    assert math.isclose(scores["iou"].item(), iou.mean(), rel_tol=1e-6)
    no_bg = SegmentationMetrics(num_classes=4, include_background=False)
    for preds_b, target_b in batches:
        no_bg.update(preds_b, target_b)
    assert math.isclose(no_bg.compute()["dice"].item(), dice[1:].mean(), rel_tol=1e-6)


def test_binary_reports_the_foreground():
    preds = torch.tensor([[[1, 1, 0, 0]]])
    target = torch.tensor([[[1, 0, 0, 0]]])
    metric = SegmentationMetrics(num_classes=1)
    metric.update(preds, target)
    scores = metric.compute()
    assert math.isclose(scores["dice"].item(), 2 / 3, rel_tol=1e-6)
    assert math.isclose(scores["iou"].item(), 1 / 2, rel_tol=1e-6)
    assert math.isclose(scores["dice/background"].item(), 0.8, rel_tol=1e-6)


def test_absent_class_is_nan_and_left_out_of_the_mean_and_ignore_index():
    preds = torch.tensor([[[0, 1, 1, 2]]])
    target = torch.tensor([[[0, 1, 255, 1]]])
    metric = SegmentationMetrics(num_classes=4, ignore_index=255)
    metric.update(preds, target)
    scores = metric.compute()
    dice, _ = numpy_scores(preds, target, 4, ignore=255)
    assert math.isnan(scores["dice/class3"].item()) and math.isnan(dice[3])
    assert math.isclose(scores["dice"].item(), np.nanmean(dice), rel_tol=1e-6)
    assert math.isclose(scores["dice/class1"].item(), 2 / 3, rel_tol=1e-6)


def test_reset_starts_a_new_epoch():
    metric = SegmentationMetrics(num_classes=1)
    metric.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.ones(1, 2, 2, dtype=torch.long))
    assert metric.compute()["dice"].item() == 0.0
    metric.reset()
    metric.update(torch.ones(1, 2, 2, dtype=torch.long), torch.ones(1, 2, 2, dtype=torch.long))
    assert metric.compute()["dice"].item() == 1.0


def test_logits_to_labels():
    binary = torch.tensor([[[[-1.0, 0.1], [2.0, -0.1]]]])
    assert logits_to_labels(binary).tolist() == [[[0, 1], [1, 0]]]
    assert logits_to_labels(binary, threshold=0.6).tolist() == [[[0, 0], [1, 0]]]
    multi = torch.tensor([[[[0.0]], [[2.0]], [[1.0]]]])
    assert logits_to_labels(multi).tolist() == [[[1]]]


def test_class_names_must_match():
    with pytest.raises(ValueError, match="expected 2 class names"):
        SegmentationMetrics(num_classes=1, class_names=["a", "b", "c"])
