"""segkit-eval: scores equal a numpy reference, worst-N are the worst, the report is complete."""

import json
import re
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from hydra.utils import instantiate

from datamodules.dota import DotaDataModule, parse_dota_labels, rasterize_dota
from segkit.checkpoint import load_checkpoint
from segkit.data.io import conform_channels, read_image, read_mask
from segkit.data.tiling import patch_grid
from segkit.evaluate import EvalScores, run_eval
from segkit.predict import run_predict
from segkit.predictor import build_predictor
from tests.fixtures.dota import write_dota
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
        # the legend names the class by its overlay colour (the ship's yellow), below the tiles
        assert has_colour(panel[int(panel.shape[0] * 0.8):, :, ::-1], (255, 210, 0))
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


def test_overwrite_replaces_the_worst_panels_too(evaluated, tmp_path):
    """overwrite=true replaces the report: the earlier report's panels do not stay beside it."""
    ckpt, out, _ = evaluated
    copy = tmp_path / "report"
    shutil.copytree(out, copy)
    assert len(list((copy / "worst").glob("*.png"))) == 3
    summary = run_eval(compose_config("eval", [f"ckpt={ckpt}", f"output={copy}", "worst=1", "overwrite=true",
                                               "precision=32-true"]))
    assert sorted(p.name for p in (copy / "worst").glob("*.png")) == [summary["worst"][0]["panel"].split("/")[-1]]


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


def test_an_unwritable_output_fails_before_any_work(trained_run, tmp_path, monkeypatch):
    import segkit.evaluate

    (tmp_path / "afile").write_text("a file, not a folder: no one (root neither) can create a folder below it")
    out = tmp_path / "afile" / "report"
    monkeypatch.setattr(segkit.evaluate, "instantiate", lambda *a, **k: pytest.fail("the dataset was opened"))
    with pytest.raises(PermissionError, match=f"cannot write to {out} .*output="):
        run_eval(compose_config("eval", [f"ckpt={trained_run / 'checkpoints' / 'last.ckpt'}", f"output={out}"]))


def dota_checkpoint(datamodule, path):
    """A segkit checkpoint of an untrained small U-Net for ``datamodule`` (DOTA, native resolution),
    as ``segkit-train`` writes one."""
    from segkit.module import SegmentationModule

    torch.manual_seed(0)
    module = SegmentationModule(
        model={"name": "mobilenet_unet", "encoder_depth": 3, "decoder_channels": [32, 16, 8]}, loss={"name": "dice"},
        optimizer={"_target_": "torch.optim.SGD", "lr": 0.1}, num_classes=16, ignore_index=255,
    ).eval()
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(checkpoint)
    checkpoint["segkit"]["preprocessing"].update(datamodule.preprocessing())
    checkpoint["segkit"]["data"] = datamodule.data_config()
    torch.save(checkpoint, path)
    return path


def test_dota_is_scored_per_scene_at_its_resolution_not_per_patch(tmp_path):
    shapes = {"P0000": (180, 260), "P0001": (90, 70), "P0002": (150, 150)}
    root = tmp_path / "dota"
    write_dota(root, shapes=tuple(shapes.values()))
    scene = read_image(root / "images" / "P0001.png")  # a grayscale scene, as a few DOTA scenes are
    cv2.imwrite(str(root / "images" / "P0001.png"), cv2.cvtColor(scene, cv2.COLOR_RGB2GRAY))
    datamodule = DotaDataModule(root=str(root), patch_size=64, overlap=16, num_workers=0, normalize=None,
                                cache_dir=str(tmp_path / "work"))
    ckpt = dota_checkpoint(datamodule, tmp_path / "dota.ckpt")
    cfg = compose_config("eval", [f"ckpt={ckpt}", f"output={tmp_path / 'report'}", "split=all", "worst=1",
                                  "precision=32-true", "tile=128", "overlap=32"])
    summary = run_eval(cfg)
    patches = [item.group for item in datamodule.items()]
    assert patches.count("P0000") == len(patch_grid(180, 260, 64, 16)) > 1  # cut into overlapping patches...
    per_image = pd.read_csv(tmp_path / "report" / "per_image.csv")
    assert summary["images"] == 3  # ...but reported as one image each
    assert [(r.name, r.height, r.width) for r in per_image.itertuples()] == [(n, *s) for n, s in shapes.items()]
    # the scenes predicted whole (sliding window) and compared with their labels rasterised at full size
    predictor = build_predictor(load_checkpoint(ckpt), cfg)
    expected = np.zeros((16, 16), np.int64)
    for name, shape in shapes.items():
        image = conform_channels(read_image(root / "images" / f"{name}.png"), 3, name, "")
        target = rasterize_dota(parse_dota_labels(root / "labelTxt" / f"{name}.txt")[0], shape, name)
        labels = predictor.predict(image).labels
        expected += np.bincount(target.ravel().astype(np.int64) * 16 + labels.ravel(), minlength=256).reshape(16, 16)
    confusion = pd.read_csv(tmp_path / "report" / "confusion.csv", index_col=0).to_numpy()
    np.testing.assert_array_equal(confusion, expected)
    assert confusion.sum() == sum(h * w for h, w in shapes.values())  # every scene pixel counted once


# ------------------------------------------------------------------ legends
DOTA_NAMES = ["background", "plane", "ship", "storage-tank", "baseball-diamond", "tennis-court", "basketball-court",
              "ground-track-field", "harbor", "bridge", "large-vehicle", "small-vehicle", "helicopter", "roundabout",
              "soccer-ball-field", "swimming-pool"]


def has_colour(rgb, colour, tolerance=1, at_least=4):
    """``rgb`` holds at least ``at_least`` pixels within ``tolerance`` of ``colour`` in every channel."""
    close = np.all(np.abs(rgb.astype(int) - np.array(colour)) <= tolerance, axis=-1)
    return int(close.sum()) >= at_least


def blocks(shape, placed):
    labels = np.zeros(shape, np.int64)
    for cls, (y, x) in placed.items():
        labels[y:y + 40, x:x + 40] = cls
    return labels


def changed_box(a, b):
    """The bounding box (y0, y1, x0, x1) of the pixels where two pictures differ."""
    ys, xs = np.nonzero(np.any(a != b, axis=-1))
    return ys.min(), ys.max() + 1, xs.min(), xs.max() + 1


def test_overlay_legend_shows_the_classes_present_by_colour_and_name():
    from segkit.visualize import overlay, palette

    image = np.full((320, 400, 3), 110, np.uint8)
    labels = blocks(image.shape[:2], {3: (20, 30), 7: (200, 300), 12: (250, 40)})  # top-right corner is free
    plain = overlay(image, labels, 16)
    drawn = overlay(image, labels, 16, class_names=DOTA_NAMES)
    assert drawn.shape == plain.shape == (320, 400, 3)  # the PNG keeps the image's size
    y0, y1, x0, x1 = changed_box(plain, drawn)
    assert y0 < 20 and x1 > 380 and (y1 - y0) < 160 and (x1 - x0) < 200  # a box in the free corner
    legend = drawn[y0:y1, x0:x1]
    colours = palette(16)
    for cls in (3, 7, 12):
        assert has_colour(legend, colours[cls], tolerance=0, at_least=25), cls  # a swatch of each present class
    for cls in (1, 5, 9, 15):
        assert not has_colour(legend, colours[cls], tolerance=0), cls  # absent classes are not listed
    assert has_colour(legend, (255, 255, 255), tolerance=60, at_least=30)  # white text on the dark box
    # the names are written: other names change the box, and only the box
    renamed = overlay(image, labels, 16, class_names=[n.upper() for n in DOTA_NAMES])
    assert not np.array_equal(renamed[y0:y1, x0:x1], legend)
    assert np.array_equal(np.delete(renamed, np.s_[y0:y1], axis=0), np.delete(drawn, np.s_[y0:y1], axis=0))


def test_overlay_legend_lists_every_class_when_few_and_fits_small_images():
    from segkit.visualize import overlay, palette

    image = np.full((64, 64, 3), 90, np.uint8)
    empty = np.zeros((64, 64), np.int64)
    drawn = overlay(image, empty, 2, class_names=["background", "ship"])  # no ship predicted: still named
    assert drawn.shape == (64, 64, 3)
    assert has_colour(drawn, palette(2)[1], tolerance=0)
    # many classes and none present: nothing to explain, the picture is untouched
    assert np.array_equal(overlay(image, empty, 16, class_names=DOTA_NAMES), overlay(image, empty, 16))
    # all 15 foreground classes on a small picture: the legend fits, the rest summed up
    small = np.full((96, 96, 3), 90, np.uint8)
    everything = np.arange(96 * 96).reshape(96, 96) % 16
    assert overlay(small, everything, 16, class_names=DOTA_NAMES).shape == (96, 96, 3)


def test_error_panel_has_a_class_legend(tmp_path):
    from segkit.visualize import error_panel, palette

    image = np.full((128, 128, 3), 100, np.uint8)
    target = blocks((128, 128), {2: (10, 10), 9: (70, 70)})
    prediction = blocks((128, 128), {2: (15, 10), 14: (70, 70)})
    error_panel(tmp_path / "named.png", image, target, prediction, 16, "t", class_names=DOTA_NAMES)
    error_panel(tmp_path / "plain.png", image, target, prediction, 16, "t")
    named = cv2.imread(str(tmp_path / "named.png"))[:, :, ::-1]
    plain = cv2.imread(str(tmp_path / "plain.png"))[:, :, ::-1]
    assert named.shape[0] > named.shape[1] / 4 and named.shape[1] > 2 * named.shape[0]
    band = named[int(named.shape[0] * 0.78):]  # below the tiles: the class row, then the error colours
    colours = palette(16)
    for cls in (2, 9, 14):  # in the ground truth or the prediction
        assert has_colour(band, colours[cls], at_least=40), cls
    assert not has_colour(band, colours[5], at_least=40)
    # without names the classes are still told apart, as "class <n>"; with names the text differs
    assert plain.shape == named.shape and not np.array_equal(plain, named)


def test_eval_panels_and_predict_overlays_are_given_the_class_names(trained_run, tmp_path, monkeypatch):
    """segkit-eval and segkit-predict hand the checkpoint's class names to the pictures' legends."""
    import segkit.visualize as visualize

    given = {}

    def spy(name, function):
        def record(*args, **kwargs):
            given.setdefault(name, []).append(kwargs.get("class_names"))
            return function(*args, **kwargs)
        monkeypatch.setattr(visualize, name, record)

    spy("error_panel", visualize.error_panel)
    spy("overlay", visualize.overlay)
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    run_eval(compose_config("eval", [f"ckpt={ckpt}", f"output={tmp_path / 'report'}", "limit=2", "worst=1"]))
    assert given.pop("error_panel") == [["background", "ship"]]
    given.clear()
    image = tmp_path / "in" / "a.png"
    image.parent.mkdir()
    cv2.imwrite(str(image), np.full((64, 64, 3), 80, np.uint8))
    run_predict(compose_config("predict", [f"ckpt={ckpt}", f"input={image}", f"output={tmp_path / 'pred'}",
                                           "save_overlays=true"]))
    assert given["overlay"] == [["background", "ship"]]
    drawn = cv2.imread(str(tmp_path / "pred" / "overlays" / "a.png"))[:, :, ::-1]
    assert drawn.shape == (64, 64, 3) and has_colour(drawn, visualize.palette(2)[1], tolerance=0)  # the legend's swatch


def test_an_unreadable_file_stops_eval_saying_why_and_what_to_do(trained_run, tmp_path):
    """eval scores every image of its split: leaving an unreadable one out would change the
    scores unseen, so it stops, naming the file and the way out."""
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    root = tmp_path / "data"
    shutil.copytree(load_checkpoint(ckpt).data["root"], root)
    bad = sorted((root / "train_v2").glob("*.jpg"))[0]
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # a truncated download: its header reads
    with pytest.raises(ValueError, match=rf"^{re.escape(str(bad))}: .* — segkit-eval scores every image of the split, so "
                                         r"a file it cannot read stops it .*: fix or remove the file; segkit-prepare"):
        run_eval(compose_config("eval", [f"ckpt={ckpt}", f"data.root={root}", "split=all", "worst=0",
                                         f"output={tmp_path / 'r'}", "precision=32-true"]))
