"""Several checkpoints: ensembles (logits averaged, each model normalised its own way),
out-of-fold scores of a cross-validation, and post-processing fitted on validation."""

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from segkit.checkpoint import checkpoint_paths, load_checkpoint
from segkit.data.io import read_mask
from segkit.evaluate import run_eval
from segkit.postprocess import ComponentTally, apply_min_sizes, read_postprocessing
from segkit.predict import run_predict
from segkit.predictor import Predictor, Preprocessing
from tests.helpers import compose_config


@pytest.fixture(scope="module")
def ckpt(trained_run):
    return trained_run / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def folds(ckpt, tmp_path_factory):
    """A 'sweep' of three fold runs: the trained checkpoint recorded as folds 0..2 of a 3-fold
    cross-validation of its data (same weights, so the pooled out-of-fold scores must equal
    one model's scores on all the images)."""
    sweep = tmp_path_factory.mktemp("cv")
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    for fold in range(3):
        checkpoint = copy.deepcopy(raw)
        checkpoint["segkit"]["data"].update(folds=3, fold=fold)
        (sweep / str(fold) / "checkpoints").mkdir(parents=True)
        torch.save(checkpoint, sweep / str(fold) / "checkpoints" / "best.ckpt")
    (sweep / "multirun.yaml").write_text("{}\n")
    return sweep


def _perturbed(module, seed):
    other = copy.deepcopy(module)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    return other


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_an_ensemble_averages_the_logits_of_models_each_normalised_its_own_way(ckpt, dtype):
    """16-bit images reach the models as float32 windows: each member normalises its own copy
    (the second member once normalised the first one's result in place)."""
    loaded = load_checkpoint(ckpt)
    top = float(np.iinfo(dtype).max)
    settings = {**loaded.preprocessing, "image_dtype": np.dtype(dtype).name}
    prep_a = Preprocessing.from_checkpoint({**settings, "normalize": {"mean": [0.4] * 3, "std": [0.2] * 3, "max_pixel_value": top}})
    prep_b = Preprocessing.from_checkpoint({**settings, "normalize": {"mean": [0.2] * 3, "std": [0.5] * 3, "max_pixel_value": top}})
    model_a, model_b = loaded.module, _perturbed(loaded.module, 1)
    image = np.random.default_rng(0).integers(0, int(top) + 1, size=(64, 64, 3), dtype=dtype)

    def logits(model, prep):
        single = Predictor(model, prep, precision="32-true")
        return torch.cat([band.clone() for _, _, band in single.iter_rows(image)], dim=1)

    expected = (logits(model_a, prep_a) + logits(model_b, prep_b)) / 2
    ensemble = Predictor([model_a, model_b], [prep_a, prep_b], precision="32-true")
    got = torch.cat([band.clone() for _, _, band in ensemble.iter_rows(image)], dim=1)
    torch.testing.assert_close(got, expected)
    # and not merely one of them
    assert not torch.allclose(got, logits(model_a, prep_a), atol=1e-4)
    labels = ensemble.predict(image).labels
    np.testing.assert_array_equal(labels, (expected[0] > 0).numpy().astype(np.uint8))


def test_models_that_cannot_be_averaged_are_refused(ckpt):
    loaded = load_checkpoint(ckpt)
    prep = Preprocessing.from_checkpoint(loaded.preprocessing)
    other = Preprocessing.from_checkpoint({**loaded.preprocessing, "image_size": [96, 96]})
    with pytest.raises(ValueError, match="image_size .*may differ in their normalisation only"):
        Predictor([loaded.module, loaded.module], [prep, other])


def test_checkpoint_paths_reads_files_globs_runs_and_sweeps(ckpt, folds, tmp_path, monkeypatch):
    fold_ckpts = [folds / str(k) / "checkpoints" / "best.ckpt" for k in range(3)]
    assert checkpoint_paths(str(folds)) == fold_ckpts  # a sweep folder: every run's best
    assert checkpoint_paths(str(folds / "1")) == [fold_ckpts[1]]  # a run folder
    assert checkpoint_paths(f"{folds}/*/checkpoints/best.ckpt") == fold_ckpts
    assert checkpoint_paths([str(fold_ckpts[2]), str(ckpt)]) == [fold_ckpts[2], ckpt]
    with pytest.raises(ValueError, match="named twice"):
        checkpoint_paths([str(fold_ckpts[0]), f"{folds}/0/checkpoints/../checkpoints/best.ckpt"])
    with pytest.raises(FileNotFoundError, match="matches no file"):
        checkpoint_paths(f"{folds}/*/checkpoints/nothing*.ckpt")
    import shutil

    from segkit.rundir import claim_run_dir, release_run_dir

    monkeypatch.chdir(folds)
    assert checkpoint_paths(1) == [Path("1/checkpoints/best.ckpt")]  # ckpt=1: Hydra hands over an int
    shutil.copy(fold_ckpts[0], tmp_path / "copy.ckpt")
    with pytest.raises(ValueError, match=f"{fold_ckpts[0]} and {tmp_path / 'copy.ckpt'} hold the same bytes"):
        checkpoint_paths([str(fold_ckpts[0]), str(tmp_path / "copy.ckpt")])
    shutil.copy(fold_ckpts[0], folds / "0" / "checkpoints" / "last.ckpt")
    try:
        with pytest.raises(ValueError, match=f"are two checkpoints of one run \\({folds / '0'}\\)"):
            checkpoint_paths([str(fold_ckpts[0]), str(folds / "0" / "checkpoints" / "last.ckpt")])
    finally:
        (folds / "0" / "checkpoints" / "last.ckpt").unlink()
    claim_run_dir(folds / "2")  # fold 2 still training: its checkpoint is of its first epochs
    try:
        with pytest.raises(ValueError, match=f"{folds / '2'} is still training \\(pid"):
            checkpoint_paths(str(folds))
        assert checkpoint_paths(str(fold_ckpts[2])) == [fold_ckpts[2]]  # named as a file: used as it is now
    finally:
        release_run_dir(folds / "2")
    # fold 1 as segkit-train leaves a run killed by a time limit (or Ctrl-C) before its last epoch:
    # its config and checkpoints, no metrics.json (written after the last epoch)
    (folds / "1" / "config.yaml").write_text("seed: 0\n")
    try:
        for spec in (folds, folds / "1"):
            with pytest.raises(ValueError, match=f"ckpt={spec}: {folds / '1'} stopped before the end of its training "
                                                 r"\(it has checkpoints but no metrics.json.*segkit-train resume="):
                checkpoint_paths(str(spec))
        assert checkpoint_paths(str(fold_ckpts[1])) == [fold_ckpts[1]]  # named as a file: used as it is now
        (folds / "1" / "metrics.json").write_text("{}\n")  # finished (or resumed to its end)
        assert checkpoint_paths(str(folds)) == fold_ckpts
    finally:
        for name in ("config.yaml", "metrics.json"):
            (folds / "1" / name).unlink(missing_ok=True)
    (folds / "3" / ".hydra").mkdir(parents=True)  # a fold that failed before its first checkpoint
    try:
        with pytest.raises(ValueError, match=r"3 have no checkpoint \(failed or still running\?\)"):
            checkpoint_paths(str(folds))
    finally:
        (folds / "3" / ".hydra").rmdir()
        (folds / "3").rmdir()


def _eval(*overrides):
    return run_eval(compose_config("eval", ["precision=32-true", "worst=2", *overrides]))


def test_folds_are_scored_out_of_fold_each_image_once(ckpt, folds, tmp_path):
    oof = _eval(f"ckpt={folds}", f"output={tmp_path / 'oof'}")
    assert oof["combine"] == "oof"
    assert oof["coverage"] == {"images_scored": oof["images"], "dataset_images": oof["images"], "folds": [0, 1, 2], "of_folds": 3}
    rows = pd.read_csv(tmp_path / "oof" / "per_image.csv")
    assert rows["name"].is_unique
    # the same weights in every fold: pooling the folds' held-out images = one model on all images
    reference = _eval(f"ckpt={ckpt}", "split=all", f"output={tmp_path / 'all'}")
    assert oof["images"] == reference["images"]
    for name, scores in reference["classes"].items():
        assert oof["classes"][name] == pytest.approx(scores)  # image means: summed in another order
    confusion = (pd.read_csv(tmp_path / d / "confusion.csv", index_col=0) for d in ("oof", "all"))
    pd.testing.assert_frame_equal(*confusion)
    by_name = (pd.read_csv(tmp_path / d / "per_image.csv").sort_values("name", ignore_index=True) for d in ("oof", "all"))
    pd.testing.assert_frame_equal(*by_name)
    assert "out-of-fold" in (tmp_path / "oof" / "report.md").read_text()


def test_an_ensemble_of_folds_is_not_scored_on_the_data_they_trained_on(folds, tmp_path):
    with pytest.raises(ValueError, match="every image of their data was trained on by one of them"):
        _eval(f"ckpt={folds}", "combine=ensemble", f"output={tmp_path / 'e'}")
    with pytest.raises(ValueError, match="combine=oof scores the held-out fold of each model: split=all"):
        _eval(f"ckpt={folds}", "split=all", "combine=oof", f"output={tmp_path / 'e'}")


def test_data_that_moved_is_named_with_data_root_alone_and_a_copy_is_still_their_data(folds, tmp_path):
    """data.root= alone re-points the folds' recorded dataset (the same scores, out-of-fold);
    the folds' ensemble on a copy of their data (another root, the same bytes) is refused."""
    import shutil

    recorded = load_checkpoint(folds / "0" / "checkpoints" / "best.ckpt").data
    moved = tmp_path / "moved"
    shutil.copytree(recorded["root"], moved)
    here = _eval(f"ckpt={folds}", f"output={tmp_path / 'here'}")
    there = _eval(f"ckpt={folds}", f"data.root={moved}", f"output={tmp_path / 'there'}")
    assert there["combine"] == "oof" and there["classes"] == here["classes"]
    dataset = recorded["_target_"].rsplit(".", 1)[0].split(".")[-1]
    with pytest.raises(ValueError, match="every image of their data was trained on by one of them"):
        _eval(f"ckpt={folds}", "combine=ensemble", f"dataset={dataset}", f"data.root={moved}", f"output={tmp_path / 'e'}")


def test_oof_refuses_checkpoints_of_different_cross_validations(folds, tmp_path):
    raw = torch.load(folds / "1" / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    raw["segkit"]["data"]["seed"] = 7
    odd = tmp_path / "odd.ckpt"
    torch.save(raw, odd)
    with pytest.raises(ValueError, match=r"differ in data\.seed"):
        _eval(f"ckpt=[{folds / '0' / 'checkpoints' / 'best.ckpt'},{odd}]", "combine=oof", f"output={tmp_path / 'e'}")


def _dice(target, prediction, c):
    t, p = target == c, prediction == c
    return 2 * (t & p).sum() / (t.sum() + p.sum())


def test_component_tally_chooses_the_size_a_brute_force_search_chooses():
    rng = np.random.default_rng(3)
    targets, predictions = [], []
    for _ in range(4):
        target = np.zeros((40, 40), np.uint8)
        target[5:20, 5:20] = 1
        target[25:35, 22:38] = 2
        prediction = target.copy()
        noise = rng.random((40, 40))
        prediction[noise < 0.03] = 1  # specks of class 1: small false components
        prediction[(noise > 0.985)] = 2
        prediction[30:33, 2:5] = 2  # a 9-pixel false blob of class 2
        targets.append(target)
        predictions.append(prediction)
    tally = ComponentTally(3)
    confusion = np.zeros((3, 3), np.int64)
    for t, p in zip(targets, predictions):
        tally.add(t, p)
        np.add.at(confusion, (t.ravel(), p.ravel()), 1)
    fitted = tally.fit(confusion, ["bg", "a", "b"])
    for c, name in ((1, "a"), (2, "b")):
        grid = [0] + [2**e for e in range(1, 12)]

        def pooled(size, c=c):
            sizes = [0] * 3
            sizes[c] = size
            cleaned = [apply_min_sizes(p, sizes) for p in predictions]
            return _dice(np.concatenate(targets), np.concatenate(cleaned), c)

        scores = {s: pooled(s) for s in grid}
        best = max(scores.values())
        chosen = fitted["classes"][name]
        assert chosen["dice_before"] == pytest.approx(scores[0])
        assert chosen["dice_after"] == pytest.approx(best)
        assert chosen["min_size"] == min(s for s in grid if scores[s] == best)
        assert chosen["min_size"] > 0  # the specks cost Dice here: something is removed
    # a gain below 0.001 is not taken: one stray pixel more or less does not make a rule
    target = np.zeros((100, 100), np.uint8)
    target[10:60, 10:60] = 1
    prediction = target.copy()
    prediction[90, 90] = 1  # one false pixel: removing it raises Dice by ~0.0002
    tiny = ComponentTally(2)
    tiny.add(target, prediction)
    confusion_tiny = np.zeros((2, 2), np.int64)
    np.add.at(confusion_tiny, (target.ravel(), prediction.ravel()), 1)
    kept = tiny.fit(confusion_tiny, ["bg", "a"])["classes"]["a"]
    assert kept["min_size"] == 0 and kept["dice_after"] == kept["dice_before"] < _dice(target, target, 1)
    # the confusion after post-processing is exact
    sizes = [0, fitted["classes"]["a"]["min_size"], fitted["classes"]["b"]["min_size"]]
    after = np.zeros((3, 3), np.int64)
    for t, p in zip(targets, predictions):
        np.add.at(after, (t.ravel(), apply_min_sizes(p, sizes).ravel()), 1)
    np.testing.assert_array_equal(fitted["confusion_after"], after)


def test_apply_min_sizes_removes_only_the_small_components_of_each_class():
    labels = np.zeros((10, 10), np.uint8)
    labels[0:3, 0:3] = 1  # 9 px
    labels[6, 6] = 1  # 1 px
    labels[8, 0:2] = 2  # 2 px
    labels[5:7, 0] = 1  # 2 px, touches nothing
    out = apply_min_sizes(labels, [0, 3, 0])
    expected = labels.copy()
    expected[6, 6] = 0
    expected[5:7, 0] = 0
    np.testing.assert_array_equal(out, expected)
    assert labels[6, 6] == 1  # the input is left alone
    diagonal = np.eye(3, dtype=np.uint8)  # corner-touching: one component of 3 (8-connected), three of 1 (4)
    assert apply_min_sizes(diagonal, [0, 2], connectivity=8).sum() == 3
    assert apply_min_sizes(diagonal, [0, 2], connectivity=4).sum() == 0


def test_postprocessing_is_fitted_by_eval_and_applied_by_predict(ckpt, folds, tmp_path):
    out = tmp_path / "oof"
    summary = _eval(f"ckpt={folds}", "postprocess=fit", f"output={out}")
    spec = json.loads((out / "postprocessing.json").read_text())
    assert spec["class_names"] == ["background", "ship"] and set(spec["min_size"]) == {"background", "ship"}
    assert spec["fitted_on"]["combine"] == "oof"
    assert summary["postprocessing"]["classes"]["ship"]["min_size"] == spec["min_size"]["ship"]
    assert "Post-processing fitted on these images" in (out / "report.md").read_text()
    # forced sizes: predict and eval apply exactly apply_min_sizes
    spec["min_size"]["ship"] = 64
    forced = tmp_path / "forced.json"
    forced.write_text(json.dumps(spec))
    root = load_checkpoint(ckpt).data["root"]
    inputs = tmp_path / "in"
    inputs.mkdir()
    for source in sorted(Path(root).glob("train_v2/*.jpg"))[:3]:
        (inputs / source.name).write_bytes(source.read_bytes())
    common = [f"ckpt={ckpt}", f"input={inputs}", "precision=32-true", "save_masks=true"]
    run_predict(compose_config("predict", [*common, f"output={tmp_path / 'raw'}"]))
    run_predict(compose_config("predict", [*common, f"output={tmp_path / 'pp'}", f"postprocess={forced}"]))
    for mask in sorted((tmp_path / "raw" / "masks").iterdir()):
        raw = read_mask(mask)
        np.testing.assert_array_equal(read_mask(tmp_path / "pp" / "masks" / mask.name), apply_min_sizes(raw, [0, 64]))
    bad = dict(spec, class_names=["background", "car"])
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"fitted for the classes \['background', 'car'\]"):
        read_postprocessing(tmp_path / "bad.json", ["background", "ship"])


def test_an_ensemble_of_folds_is_refused_on_their_root_named_again(ckpt, folds, tmp_path):
    root = load_checkpoint(ckpt).data["root"]
    with pytest.raises(ValueError, match="every image of their data was trained on by one of them"):
        _eval(f"ckpt={folds}", "dataset=synthetic", f"data.root={root}", "split=all", f"output={tmp_path / 'e'}")


def test_missing_folds_and_limits_are_said(folds, tmp_path, caplog):
    two = f"ckpt=[{folds / '0' / 'checkpoints' / 'best.ckpt'},{folds / '2' / 'checkpoints' / 'best.ckpt'}]"
    with caplog.at_level("WARNING", logger="segkit.evaluate"):
        summary = _eval(two, f"output={tmp_path / 'two'}")
    assert summary["coverage"]["folds"] == [0, 2] and summary["images"] < summary["coverage"]["dataset_images"]
    assert f"out-of-fold scores cover {summary['images']} of the {summary['coverage']['dataset_images']} images: " \
           "fold(s) 1 of 3 missing" in caplog.text
    assert _eval(f"ckpt={folds}", "limit=7", f"output={tmp_path / 'limited'}")["images"] == 7  # 7 in all, not per fold


def test_a_monitor_naming_a_class_the_model_lacks_is_refused_before_training():
    from segkit.stage import check_monitor
    from tests.helpers import conv1x1_module

    module = conv1x1_module(classes=1)  # binary: background, foreground
    check_monitor("val/dice/foreground", module)
    check_monitor("val/dice", module)
    with pytest.raises(ValueError, match=r"monitor.metric=val/dice/membrane: the model's classes are background, "
                                         r"foreground, so it logs val/dice/background, val/dice/foreground"):
        check_monitor("val/dice/membrane", module)
