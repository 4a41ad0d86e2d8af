"""make quality's runner, kept working: each quality experiment for a few steps on tiny data
in the real formats, with the baselines checked against independent arithmetic."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from bench.quality import EXPERIMENTS, format_table, run_experiment
from tests.fixtures.oilseep import write_oilseep

QUICK = ["trainer.max_epochs=1", "data.num_workers=0", "logger=csv"]


def write_membrane_like(root, names=("0", "1"), size=256):
    """ISBI-style slices: image/<n>.png grayscale, label/<n>.png with 0 = membrane, 255 = cell."""
    rng = np.random.default_rng(0)
    (root / "image").mkdir(parents=True)
    (root / "label").mkdir()
    labels = {}
    for name in names:
        label = np.full((size, size), 255, np.uint8)
        for k in range(0, size, 37):  # a grid of thin membranes
            label[:, k : k + 2] = 0
            label[k + int(rng.integers(0, 5)) : k + 3, :] = 0
        image = np.where(label == 0, 40, 200).astype(np.uint8) + rng.integers(0, 20, label.shape).astype(np.uint8)
        cv2.imwrite(str(root / "image" / f"{name}.png"), image)
        cv2.imwrite(str(root / "label" / f"{name}.png"), label)
        labels[name] = label
    return labels


@pytest.mark.slow
def test_membrane_quality_run_and_its_baselines(tmp_path):
    labels = write_membrane_like(tmp_path / "membrane")
    result = run_experiment(EXPERIMENTS["membrane_unet"], tmp_path / "membrane", tmp_path / "out", [*QUICK, "data.val_list=[1]"])
    assert (result.eval_dir / "scores.json").is_file() and list((result.eval_dir / "worst").glob("*.png"))
    assert set(result.scores["classes"]) == {"membrane", "cell"}
    membrane = int((labels["1"] == 0).sum())
    total = labels["1"].size
    zero = result.baselines["all class 0"]["classes"]
    assert zero["membrane"]["dice"] == pytest.approx(2 * membrane / (membrane + total))  # everything called membrane
    assert zero["cell"]["dice"] == 0.0
    # the training slice's own labels are the per-pixel prior: scored against the validation slice
    prior = result.baselines["per-pixel prior"]["classes"]["membrane"]
    truth, guess = labels["1"] == 0, labels["0"] == 0
    assert prior["dice"] == pytest.approx(2 * (truth & guess).sum() / (truth.sum() + guess.sum()))
    table = "\n".join(format_table(result))
    assert "| membrane |" in table and "| **mean** |" in table and "per-pixel prior Dice" in table


@pytest.mark.slow
def test_oilseep_quality_run(tmp_path):
    write_oilseep(tmp_path / "oilseep", n=3, size=64, images_dir="images", masks_dir="masks")  # 2 train, 1 val
    result = run_experiment(EXPERIMENTS["oilseep_unet"], tmp_path / "oilseep", tmp_path / "out", QUICK)
    assert len(result.scores["classes"]) == 8 and result.scores["images"] == 1
    assert result.baselines["all class 0"]["mean"]["dice"] == 0.0  # no foreground predicted anywhere
    assert "experiment=oilseep_unet" in result.command and "data.images_dir=images" in result.command


@pytest.mark.slow
def test_a_planned_cross_validation_is_scored_out_of_fold_with_pooled_baselines(tmp_path):
    import dataclasses
    import json

    write_oilseep(tmp_path / "oilseep", n=4, size=64, images_dir="images", masks_dir="masks")  # 3 scenes
    experiment = dataclasses.replace(EXPERIMENTS["oilseep_planned_cv"], folds=2,
                                     plan=(*EXPERIMENTS["oilseep_planned_cv"].plan, "epochs=1"))
    result = run_experiment(experiment, tmp_path / "oilseep", tmp_path / "out", ["data.num_workers=0", "logger=csv"])
    assert (result.run_dir / "plans" / "experiment" / "oilseep_planned.yaml").is_file()
    assert result.scores["combine"] == "oof" and result.scores["images"] == 4  # every tile once
    assert result.scores["coverage"]["folds"] == [0, 1]
    assert result.baselines["all class 0"]["images"] == 4 and result.baselines["per-pixel prior"]["images"] == 4
    assert json.loads((result.eval_dir / "postprocessing.json").read_text())["fitted_on"]["combine"] == "oof"
    assert "segkit-plan dataset=oilseep" in result.command and "-m --config-dir" in result.command
    table = "\n".join(format_table(result))
    assert "Post-processing fitted on these same predictions" in table
