"""A new user's first contact: real layouts, partial downloads, stray files, occupied and
unwritable folders, bad files mid-epoch (issue 15). Each test reproduces a case that crashed
or was silently misread before its fix."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.airbus import AirbusDataModule
from datamodules.carvana import CarvanaDataModule
from datamodules.dota import DotaDataModule, parse_dota_labels
from datamodules.folder import FolderDataModule
from segkit.data.io import image_size, read_image
from segkit.errors import DataFileError, RunDirectoryBusy
from segkit.rundir import LOCK_FILE, _unique, claim_run_dir, release_run_dir
from tests.fixtures.airbus import write_airbus
from tests.fixtures.carvana import write_carvana
from tests.fixtures.dota import write_dota
from tests.fixtures.folder import write_folder
from tests.helpers import run_segkit

SMALL = ["data.image_size=64", "data.batch_size=4", "data.num_workers=0"]


def no_traceback(result: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "HYDRA_FULL_ERROR=1 for a complete stack trace" not in result.stderr


# ----------------------------------------------------------------------- 1. folder without class names
def test_folder_trains_without_class_names_as_the_readme_says(tmp_path):
    """Lightning refused the module's and the datamodule's differing ``class_names``."""
    write_folder(tmp_path / "mine", n=6, encoding="binary")
    result = run_segkit("segkit-train", "dataset=folder", f"data.root={tmp_path / 'mine'}", "data.mask_encoding=binary",
                        "trainer.fast_dev_run=2", f"hydra.run.dir={tmp_path / 'run'}", *SMALL, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "val/dice/foreground" in metrics["final"]


def test_module_class_names_reach_the_folder_datamodule(tmp_path):
    from segkit.stage import agree_class_names
    from tests.helpers import compose_config

    cfg = compose_config("train", ["dataset=folder", "module.class_names=[sea,ship]"])
    assert agree_class_names(cfg) == {"class_names": ["sea", "ship"]}
    cfg = compose_config("train", ["dataset=folder", "module.class_names=[sea,ship]", "data.class_names=[a,b]"])
    with pytest.raises(ValueError, match=r"module.class_names \['sea', 'ship'\] and data.class_names \['a', 'b'\] disagree"):
        agree_class_names(cfg)


# ----------------------------------------------------------------------- 2. a run owns its directory
HOLDER = """
import sys, time
from segkit.rundir import claim_run_dir
claim_run_dir(sys.argv[1])
print("held", flush=True)
time.sleep(120)
"""


@pytest.fixture()
def held_dir(tmp_path):
    """A run directory held by another live process (killed -9 at the end)."""
    directory = tmp_path / "same"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    yield directory, holder
    holder.kill()
    holder.wait()


def test_a_directory_held_by_a_live_run_is_refused_and_freed_when_it_dies(held_dir):
    directory, holder = held_dir
    with pytest.raises(RunDirectoryBusy, match=rf"{directory} is in use by another segkit run \(pid {holder.pid} on"):
        claim_run_dir(directory)
    holder.send_signal(signal.SIGKILL)  # a crash leaves no stale lock: the kernel drops it with the process
    holder.wait()
    assert claim_run_dir(directory) == directory.resolve()
    assert f"pid {os.getpid()}" in (directory / LOCK_FILE).read_text()
    release_run_dir(directory)


def test_a_second_train_into_a_held_directory_writes_nothing_there(held_dir, tmp_path):
    directory, _ = held_dir
    result = run_segkit("segkit-train", "trainer.fast_dev_run=1", f"hydra.run.dir={directory}", cwd=tmp_path)
    assert result.returncode == 1
    assert "is in use by another segkit run" in result.stderr and "hydra.run.dir=<folder>" in result.stderr
    no_traceback(result)
    assert sorted(p.name for p in directory.iterdir()) == [LOCK_FILE]  # no .hydra/, train.log or config of its own


def test_default_run_directories_started_in_the_same_second_differ(tmp_path):
    first = _unique(tmp_path / "2026-01-01_10-00-00")
    second = _unique(tmp_path / "2026-01-01_10-00-00")
    assert first.name == "2026-01-01_10-00-00" and second.name == "2026-01-01_10-00-00-2"


# ----------------------------------------------------------------------- 3. check validates sources
def test_airbus_check_on_a_fresh_folder_reads_the_rle_not_the_cache(tmp_path):
    airbus = write_airbus(tmp_path / "airbus", n_ship=3, n_background=3)
    cache = tmp_path / "cache"
    result = run_segkit("segkit-prepare", "dataset=airbus", f"data.root={airbus.root}", f"data.cache_dir={cache}",
                        "check=true", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every file checked, no problems" in result.stdout
    assert not cache.exists()  # a check builds nothing
    assert not (tmp_path / "outputs").exists()  # and leaves no run directory behind

    lines = airbus.csv_path.read_text().splitlines()
    victim = next(n for n, line in enumerate(lines) if n and not line.endswith(","))
    image_id = lines[victim].split(",")[0]
    lines[victim] = f"{image_id},999999 5"  # a run past the end of the 64x64 image
    airbus.csv_path.write_text("\n".join(lines) + "\n")
    result = run_segkit("segkit-prepare", "dataset=airbus", f"data.root={airbus.root}", f"data.cache_dir={cache}",
                        "check=true", cwd=tmp_path)
    assert result.returncode == 1
    assert f"train_ship_segmentations_v2.csv:{victim + 1}: '{image_id}': bad RLE" in result.stdout
    assert "file not found" not in result.stdout


def test_carvana_csv_check_builds_no_cache(tmp_path):
    write_carvana(tmp_path / "c", n_cars=2, views=2, csv=True)
    dm = CarvanaDataModule(root=str(tmp_path / "c"), mask_source="csv", cache_dir=str(tmp_path / "cache"), num_workers=0)
    assert dm.check() == []
    assert not (tmp_path / "cache").exists()


# ----------------------------------------------------------------------- 4. a bad file mid-epoch
def _airbus_with_bad_ship_image(tmp_path):
    """Airbus data whose ship image #1 (outside the setup sample of 8 of 32) is a truncated JPEG,
    and whose ship image #2 is a grayscale JPEG."""
    airbus = write_airbus(tmp_path / "airbus")
    ids = list(airbus.ships)
    bad = airbus.root / "train_v2" / ids[1]
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])
    gray = airbus.root / "train_v2" / ids[2]
    cv2.imwrite(str(gray), cv2.imread(str(gray), cv2.IMREAD_GRAYSCALE))
    return airbus, bad, gray


def test_a_worker_decode_error_is_one_line_naming_the_file(tmp_path):
    airbus, bad, _ = _airbus_with_bad_ship_image(tmp_path)
    dm = AirbusDataModule(root=str(airbus.root), image_size=64, batch_size=4, num_workers=1, val_fraction=0.1,
                          cache_dir=str(tmp_path / "cache"))
    dm.prepare_data()
    dm.setup("fit")  # the setup sample does not include the bad file
    with pytest.raises(DataFileError) as caught:
        for loader in (dm.train_dataloader(), dm.val_dataloader()):
            for _ in loader:
                pass
    message = str(caught.value)
    assert message.startswith(f"{bad}: truncated JPEG") and "\n" not in message
    assert "data.on_bad_file=skip" in message
    assert "Traceback" in caught.value.worker_traceback  # kept for a bug report


def test_grayscale_jpeg_in_an_rgb_dataset_is_converted(tmp_path):
    airbus, _, gray = _airbus_with_bad_ship_image(tmp_path)
    dm = AirbusDataModule(root=str(airbus.root), image_size=None, num_workers=0, cache_dir=str(tmp_path / "cache"))
    dataset = dm.raw_dataset([i for i in dm.items() if i.image == gray])
    image = dataset.load_image(0)
    assert image.shape == (64, 64, 3)
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
    np.testing.assert_array_equal(image[..., 0], cv2.imread(str(gray), cv2.IMREAD_GRAYSCALE))


def test_colour_in_a_one_channel_dataset_suggests_what_the_datamodule_accepts(tmp_path):
    write_folder(tmp_path / "f", n=4, image_format="png")
    dm = FolderDataModule(root=str(tmp_path / "f"), num_classes=3, in_channels=1, num_workers=0)
    with pytest.raises(ValueError, match=r"image is in colour \(3 channels that differ\), expected 1 channel — .*data.in_channels"):
        dm.raw_dataset(dm.items()).load_image(0)
    airbus = AirbusDataModule(root=str(tmp_path), num_workers=0)
    assert "data.in_channels" not in airbus.channel_fix()  # Airbus refuses any other in_channels


def test_bad_files_stop_training_with_one_line_or_are_skipped_and_counted(tmp_path):
    airbus, bad, _ = _airbus_with_bad_ship_image(tmp_path)
    common = ["dataset=airbus", f"data.root={airbus.root}", f"data.cache_dir={tmp_path / 'cache'}", "trainer.max_epochs=1",
              "data.image_size=64", "data.batch_size=4", "data.num_workers=1", "data.val_fraction=0.1"]
    result = run_segkit("segkit-train", *common, f"hydra.run.dir={tmp_path / 'stop'}", cwd=tmp_path)
    assert result.returncode == 1
    assert f"segkit-train: error: {bad}: truncated JPEG" in result.stderr
    no_traceback(result)
    assert f"segkit-train: error: {bad}: truncated JPEG" in (tmp_path / "stop" / "train.log").read_text()  # the log says why it ended

    result = run_segkit("segkit-train", *common, "data.on_bad_file=skip", f"hydra.run.dir={tmp_path / 'skip'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "skip" / "metrics.json").read_text())
    assert [line.split(": ")[0] for line in metrics["skipped_files"]] == [str(bad)]
    assert f"data.on_bad_file=skip: skipped {bad}" in (tmp_path / "skip" / "train.log").read_text()


# ----------------------------------------------------------------------- 5. partial downloads
def test_real_airbus_csv_against_a_partial_download(tmp_path):
    """The real sample: a 29-row excerpt of the Kaggle CSV naming 10 images, 3 of them present."""
    from tests.conftest import realdata

    root = realdata("airbus")
    (tmp_path / "a" / "train_v2").mkdir(parents=True)
    for image in root.glob("*.jpg"):
        (tmp_path / "a" / "train_v2" / image.name).symlink_to(image)
    (tmp_path / "a" / "train_ship_segmentations_v2.csv").symlink_to(root / "train_ship_segmentations_v2.csv")
    dm = AirbusDataModule(root=str(tmp_path / "a"), num_workers=0, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=r"(?s)7 file\(s\) in airbus data .* \(3 complete item\(s\)\):.*"
                                         r"train_ship_segmentations_v2.csv:\d+: ImageId .* has no image.*data.missing=skip"):
        dm.items()
    dm = AirbusDataModule(root=str(tmp_path / "a"), num_workers=0, cache_dir=str(tmp_path / "cache"), missing="skip")
    assert sorted(i.name for i in dm.items()) == sorted(p.name for p in root.glob("*.jpg"))


def test_dota_labels_without_images_are_skipped_on_request(tmp_path, caplog):
    write_dota(tmp_path / "d")
    (tmp_path / "d" / "images" / "P0002.png").unlink()  # only part of the images downloaded
    options = dict(root=str(tmp_path / "d"), patch_size=64, overlap=16, cache_dir=str(tmp_path / "cache"), num_workers=0)
    with pytest.raises(ValueError, match=r"(?s)1 file\(s\) in dota data .*P0002.txt: label file has no image.*data.missing=skip"):
        DotaDataModule(**options).prepare_dataset()
    dm = DotaDataModule(**options, missing="skip")
    with caplog.at_level("WARNING"):
        dm.prepare_dataset()
    assert "data.missing=skip: left out 1 file(s)" in caplog.text
    assert {i.group for i in dm.items()} == {"P0000", "P0001"}


def test_hidden_files_are_not_data(tmp_path):
    write_folder(tmp_path / "f", n=4)
    (tmp_path / "f" / "images" / "._tile_000.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (tmp_path / "f" / "masks" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    dm = FolderDataModule(root=str(tmp_path / "f"), num_classes=3, num_workers=0)
    assert len(dm.items()) == 4 and dm.check() == []


# ----------------------------------------------------------------------- 6. masks silently misread
def test_a_carvana_gif_with_a_reversed_palette_reads_the_same_mask(tmp_path):
    masks = write_carvana(tmp_path / "c", n_cars=2, views=2)
    name, mask = next(iter(masks.items()))
    gif = tmp_path / "c" / "train_masks" / name.replace(".jpg", "_mask.gif")
    reversed_palette = Image.fromarray((1 - mask).astype(np.uint8), mode="P")
    reversed_palette.putpalette([255, 255, 255, 0, 0, 0] + [0, 0, 0] * 254)  # looks identical
    reversed_palette.save(gif)
    dm = CarvanaDataModule(root=str(tmp_path / "c"), num_workers=0, cache_dir=str(tmp_path / "cache"))
    dataset = dm.raw_dataset([i for i in dm.items() if i.name == name])
    np.testing.assert_array_equal(dataset.load_mask(0), mask)


def _jpeg_with_orientation(image: np.ndarray, orientation: int) -> bytes:
    buffer = io.BytesIO()
    pil = Image.fromarray(image)
    exif = pil.getexif()
    exif[0x0112] = orientation
    pil.save(buffer, "JPEG", quality=98, exif=exif.tobytes())
    return buffer.getvalue()


def test_exif_rotated_photo_is_read_as_shown_and_matches_its_upright_mask(tmp_path):
    """A phone photo stored landscape with EXIF orientation 6 (shown portrait); its mask was
    drawn on the picture as shown. Before, the image was read as stored: a size error (or,
    when square, a silently misaligned mask)."""
    shown = np.full((40, 24, 3), 30, np.uint8)
    shown[5:15, 3:9] = 220  # the object, top-left as a viewer shows the photo
    mask = (shown[..., 0] > 128).astype(np.uint8)
    stored = np.rot90(shown, 1)  # what the camera wrote: orientation 6 turns it back clockwise
    (tmp_path / "f" / "images").mkdir(parents=True)
    (tmp_path / "f" / "masks").mkdir()
    (tmp_path / "f" / "images" / "photo.jpg").write_bytes(_jpeg_with_orientation(np.ascontiguousarray(stored), 6))
    cv2.imwrite(str(tmp_path / "f" / "masks" / "photo.png"), mask)
    assert image_size(tmp_path / "f" / "images" / "photo.jpg") == (40, 24)
    dm = FolderDataModule(root=str(tmp_path / "f"), num_classes=1, num_workers=0)
    image, loaded = dm.raw_dataset(dm.items()).load(0)
    np.testing.assert_array_equal(loaded, mask)
    assert ((image[..., 0] > 128) == mask.astype(bool)).mean() > 0.99


def test_binary_masks_under_index_encoding_suggest_binary_once(tmp_path, capsys):
    from segkit.prepare import run_check

    write_folder(tmp_path / "f", n=6, encoding="binary")
    dm = FolderDataModule(root=str(tmp_path / "f"), num_classes=1, num_workers=0)
    assert len(run_check(dm)) == 6
    out = capsys.readouterr().out
    said = "6 files: mask values [255] are outside the classes 0..1 — the mask holds only {0, 255}: "
    assert said in out and "data.mask_encoding=binary" in out and out.count("mask values") == 1
    assert "6 of 6 masks could not be read" in out and "never occur in the masks" not in out


# ----------------------------------------------------------------------- 7. empty validation split
def test_an_empty_validation_split_is_refused_at_setup_and_val_fraction_0_trains_without(tmp_path):
    write_carvana(tmp_path / "c", n_cars=1, views=3)
    dm = CarvanaDataModule(root=str(tmp_path / "c"), num_workers=0, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=r"the validation split is empty — 3 training image\(s\).*whole cars and all the data is one car: add the images of another car, or train without validation with data.val_fraction=0"):
        dm.setup("fit")
    # what the message offers: train without validation, quietly, saying so
    result = run_segkit("segkit-train", "dataset=carvana", f"data.root={tmp_path / 'c'}", "trainer.fast_dev_run=2",
                        "data.val_fraction=0", f"hydra.run.dir={tmp_path / 'run'}", *SMALL, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no validation metrics (no validation split)" in result.stdout
    assert f"last checkpoint: {tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}" in result.stdout
    output = result.stdout + result.stderr
    assert "could not find the monitored key" not in output and "Total length of DataLoader" not in output


# ----------------------------------------------------------------------- 9. unwritable places
def test_an_unwritable_cache_fails_before_any_work_naming_the_setting(tmp_path):
    airbus = write_airbus(tmp_path / "airbus", n_ship=2, n_background=2)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_segkit("segkit-prepare", "dataset=airbus", f"data.root={airbus.root}", f"data.cache_dir={blocker / 'cache'}",
                        cwd=tmp_path)
    assert result.returncode == 1
    assert f"segkit-prepare: error: cannot write to {blocker / 'cache'} (" in result.stderr
    assert "data.cache_dir=<folder>" in result.stderr and "SEGKIT_CACHE" in result.stderr
    no_traceback(result)


def test_an_unwritable_run_directory_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_segkit("segkit-train", "trainer.fast_dev_run=1", f"hydra.run.dir={blocker / 'run'}", cwd=tmp_path)
    assert result.returncode == 1
    assert f"segkit-train: error: cannot write to {blocker / 'run'} (" in result.stderr and "hydra.run.dir=<folder>" in result.stderr
    no_traceback(result)


# ----------------------------------------------------------------------- friction
def test_known_errors_are_told_from_bugs():
    """(The CLI's one-line form: tests/test_cli.py::test_missing_root_is_a_clear_cli_error.)"""
    from hydra.errors import InstantiationException

    from segkit.errors import is_user_error, user_message

    def raised(function):
        try:
            function()
        except Exception as err:  # noqa: BLE001
            return err
        raise AssertionError("nothing raised")

    own = raised(lambda: FolderDataModule(root="/nowhere", num_workers=0).items())
    assert is_user_error(own)
    wrapped = InstantiationException("Error in call to target 'datamodules.folder.FolderDataModule'")
    wrapped.__cause__ = raised(lambda: FolderDataModule(mask_encoding="colour"))
    assert is_user_error(wrapped) and user_message(wrapped).startswith("data.mask_encoding must be one of")
    assert not is_user_error(TypeError("a bug"))
    assert not is_user_error(raised(lambda: np.linalg.inv(np.zeros((2, 2)))))  # a ValueError subclass raised outside segkit


def test_ctrl_c_is_a_message_not_a_traceback(tmp_path):
    """Lightning shuts down gracefully on SIGINT and exits 1 without a word; segkit says what
    happened and how to continue, on the console and in train.log, and exits 130."""
    from tests.helpers import segkit_command, segkit_env

    run = tmp_path / "run"
    process = subprocess.Popen(
        segkit_command("segkit-train", "trainer.max_epochs=50", f"hydra.run.dir={run}", "data.num_images=16", "data.size=64",
                       "data.image_size=64"),
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=segkit_env(),
        # a run started from a terminal gets Ctrl-C; a test suite launched in the background (`cmd &`
        # in a script) passes SIGINT on as ignored, and Python then never raises KeyboardInterrupt
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 180
    while not (run / "checkpoints" / "last.ckpt").is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    finished_first = process.poll() is not None  # nothing left to interrupt: say so, with what it printed
    seen = (run / "checkpoints" / "last.ckpt").is_file()
    # Ctrl-C, and again every 3 s as a user would if nothing happens: one CI run saw a single
    # SIGINT, sent as last.ckpt appeared, swallowed somewhere below segkit (training ran on to the end)
    for _ in range(20):
        if process.poll() is not None:
            break
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            continue
    stdout, stderr = process.communicate(timeout=120)
    assert not finished_first, f"training ended before it was interrupted (last.ckpt seen: {seen})\n{stdout[-2000:]}"
    assert process.returncode == 130, f"{stdout[-2000:]}\n{stderr[-3000:]}"
    assert "Traceback" not in stderr, stderr[-3000:]
    said = f"segkit-train: interrupted (Ctrl-C or a stop signal); files written so far are complete, nothing half-written. resume={run} continues"
    assert said in stderr
    assert f"interrupted (Ctrl-C or a stop signal). resume={run}" in (run / "train.log").read_text()


def test_csv_header_whitespace_and_label_file_bom_are_accepted(tmp_path):
    airbus = write_airbus(tmp_path / "airbus", n_ship=2, n_background=2)
    text = airbus.csv_path.read_text()
    airbus.csv_path.write_text("\ufeffImageId , EncodedPixels \n" + text.split("\n", 1)[1])
    dm = AirbusDataModule(root=str(airbus.root), num_workers=0, cache_dir=str(tmp_path / "cache"))
    assert len(dm.items()) == 4
    label = tmp_path / "P0000.txt"
    label.write_bytes("\ufeffimagesource:GoogleEarth\ngsd:0.5\n1 1 9 1 9 9 1 9 plane 0\n".encode())
    objects, problems = parse_dota_labels(label)
    assert problems == [] and [o.category for o in objects] == ["plane"]


def test_readers_apply_every_exif_orientation_as_pillow_does(tmp_path):
    from PIL import ImageOps

    stored = np.random.default_rng(0).integers(0, 255, (6, 10, 3), dtype=np.uint8)
    for orientation in range(1, 9):
        path = tmp_path / f"o{orientation}.png"
        pil = Image.fromarray(stored)
        exif = pil.getexif()
        exif[0x0112] = orientation
        pil.save(path, exif=exif.tobytes())
        with Image.open(path) as im:
            expected = np.asarray(ImageOps.exif_transpose(im))
        np.testing.assert_array_equal(read_image(path), expected)
        assert image_size(path) == expected.shape[:2]


def test_samples_report_skipped_files_to_the_datamodule(tmp_path):
    """The batch's ``skipped`` entries become ``datamodule.skipped_files`` and leave the batch."""
    write_folder(tmp_path / "f", n=4)
    dm = FolderDataModule(root=str(tmp_path / "f"), num_classes=3, num_workers=0, on_bad_file="skip")
    batch = {"image": torch.zeros(2, 8, 8, 3, dtype=torch.uint8), "mask": torch.zeros(2, 8, 8, dtype=torch.uint8),
             "skipped": ["", "/x/a.png: cannot decode image"]}
    out = dm.on_after_batch_transfer(batch, 0)
    assert "skipped" not in out and dm.skipped_files == {"/x/a.png": "/x/a.png: cannot decode image"}


def test_split_files_with_a_byte_order_mark_are_read(tmp_path):
    from segkit.data.splits import read_name_list

    (tmp_path / "val.json").write_bytes('\ufeff["img_1.tif", "img_2.tif"]'.encode())
    (tmp_path / "val.txt").write_bytes("\ufeffimg_1\r\nimg_2\r\n".encode())
    assert read_name_list(tmp_path / "val.json") == ["img_1.tif", "img_2.tif"]
    assert read_name_list(tmp_path / "val.txt") == ["img_1", "img_2"]


def test_a_data_root_that_is_a_file_says_so(tmp_path):
    (tmp_path / "data.zip").write_bytes(b"PK")
    with pytest.raises(NotADirectoryError, match=r"data.root=.*data.zip is a file: point it at the folder folder"):
        FolderDataModule(root=str(tmp_path / "data.zip"), num_workers=0).items()


def test_predict_into_a_folder_another_run_writes_is_refused(held_dir, trained_run, tmp_path):
    directory, holder = held_dir
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "a.png"), np.zeros((64, 64, 3), np.uint8))
    result = run_segkit("segkit-predict", f"ckpt={trained_run / 'checkpoints' / 'best.ckpt'}", f"input={tmp_path / 'in'}",
                        f"output={directory}", cwd=tmp_path)
    assert result.returncode == 1
    assert f"is in use by another segkit run (pid {holder.pid}" in result.stderr and "output=<folder>" in result.stderr
    assert sorted(p.name for p in directory.iterdir()) == [LOCK_FILE]


def test_the_lock_file_goes_when_the_run_ends(tmp_path):
    script = f"from segkit.rundir import claim_run_dir; claim_run_dir({str(tmp_path / 'out')!r})"
    subprocess.run([sys.executable, "-c", script], check=True)
    assert (tmp_path / "out").is_dir() and not (tmp_path / "out" / LOCK_FILE).exists()


def test_on_bad_file_skip_is_honoured_for_a_bad_file_in_the_setup_sample(tmp_path, caplog):
    airbus = write_airbus(tmp_path / "airbus")
    bad = airbus.root / "train_v2" / next(iter(airbus.ships))  # item 0: always in the setup sample
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])  # an interrupted download: header intact
    options = dict(root=str(airbus.root), image_size=64, num_workers=0, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=r"(?s)1 of 8 sampled airbus images .* cannot be used:.*truncated JPEG.*data.on_bad_file=skip"):
        AirbusDataModule(**options).setup("fit")
    with caplog.at_level("WARNING"):
        AirbusDataModule(**options, on_bad_file="skip").setup("fit")
    assert "data.on_bad_file=skip: such files are skipped" in caplog.text


def test_an_image_size_the_model_cannot_take_is_refused_before_training(tmp_path):
    from segkit.stage import check_input_size
    from tests.helpers import conv1x1_module

    module = conv1x1_module()
    module.net.size_multiple, module.net.name = 128, "segnet"
    dm = FolderDataModule(root=str(tmp_path), image_size=64, pad_multiple=None, num_workers=0)
    with pytest.raises(ValueError, match=r"model 'segnet' needs .* multiples of 128, but data.image_size is 64x64: set data.image_size=128"):
        check_input_size(dm, module)
    check_input_size(FolderDataModule(root=str(tmp_path), image_size=64, pad_multiple=128, num_workers=0), module)
    check_input_size(FolderDataModule(root=str(tmp_path), image_size=[256, 384], num_workers=0), module)


def test_a_folder_of_grayscale_images_with_in_channels_3_is_mentioned(tmp_path, caplog):
    (tmp_path / "f" / "images").mkdir(parents=True)
    (tmp_path / "f" / "masks").mkdir()
    for i in range(4):
        cv2.imwrite(str(tmp_path / "f" / "images" / f"{i}.png"), np.full((32, 32), 40 * i, np.uint8))
        cv2.imwrite(str(tmp_path / "f" / "masks" / f"{i}.png"), np.eye(32, dtype=np.uint8))
    with caplog.at_level("WARNING"):
        FolderDataModule(root=str(tmp_path / "f"), num_workers=0).setup("fit")
    assert "the sampled images are grayscale but data.in_channels=3" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        FolderDataModule(root=str(tmp_path / "f"), in_channels=1, num_workers=0).setup("fit")
    assert "grayscale" not in caplog.text


def test_a_skipped_validation_file_is_not_scored_twice(tmp_path):
    """data.on_bad_file=skip: the loader puts the next readable image in an unreadable one's
    place (a batch cannot shrink). For training that is fine; validation leaves the stand-in
    out, or that image would count twice in the scores that choose best.ckpt."""
    from torch.utils.data import default_collate

    from tests.helpers import conv1x1_module

    write_folder(tmp_path / "f", n=6, image_format="png")
    dm = FolderDataModule(root=str(tmp_path / "f"), num_classes=3, num_workers=0, on_bad_file="skip", image_size=None)
    items = dm.items()
    bad = items[1].mask
    bad.write_bytes(b"not a png")
    dataset = dm.make_dataset(items[:3], None)
    samples = [dataset[i] for i in range(3)]
    assert [s["name"] for s in samples] == [items[0].name, items[2].name, items[2].name]  # item 1 -> item 2 stands in
    assert [s["stand_in"] for s in samples] == [False, True, False]
    module = conv1x1_module(channels=3, classes=3)
    module.log = lambda *args, **kwargs: None  # no Trainer here: the scores are read from the metrics

    def scores(batch_samples):
        module.val_metrics.reset()
        batch = dm.prepare_batch({k: v for k, v in default_collate(batch_samples).items() if k != "skipped"})
        with torch.no_grad():
            module.validation_step(batch, 0)
        return {k: float(v) for k, v in module.val_metrics.compute().items()}

    assert scores(samples) == scores([samples[0], samples[2]])  # the stand-in left out
    counted_twice = [samples[0], {**samples[1], "stand_in": False}, samples[2]]
    assert scores(counted_twice) != scores(samples)  # what validation scored before


def test_an_unreadable_ship_image_at_preparation_follows_on_bad_file(tmp_path, caplog):
    """Preparation reads each ship image's header to check its RLE rows. A file that is not an
    image at all stops it with the way out (data.on_bad_file=skip), and with skip it is left
    for the loader to skip, not a stop of its own."""
    airbus = write_airbus(tmp_path / "airbus")
    bad = airbus.root / "train_v2" / [i for i, ships in airbus.ships.items() if ships][3]
    bad.write_bytes(b"this is not a JPEG")
    dm = AirbusDataModule(root=str(airbus.root), num_workers=0, cache_dir=str(tmp_path / "c1"))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(bad))}: cannot read image header .* — fix or remove the "
                                         r"file, or set data.on_bad_file=skip"):
        dm.prepare_data()
    skip = AirbusDataModule(root=str(airbus.root), num_workers=0, cache_dir=str(tmp_path / "c2"), on_bad_file="skip")
    with caplog.at_level(logging.WARNING):
        skip.prepare_data()
    assert f"data.on_bad_file=skip: 1 image(s) with RLE rows cannot be read; they are skipped while loading:\n  {bad}" \
        in caplog.text
