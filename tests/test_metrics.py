"""SegmentationMetrics against a numpy confusion-matrix reference."""

import math

import numpy as np
import pytest
import torch

from segkit.metrics import SegmentationMetrics, confusion_matrices, logits_to_labels


def np_confusion(preds, target, k, ignore=None):
    preds, target = np.asarray(preds).ravel(), np.asarray(target).ravel()
    if ignore is not None:
        keep = target != ignore
        preds, target = preds[keep], target[keep]
    matrix = np.zeros((k, k), np.int64)
    for t, p in zip(target, preds):
        matrix[t, p] += 1
    return matrix


def np_scores(matrix, empty):
    tp = np.diag(matrix).astype(float)
    fp, fn = matrix.sum(0) - tp, matrix.sum(1) - tp
    union = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(union > 0, 2 * tp / (2 * tp + fp + fn), empty)
        iou = np.where(union > 0, tp / union, empty)
    return dice, iou


def batches(k, sizes, seed=0, absent=()):
    """Random label batches of different sizes; classes in ``absent`` never appear."""
    rng = np.random.default_rng(seed)
    allowed = [c for c in range(k) if c not in absent]
    out = []
    for b, (h, w) in enumerate(sizes):
        target = rng.choice(allowed, size=(b % 3 + 1, h, w))
        preds = np.where(rng.random(target.shape) < 0.6, target, rng.choice(allowed, size=target.shape))
        out.append((torch.from_numpy(preds), torch.from_numpy(target)))
    return out


SIZES = [(5, 7), (3, 4), (8, 2), (6, 6)]


@pytest.mark.parametrize("include_background", [False, True])
@pytest.mark.parametrize("ignore", [None, 255])
def test_dataset_level_scores_match_numpy(include_background, ignore):
    data = batches(5, SIZES, seed=1, absent=(4,))
    # class 3 absent from the first batch only, class 4 from the whole epoch
    data[0][1][data[0][1] == 3] = 0
    if ignore is not None:
        data[1][1][:, 0, :] = ignore
    metric = SegmentationMetrics(5, ignore_index=ignore, include_background=include_background)
    for preds, target in data:
        metric.update(preds, target)
    scores = metric.compute()
    matrix = sum(np_confusion(p, t, 5, ignore) for p, t in data)
    np.testing.assert_array_equal(metric.confusion().numpy(), matrix)
    dice, iou = np_scores(matrix, np.nan)
    assert math.isnan(dice[4]) and math.isnan(scores["dice/class4"].item())  # absent all epoch: no score
    for c in range(4):
        assert scores[f"dice/class{c}"].item() == pytest.approx(dice[c], rel=1e-6)
        assert scores[f"iou/class{c}"].item() == pytest.approx(iou[c], rel=1e-6)
    first = 0 if include_background else 1
    assert scores["dice"].item() == pytest.approx(np.nanmean(dice[first:]), rel=1e-6)
    assert scores["iou"].item() == pytest.approx(np.nanmean(iou[first:]), rel=1e-6)


def test_per_image_aggregation_is_the_mean_of_image_scores():
    data = batches(3, SIZES, seed=2)
    # an image where class 2 is neither in the target nor predicted: left out of class 2's mean
    data[2][0][0][data[2][0][0] == 2] = 0
    data[2][1][0][data[2][1][0] == 2] = 0
    metric = SegmentationMetrics(3, aggregation="image")
    per_image = []
    for preds, target in data:
        metric.update(preds, target)
        for p, t in zip(preds, target):
            per_image.append(np_scores(np_confusion(p, t, 3), np.nan))  # NaN: class in neither
    scores = metric.compute()
    dice = np.array([d for d, _ in per_image])
    iou = np.array([i for _, i in per_image])
    assert np.isnan(dice[:, 2]).sum() == 1
    for c in range(3):
        assert scores[f"dice/class{c}"].item() == pytest.approx(np.nanmean(dice[:, c]), rel=1e-6)
        assert scores[f"iou/class{c}"].item() == pytest.approx(np.nanmean(iou[:, c]), rel=1e-6)
    assert scores["dice"].item() == pytest.approx(np.nanmean(dice[:, 1:], axis=0).mean(), rel=1e-6)


def test_a_class_that_never_occurs_does_not_lift_the_per_image_mean():
    """4 classes, class 3 in no target and no prediction: it has no score and the mean is
    over the classes that occur (scoring it 1 on every image gave 0.665 instead of 0.498)."""
    rng = np.random.default_rng(7)
    target = torch.as_tensor(rng.integers(0, 3, (4, 16, 16)))
    preds = torch.where(torch.as_tensor(rng.random((4, 16, 16)) < 0.4), torch.as_tensor(rng.integers(0, 3, (4, 16, 16))), target)
    metric = SegmentationMetrics(4, aggregation="image")
    metric.update(preds, target)
    scores = metric.compute()
    per_image = np.array([np_scores(np_confusion(p, t, 4), np.nan)[0] for p, t in zip(preds, target)])
    assert np.isnan(scores["dice/class3"].item())
    assert scores["dice"].item() == pytest.approx(np.nanmean(per_image[:, 1:3], axis=0).mean(), rel=1e-6)
    assert scores["dice"].item() < np.nanmean(np.nan_to_num(per_image[:, 1:], nan=1.0), axis=0).mean()


def test_binary_reports_the_foreground():
    preds = torch.tensor([[[1, 1, 0, 0]], [[0, 0, 0, 0]]])
    target = torch.tensor([[[1, 0, 0, 0]], [[0, 0, 0, 0]]])
    dataset = SegmentationMetrics(num_classes=1)
    dataset.update(preds, target)
    assert dataset.compute()["dice"].item() == pytest.approx(2 / 3)
    assert dataset.compute()["iou"].item() == pytest.approx(1 / 2)
    assert dataset.compute()["dice/background"].item() == pytest.approx(2 * 6 / (2 * 6 + 1))  # 6 TP, 1 FN
    image = SegmentationMetrics(num_classes=1, aggregation="image")
    image.update(preds, target)
    assert image.compute()["dice"].item() == pytest.approx((2 / 3 + 1.0) / 2)  # empty image: Dice 1


def test_state_merges_like_a_ddp_sync():
    """Two ranks' states summed give what one process seeing everything gives."""
    data = batches(4, SIZES, seed=3)
    whole, rank0, rank1 = (SegmentationMetrics(4, aggregation=a) for a in ("image", "image", "image"))
    for i, (p, t) in enumerate(data):
        whole.update(p, t)
        (rank0 if i % 2 else rank1).update(p, t)
    rank0.merge_state(rank1)
    for key, val in whole.compute().items():
        assert rank0.compute()[key].item() == pytest.approx(val.item(), rel=1e-9, nan_ok=True), key
    assert all(fx is not None for fx in whole._reductions.values())


def test_reset_starts_a_new_epoch():
    metric = SegmentationMetrics(num_classes=1)
    metric.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.ones(1, 2, 2, dtype=torch.long))
    assert metric.compute()["dice"].item() == 0.0
    metric.reset()
    metric.update(torch.ones(1, 2, 2, dtype=torch.long), torch.ones(1, 2, 2, dtype=torch.long))
    assert metric.compute()["dice"].item() == 1.0


def test_out_of_range_labels_are_named():
    with pytest.raises(ValueError, match="target holds class 7, outside 0..2"):
        confusion_matrices(torch.zeros(1, 2, 2), torch.full((1, 2, 2), 7), 3)
    confusion_matrices(torch.zeros(1, 2, 2), torch.full((1, 2, 2), 255), 3, ignore_index=255)


def test_the_confusion_used_on_a_gpu_waits_for_no_device(monkeypatch):
    """What the metric runs per validation batch is fixed-size tensor work: no int()/bool()/
    item(), no boolean-mask indexing, no data-sized bincount (each a host sync on CUDA, about
    8 per step before). Counted here on a CPU; equal to a bincount reference, with the labels
    outside the classes counted instead of raised."""
    from segkit.metrics import confusion_and_outside

    generator = torch.Generator().manual_seed(4)
    preds = torch.randint(0, 4, (3, 9, 11), generator=generator)
    target = torch.randint(0, 4, (3, 9, 11), generator=generator)
    target[0, 0, :3] = 255  # ignored
    target[1, 2, :2] = 9  # outside the classes
    syncs = []
    for name in ("__bool__", "__int__", "__float__", "__index__", "item", "tolist", "nonzero", "numpy"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _o=original, _n=name, **k: syncs.append(_n) or _o(self, *a, **k))
    original_getitem = torch.Tensor.__getitem__

    def getitem(self, key, _o=original_getitem):
        if isinstance(key, torch.Tensor) and key.dtype == torch.bool:
            syncs.append("boolean index")
        return _o(self, key)

    monkeypatch.setattr(torch.Tensor, "__getitem__", getitem)
    monkeypatch.setattr(torch, "bincount", lambda *a, **k: syncs.append("bincount") or pytest.fail("bincount"))
    counts, outside = confusion_and_outside(preds, target, 4, ignore_index=255)
    assert syncs == []
    monkeypatch.undo()
    keep = (target != 255) & (target < 4)
    index = (torch.arange(3)[:, None, None] * 4 + target) * 4 + preds
    reference = torch.bincount(index[keep], minlength=3 * 16).reshape(3, 4, 4)
    assert torch.equal(counts, reference) and int(outside) == 2
    metric = SegmentationMetrics(num_classes=4)
    metric.outside += outside  # as update() does on a GPU, where it raises nothing per batch
    with pytest.raises(ValueError, match="2 pixel\\(s\\) of this epoch have a target or prediction outside 0..3"):
        metric.compute()


def test_logits_to_labels():
    binary = torch.tensor([[[[-1.0, 0.1], [2.0, -0.1]]]])
    assert logits_to_labels(binary).tolist() == [[[0, 1], [1, 0]]]
    assert logits_to_labels(binary, threshold=0.6).tolist() == [[[0, 0], [1, 0]]]
    multi = torch.tensor([[[[0.0]], [[2.0]], [[1.0]]]])
    assert logits_to_labels(multi).tolist() == [[[1]]]


def test_bad_arguments():
    with pytest.raises(ValueError, match="expected 2 class names"):
        SegmentationMetrics(num_classes=1, class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="aggregation must be 'dataset' or 'image'"):
        SegmentationMetrics(num_classes=3, aggregation="pixel")
