"""segkit-eval: scores equal a numpy reference, worst-N are the worst, the report is complete."""

import json
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest
from hydra.utils import instantiate

from segkit.checkpoint import load_checkpoint
from segkit.data.io import read_mask
from segkit.evaluate import EvalScores, run_eval
from segkit.predict import run_predict
from tests.helpers import compose_config, run_segkit


def numpy_dice_iou(target, prediction, cls, ignore=None):
    valid = np.ones(target.shape, bool) if ignore is None else target != ignore
    t, p = (target == cls) & valid, (prediction == cls) & valid
    tp, fp, fn = (t & p).sum(), (~t & p).sum(), (t & ~p).sum()
    if tp + fp + fn == 0:
        return None, None
    return 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)


def test_eval_scores_equal_a_numpy_reference():
    rng = np.random.default_rng(0)
    names = ["background", "a", "b", "c"]
    scores = EvalScores(names, ignore_index=255, include_background=False)
    targets, preds = [], []
    for i in range(5):
        target = rng.integers(0, 3, size=(20, 30)).astype(np.uint8)  # class c never in the targets
        target[:2] = 255
        pred = np.where(rng.random((20, 30)) < 0.7, target, rng.integers(0, 4, size=(20, 30))).astype(np.uint8)
        pred[target == 255] = 3
        targets.append(target)
        preds.append(pred)
        score = scores.add(f"img{i}", target, pred)
        per_class = [numpy_dice_iou(target, pred, c, 255)[0] for c in range(1, 4)]
        assert score == pytest.approx(np.mean([1.0 if d is None else d for d in per_class]))
    summary = scores.summary()
    all_t, all_p = np.concatenate(targets), np.concatenate(preds)
    for c, name in enumerate(names):
        dice, iou = numpy_dice_iou(all_t, all_p, c, 255)
        assert summary["classes"][name]["dice"] == pytest.approx(dice)
        assert summary["classes"][name]["iou"] == pytest.approx(iou)
    assert summary["classes"]["c"]["target_px"] == 0 and summary["classes"]["c"]["dice"] == 0.0  # predicted, never true
    expected_mean = np.mean([numpy_dice_iou(all_t, all_p, c, 255)[0] for c in (1, 2, 3)])
    assert summary["mean"]["dice"] == pytest.approx(expected_mean)
    valid = all_t != 255
    assert summary["pixel_accuracy"] == pytest.approx((all_t[valid] == all_p[valid]).mean())


@pytest.fixture(scope="module")
def evaluated(trained_run, tmp_path_factory):
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    out = tmp_path_factory.mktemp("eval") / "report"
    cfg = compose_config("eval", [f"ckpt={ckpt}", f"output={out}", "worst=3", "precision=32-true", "threshold=0.49"])
    return ckpt, out, run_eval(cfg)


def test_eval_matches_predict_plus_numpy(evaluated, tmp_path):
    ckpt, out, summary = evaluated
    loaded = load_checkpoint(ckpt)
    datamodule = instantiate(loaded.data, _convert_="all")
    items = datamodule.items()
    val = [items[i] for i in datamodule.split(items)[1]]
    dataset = datamodule.raw_dataset(val)
    (tmp_path / "val").mkdir()
    for item in val:
        shutil.copy(item.image, tmp_path / "val" / item.image.name)
    run_predict(compose_config("predict", [f"ckpt={ckpt}", f"input={tmp_path / 'val'}", f"output={tmp_path / 'pred'}",
                                           "precision=32-true", "threshold=0.49"]))
    targets, preds, per_image = [], [], {}
    for i, item in enumerate(val):
        target = dataset.load(i)[1]
        pred = read_mask(tmp_path / "pred" / "masks" / f"{item.image.stem}.png")
        targets.append(target)
        preds.append(pred)
        dice = numpy_dice_iou(target, pred, 1)[0]
        per_image[item.name] = 1.0 if dice is None else dice
    dice, iou = numpy_dice_iou(np.concatenate(targets), np.concatenate(preds), 1)
    assert summary["images"] == len(val)
    assert summary["classes"]["ship"]["dice"] == pytest.approx(dice)
    assert summary["classes"]["ship"]["iou"] == pytest.approx(iou)
    assert summary["mean"]["dice"] == pytest.approx(dice)  # binary: the mean is the foreground class
    csv = pd.read_csv(out / "per_image.csv")
    assert dict(zip(csv.name, csv.dice)) == pytest.approx(per_image, abs=1e-6)
    worst = sorted(per_image, key=lambda n: (per_image[n], list(per_image).index(n)))[:3]
    assert [w["name"] for w in summary["worst"]] == worst


def test_report_and_pictures(evaluated):
    _, out, summary = evaluated
    report = (out / "report.md").read_text()
    for link in ["confusion.png", "confusion.csv", "per_image.csv", *[w["panel"] for w in summary["worst"]]]:
        assert f"({link})" in report and (out / link).stat().st_size > 0
    assert "| ship |" in report and "| **mean** |" in report
    for w in summary["worst"]:
        panel = cv2.imread(str(out / w["panel"]))
        assert panel is not None and panel.shape[1] > 2 * panel.shape[0]  # four tiles side by side
    confusion = pd.read_csv(out / "confusion.csv", index_col=0)
    assert list(confusion.columns) == ["background", "ship"]
    assert confusion.to_numpy().sum() == sum(c["target_px"] for c in summary["classes"].values())
    saved = json.loads((out / "scores.json").read_text())
    assert saved["classes"]["ship"]["dice"] == summary["classes"]["ship"]["dice"]


def test_eval_refuses_to_overwrite_a_report(evaluated):
    ckpt, out, _ = evaluated
    before = (out / "report.md").read_text()
    with pytest.raises(FileExistsError, match="report.md"):
        run_eval(compose_config("eval", [f"ckpt={ckpt}", f"output={out}"]))
    assert (out / "report.md").read_text() == before


def test_eval_cli_with_a_named_dataset(trained_run, tmp_path):
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    root = load_checkpoint(ckpt).data["root"]
    result = run_segkit("segkit-eval", f"ckpt={ckpt}", "dataset=synthetic", f"data.root={root}", "data.image_size=64",
                        "split=all", "limit=5", "worst=2", f"output={tmp_path / 'r'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "mean (foreground)" in result.stdout + result.stderr
    assert len(pd.read_csv(tmp_path / "r" / "per_image.csv")) == 5
    assert len(list((tmp_path / "r" / "worst").glob("*.png"))) == 2
    result = run_segkit("segkit-eval", f"ckpt={ckpt}", "dataset=oilseep", f"data.root={tmp_path}", f"output={tmp_path / 'x'}", cwd=tmp_path)
    assert result.returncode != 0 and "the dataset has 8 classes (data.num_classes) but" in result.stderr
