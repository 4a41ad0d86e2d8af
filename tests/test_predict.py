"""segkit-predict end to end: a checkpoint alone, masks/overlays/probabilities/submissions, bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

from segkit.checkpoint import load_checkpoint
from segkit.data.io import read_image, read_mask
from segkit.inference import window_layout
from segkit.predict import collect_inputs, run_predict
from segkit.rundir import RunDirectoryBusy
from tests.fixtures.reference import naive_rle_decode
from tests.helpers import compose_config, run_segkit


@pytest.fixture(scope="module")
def ckpt(trained_run):
    return trained_run / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def images(tmp_path_factory, ckpt):
    """Six inputs of three sizes (one larger than the tile used below), one of them a TIFF."""
    folder = tmp_path_factory.mktemp("inputs")
    data_root = Path(load_checkpoint(ckpt).data["root"])
    sources = sorted(data_root.glob("train_v2/*.jpg"))[:4]  # 64x64 synthetic JPEGs
    for source in sources:
        (folder / source.name).write_bytes(source.read_bytes())
    big = np.random.default_rng(0).integers(0, 256, size=(300, 200, 3), dtype=np.uint8)
    cv2.imwrite(str(folder / "big.png"), big)
    tifffile.imwrite(folder / "scene.tif", big[:90, :70])
    return folder


def predict(ckpt, input_, output, *overrides):
    cfg = compose_config("predict", [f"ckpt={ckpt}", f"input={input_}", f"output={output}", "precision=32-true", *overrides])
    return run_predict(cfg)


def test_the_checkpoint_alone_rebuilds_model_and_preprocessing(ckpt):
    loaded = load_checkpoint(ckpt)
    prep = loaded.preprocessing
    assert prep["image_size"] == [64, 64] and prep["in_channels"] == 3 and prep["size_multiple"] == 32
    assert prep["normalize"]["mean"] == [0.485, 0.456, 0.406] and prep["class_names"] == ["background", "ship"]
    assert loaded.data["_target_"] == "datamodules.synthetic.SyntheticDataModule"
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert torch.equal(loaded.module.state_dict()["net.net.segmentation_head.0.weight"], raw["state_dict"]["net.net.segmentation_head.0.weight"])


def test_masks_overlays_and_probabilities(ckpt, images, tmp_path):
    out = tmp_path / "out"
    summary = predict(ckpt, images, out, "save_overlays=true", "save_probabilities=true", "tile=128", "overlap=32", "binary_value=255")
    names = sorted(p.stem for p in images.iterdir())
    assert sorted(p.stem for p in (out / "masks").iterdir()) == names
    assert (out / "masks" / "scene.tif").is_file()  # TIFF in, TIFF out
    for path in images.iterdir():
        image = read_image(path)
        mask_path = out / "masks" / (path.stem + (".tif" if path.suffix == ".tif" else ".png"))
        mask = read_mask(mask_path)
        assert mask.shape == image.shape[:2] and mask.dtype == np.uint8
        assert set(np.unique(mask).tolist()) <= {0, 255}
        probs = np.load(out / "probabilities" / f"{path.stem}.npy")
        assert probs.shape == (1, *image.shape[:2]) and probs.dtype == np.float16
        disagree = (mask == 255) != (probs[0] > 0.5)
        assert (np.abs(probs[0][disagree].astype(np.float32) - 0.5) <= 1e-3).all()  # float16 rounding only
        overlay = cv2.imread(str(out / "overlays" / f"{path.stem}.png"))
        assert overlay.shape == (*image.shape[:2], 3)
    assert summary["images"] == 6 and summary["outputs"]["masks"] == 6
    assert summary["windows"] == 6  # trained on 64x64: every image is resized to one 64x64 window
    assert json.loads((out / "predict.json").read_text())["settings"]["tile"] == 128
    assert not [p for p in out.rglob("*.tmp")]


def test_a_native_resolution_model_tiles_large_images(ckpt, images, tmp_path):
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    checkpoint["segkit"]["preprocessing"]["image_size"] = None  # as if trained on native-size images
    native = tmp_path / "native.ckpt"
    torch.save(checkpoint, native)
    summary = predict(native, images / "big.png", tmp_path / "out", "tile=128", "overlap=32", "batch_size=2")
    assert summary["windows"] == window_layout(300, 200, 128, 32, 32).n_windows == 6
    assert read_mask(tmp_path / "out" / "masks" / "big.png").shape == (300, 200)
    whole = predict(native, images / "big.png", tmp_path / "whole", "tile=512")
    assert whole["windows"] == 1  # 300x200 padded to 320x224, one window


def test_outputs_are_never_overwritten_without_overwrite(ckpt, images, tmp_path):
    out = tmp_path / "out"
    (out / "masks").mkdir(parents=True)
    mine = out / "masks" / "big.png"
    mine.write_bytes(b"the user's own file")
    with pytest.raises(FileExistsError, match="big.png") as err:
        predict(ckpt, images, out)
    assert "overwrite=true" in str(err.value)
    assert mine.read_bytes() == b"the user's own file"
    assert not (out / "predict.json").exists()
    predict(ckpt, images, out, "overwrite=true")
    assert read_mask(mine).shape == (300, 200)


def test_airbus_submission_decodes_to_the_written_masks(ckpt, images, tmp_path):
    out = tmp_path / "sub"
    summary = predict(ckpt, images, out, "format=airbus", "save_masks=true", "threshold=0.45")
    frame = pd.read_csv(out / "submission.csv", dtype=str, keep_default_na=False)
    assert list(frame.columns) == ["ImageId", "EncodedPixels"]
    assert set(frame.ImageId) == {p.name for p in images.iterdir()}
    assert summary["submission"]["rows"] == len(frame)
    for image_id, group in frame.groupby("ImageId"):
        stem = image_id.rsplit(".", 1)[0]
        mask_path = next((out / "masks").glob(f"{stem}.*"))
        mask = read_mask(mask_path) > 0
        union = np.zeros_like(mask)
        for rle in group.EncodedPixels:
            if rle:
                union |= naive_rle_decode(rle, mask.shape, "F").astype(bool)
        np.testing.assert_array_equal(union, mask)
        if not mask.any():
            assert len(group) == 1 and group.EncodedPixels.item() == ""


def test_an_interrupted_submission_run_is_resumed_to_the_same_files(ckpt, images, tmp_path, monkeypatch):
    """A run killed after 2 of 4 images keeps their masks and submission rows (journal, one line
    per image; a half-written last line is dropped). resume=true predicts only the other 2 and
    gives the same submission and masks as a run never interrupted."""
    import segkit.predict

    small = tmp_path / "inputs"
    small.mkdir()
    for source in sorted(images.glob("*.jpg")):
        (small / source.name).write_bytes(source.read_bytes())
    images = small
    whole = tmp_path / "whole"
    predict(ckpt, images, whole, "format=airbus", "save_masks=true")
    out = tmp_path / "out"
    real, calls = segkit.predict.load_input, []

    def dies_at_the_third(file, **kwargs):
        calls.append(file.name)
        if len(calls) == 3:
            raise KeyboardInterrupt  # what a Ctrl-C or a job's time limit leaves
        return real(file, **kwargs)

    monkeypatch.setattr(segkit.predict, "load_input", dies_at_the_third)
    with pytest.raises(KeyboardInterrupt, match=f"resume=true \\(the same command\\) continues into {out}"):
        predict(ckpt, images, out, "format=airbus", "save_masks=true", "readers=0")
    journal = out / "submission.partial.jsonl"
    assert len(journal.read_text().splitlines()) == 2 and not (out / "submission.csv").exists()
    with journal.open("a") as handle:
        handle.write('{"id": "cut-off')  # the kill came mid-line
    monkeypatch.setattr(segkit.predict, "load_input", real)

    with pytest.raises(FileExistsError, match="an interrupted segkit-predict run left .* resume=true continues it"):
        predict(ckpt, images, out, "format=airbus", "save_masks=true")
    with pytest.raises(ValueError, match=r"resume=true: .* other settings: threshold \(was not set \(the checkpoint's own\), now 0.3\)"):
        predict(ckpt, images, out, "format=airbus", "save_masks=true", "resume=true", "threshold=0.3")
    with pytest.raises(FileNotFoundError, match="holds no segkit-predict run to continue"):
        predict(ckpt, images, tmp_path / "empty", "resume=true")

    predicted = []
    monkeypatch.setattr(segkit.predict, "load_input", lambda file, **kw: predicted.append(file.name) or real(file, **kw))
    summary = predict(ckpt, images, out, "format=airbus", "save_masks=true", "resume=true")
    assert len(predicted) == 2 and not set(predicted) & set(calls[:2])
    assert summary["images"] == 4 and summary["resumed"] == 2 and summary["submission"]["images"] == 4
    assert (out / "submission.csv").read_bytes() == (whole / "submission.csv").read_bytes()
    assert not journal.exists()
    # resuming a run that finished predicts nothing and rewrites nothing
    stamp = (out / "submission.csv").stat().st_mtime_ns
    predicted.clear()
    assert predict(ckpt, images, out, "format=airbus", "save_masks=true", "resume=true")["resumed"] == 2
    assert predicted == [] and (out / "submission.csv").stat().st_mtime_ns == stamp
    for mask in (whole / "masks").iterdir():
        assert (out / "masks" / mask.name).read_bytes() == mask.read_bytes()
    # an image added to the input after the run finished is not in its CSV: said, not "nothing to do"
    added = images / "added_later.jpg"
    added.write_bytes(next(images.glob("*.jpg")).read_bytes())
    with pytest.raises(ValueError, match=r"(?s)resume=true: the run into .* finished, but 1 image\(s\) of the input are "
                                         r"not in its submission.csv \(added to the input since\?\):\n  added_later.jpg"
                                         r".*overwrite=true predicts every image again"):
        predict(ckpt, images, out, "format=airbus", "save_masks=true", "resume=true")
    assert (out / "submission.csv").stat().st_mtime_ns == stamp


def test_resuming_a_finished_mask_run_rewrites_nothing_and_a_live_run_is_named(ckpt, images, tmp_path):
    out = tmp_path / "out"
    first = predict(ckpt, images, out)
    stamps = {path: path.stat().st_mtime_ns for path in out.rglob("*") if path.is_file()}
    again = predict(ckpt, images, out, "resume=true")
    assert again == first  # the finished run's own summary, not a new one of 0 images
    assert {path: path.stat().st_mtime_ns for path in out.rglob("*") if path.is_file()} == stamps

    # another segkit-predict still writing there: its files are not an interrupted run's
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from segkit.rundir import claim_run_dir; "
                               "claim_run_dir(sys.argv[1]); print('held', flush=True); time.sleep(120)", str(out)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for extra in ((), ("resume=true",), ("overwrite=true",)):
            with pytest.raises(RunDirectoryBusy, match=f"{out} is in use by another segkit run \\(pid {holder.pid} "):
                predict(ckpt, images, out, *extra)
    finally:
        holder.kill()
        holder.wait()


def test_carvana_submission(ckpt, images, tmp_path):
    out = tmp_path / "sub"
    predict(ckpt, images, out, "format=carvana", "save_masks=true")
    frame = pd.read_csv(out / "submission.csv", dtype=str, keep_default_na=False)
    assert list(frame.columns) == ["img", "rle_mask"] and len(frame) == 6
    for img, rle in zip(frame.img, frame.rle_mask):
        mask = read_mask(next((out / "masks").glob(img.rsplit(".", 1)[0] + ".*"))) > 0
        np.testing.assert_array_equal(naive_rle_decode(rle, mask.shape, "C").astype(bool) if rle else np.zeros_like(mask), mask)


def test_inputs_file_folder_glob(images, tmp_path):
    assert collect_inputs(str(images / "big.png")) == [images / "big.png"]
    assert len(collect_inputs(str(images))) == 6
    assert [p.name for p in collect_inputs(str(images / "*.tif"))] == ["scene.tif"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no images"):
        collect_inputs(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        collect_inputs(str(tmp_path / "nothing"))
    (tmp_path / "two").mkdir()
    for name in ("a.png", "a.jpg"):
        cv2.imwrite(str(tmp_path / "two" / name), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="would write the same outputs"):
        collect_inputs(str(tmp_path / "two"))


def test_hidden_files_and_folders_are_not_inputs(tmp_path):
    for name in ("a.jpg", "sub/b.png", "._a.jpg", ".DS_Store", ".thumbnails/c.png", "sub/._b.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert collect_inputs(str(tmp_path)) == [tmp_path / "a.jpg"]
    assert collect_inputs(str(tmp_path), recursive=True) == [tmp_path / "a.jpg", tmp_path / "sub" / "b.png"]
    assert collect_inputs(str(tmp_path / "**" / "*.png")) == [tmp_path / "sub" / "b.png"]
    assert collect_inputs(str(tmp_path / "._a.jpg")) == [tmp_path / "._a.jpg"]  # named on its own: taken
    (tmp_path / "only").mkdir()
    appledouble(tmp_path / "only" / "._x.jpg")
    with pytest.raises(FileNotFoundError, match="holds no images"):
        collect_inputs(str(tmp_path / "only"))


def test_cmyk_jpeg_and_grayscale_png_are_predicted_as_training_reads_them(ckpt, images, tmp_path):
    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    rgb = read_image(sorted(images.glob("*.jpg"))[0])
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg")  # PIL: 4 bands; OpenCV (training): RGB
    cv2.imwrite(str(tmp_path / "cmyk_decoded.png"), read_image(folder / "cmyk.jpg")[:, :, ::-1])
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    cv2.imwrite(str(folder / "gray.png"), gray)
    cv2.imwrite(str(tmp_path / "gray_as_rgb.png"), np.repeat(gray[:, :, None], 3, axis=2))
    summary = predict(ckpt, folder, tmp_path / "out")
    assert summary["images"] == 2 and summary["failed"] == []
    for name, same_as in [("cmyk", "cmyk_decoded.png"), ("gray", "gray_as_rgb.png")]:
        mask = read_mask(tmp_path / "out" / "masks" / f"{name}.png")
        reference = predict(ckpt, tmp_path / same_as, tmp_path / f"ref_{name}")
        assert reference["images"] == 1 and mask.shape == rgb.shape[:2]
        np.testing.assert_array_equal(mask, read_mask(tmp_path / f"ref_{name}" / "masks" / f"{Path(same_as).stem}.png"))


def test_a_colour_image_for_a_one_channel_model_is_a_clear_error(ckpt, tmp_path):
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    checkpoint["segkit"]["preprocessing"]["in_channels"] = 1  # as if trained on grayscale images
    gray_model = tmp_path / "gray.ckpt"
    torch.save(checkpoint, gray_model)
    colour = np.random.default_rng(1).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "photo.png"), colour)
    with pytest.raises(ValueError, match=r"photo.png: image is in colour \(3 channels that differ\), expected 1 channel — "
                                         r"the model was trained on 1-channel images: convert the file"):
        predict(gray_model, tmp_path / "photo.png", tmp_path / "out")
    assert not (tmp_path / "out" / "masks").exists()


def appledouble(path: Path) -> None:
    """A macOS resource fork as ``cp`` / unzip leave it beside ``x.jpg``: ``._x.jpg``, no image."""
    path.write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        \x00\x02" + bytes(4000))


def test_hidden_and_unreadable_files_are_passed_over_and_reported(ckpt, images, tmp_path, caplog):
    folder = tmp_path / "in"
    folder.mkdir()
    good = sorted(images.glob("*.jpg"))[:2]
    for source in good:
        (folder / source.name).write_bytes(source.read_bytes())
    appledouble(folder / f"._{good[0].name}")
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(2000))
    data = good[0].read_bytes()
    (folder / "broken.jpg").write_bytes(data[: len(data) // 2])  # a download cut short
    with caplog.at_level("INFO", logger="segkit.predict"):
        summary = predict(ckpt, folder, tmp_path / "out")
    assert summary["images"] == 2 and summary["outputs"]["masks"] == 2
    assert sorted(p.name for p in (tmp_path / "out" / "masks").iterdir()) == sorted(p.stem + ".png" for p in good)
    assert [f["file"] for f in summary["failed"]] == [str(folder / "broken.jpg")]
    assert "truncated JPEG" in summary["failed"][0]["error"]
    assert json.loads((tmp_path / "out" / "predict.json").read_text())["failed"] == summary["failed"]
    lines = [r.getMessage() for r in caplog.records]
    assert len([m for m in lines if "broken.jpg" in m]) == 1  # named once, on one line
    assert "1 image(s) could not be read: see" in lines[-1] and "predict.json" in lines[-1]
    assert not any("._" in m or "DS_Store" in m for m in lines)  # hidden files are not inputs
    with pytest.raises(ValueError, match="broken.jpg: truncated JPEG"):  # the only input: an error
        predict(ckpt, folder / "broken.jpg", tmp_path / "one")
    assert not (tmp_path / "one" / "predict.json").exists()
    (folder / "b.png").write_bytes(b"not a png")
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    for name in ("broken.jpg", "b.png"):
        (only_bad / name).write_bytes((folder / name).read_bytes())
    with pytest.raises(ValueError, match=r"none of the 2 input images could be predicted:\n  .*b.png.*\n  .*broken.jpg"):
        predict(ckpt, only_bad, tmp_path / "none")


def test_an_unwritable_output_fails_before_any_prediction(ckpt, images, tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("a file, not a folder: no one (root neither) can create a folder below it")
    out = tmp_path / "afile" / "out"
    result = run_segkit("segkit-predict", f"ckpt={ckpt}", f"input={images}", f"output={out}", cwd=tmp_path)
    assert result.returncode != 0
    assert any(f"cannot write to {out}" in line and "output=" in line for line in result.stderr.splitlines()), result.stderr
    import segkit.predict

    monkeypatch.setattr(segkit.predict, "build_predictor", lambda *a: pytest.fail("prediction started"))
    with pytest.raises(PermissionError, match=f"cannot write to {out} .*output="):
        predict(ckpt, images, out)


def test_checkpoints_that_are_not_ours_are_refused(tmp_path):
    not_torch = tmp_path / "notes.ckpt"
    not_torch.write_text("hello")
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        load_checkpoint(not_torch)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "epoch": 3}, foreign)
    with pytest.raises(ValueError, match="not a segkit checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(FileNotFoundError, match="checkpoint file not found"):
        load_checkpoint(tmp_path / "missing.ckpt")


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_a_checkpoint_carrying_pickled_code_is_refused(tmp_path):
    evil = tmp_path / "evil.ckpt"
    torch.save({"segkit": {"preprocessing": {}}, "state_dict": {}, "payload": Payload()}, evil)
    with pytest.raises(ValueError, match="refused: the checkpoint holds objects other than tensors"):
        load_checkpoint(evil)


def test_cli_errors_are_clear(ckpt, tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_segkit("segkit-predict", f"ckpt={ckpt}", f"input={tmp_path / 'empty'}", f"output={tmp_path / 'o'}", cwd=tmp_path)
    assert result.returncode != 0 and "the folder holds no images" in result.stderr
    result = run_segkit("segkit-predict", f"ckpt={tmp_path / 'x.ckpt'}", f"input={tmp_path}", f"output={tmp_path / 'o'}", cwd=tmp_path)
    assert result.returncode != 0 and "checkpoint file not found" in result.stderr
    assert not list(tmp_path.glob("outputs")) and not (tmp_path / "o").exists()  # nothing written
