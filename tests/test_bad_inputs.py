"""The catalogue of bad inputs: each one gives a clear error naming the file (and line or
row) and what was expected — at setup, before any training step, or from
``segkit-prepare check=true`` (``check()``), which lists every problem of every file.

Every case writes a dataset in its real format, breaks one thing, and checks the message.
"""

from __future__ import annotations

import json
import struct
import warnings
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from segkit.data.io import read_image
from tests.fixtures.airbus import write_airbus
from tests.fixtures.buildings import write_buildings
from tests.fixtures.carvana import write_carvana
from tests.fixtures.dota import write_dota
from tests.fixtures.oilseep import write_oilseep
from tests.helpers import make_datamodule


def airbus(tmp_path: Path, **kwargs):
    fixture = write_airbus(tmp_path / "airbus", n_ship=4, n_background=4, size=32)
    return fixture, make_datamodule("airbus", fixture.root, tmp_path, **kwargs)


def csv_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def bomb_png(path: Path, side: int = 100_000) -> None:
    """A 100-byte PNG whose header claims ``side`` x ``side`` pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


# ----------------------------------------------------------------- CSV structure
def test_missing_column(tmp_path):
    fixture, dm = airbus(tmp_path)
    fixture.csv_path.write_text("\n".join(line.split(",")[0] for line in csv_lines(fixture.csv_path)) + "\n")
    with pytest.raises(ValueError, match=r"train_ship_segmentations_v2.csv: expected columns ImageId,EncodedPixels.*missing EncodedPixels"):
        dm.setup()


def test_extra_column_such_as_a_written_pandas_index(tmp_path):
    fixture, dm = airbus(tmp_path)
    lines = csv_lines(fixture.csv_path)
    fixture.csv_path.write_text("\n".join([",ImageId,EncodedPixels"] + [f"{i},{line}" for i, line in enumerate(lines[1:])]) + "\n")
    with pytest.raises(ValueError, match=r"unexpected column\(s\) Unnamed: 0; expected exactly ImageId,EncodedPixels.*index=False"):
        dm.setup()


def test_a_row_with_a_field_too_many(tmp_path):
    fixture, dm = airbus(tmp_path)
    lines = csv_lines(fixture.csv_path)
    lines[3] += ",extra"
    fixture.csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"train_ship_segmentations_v2.csv: not a valid CSV.*line 4"):
        dm.setup()


def test_airbus_image_listed_as_shipless_and_with_ships(tmp_path):
    fixture, dm = airbus(tmp_path)
    lines = csv_lines(fixture.csv_path)
    ship_line = next(i for i, line in enumerate(lines) if i and not line.endswith(","))
    image_id = lines[ship_line].split(",")[0]
    fixture.csv_path.write_text("\n".join([*lines, f"{image_id},"]) + "\n")
    with pytest.raises(ValueError, match=rf"csv:{len(lines) + 1}: ImageId '{image_id}' has an empty mask here .* runs on line {ship_line + 1}"):
        dm.setup()


def test_carvana_image_with_two_rows(tmp_path):
    write_carvana(tmp_path / "c", n_cars=2, views=2, csv=True)
    csv = tmp_path / "c" / "train_masks.csv"
    lines = csv_lines(csv)
    csv.write_text("\n".join([*lines, lines[2]]) + "\n")
    dm = make_datamodule("carvana", tmp_path / "c", tmp_path, mask_source="csv")
    name = lines[2].split(",")[0]
    with pytest.raises(ValueError, match=rf"train_masks.csv:{len(lines) + 1}: img '{name}' appears again \(first on line 3\)"):
        dm.setup()


# ------------------------------------------------------------------------- RLE
@pytest.mark.parametrize(
    "runs, message",
    [
        ("1020 10", r"beyond|outside|exceeds"),               # 32x32 = 1024 pixels: the run ends at 1029
        ("10 5 12 3", r"overlap|increasing|order"),          # second run starts inside the first
        ("10", r"pairs|odd|even"),                            # a start without a length
    ],
)
def test_bad_runs_name_the_line(tmp_path, runs, message):
    fixture, dm = airbus(tmp_path)
    lines = csv_lines(fixture.csv_path)
    ship_line = next(i for i, line in enumerate(lines) if i and not line.endswith(","))
    lines[ship_line] = f"{lines[ship_line].split(',')[0]},{runs}"
    fixture.csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"train_ship_segmentations_v2.csv:{ship_line + 1}: .*({message})"):
        dm.prepare_data()
        dm.setup()


@pytest.mark.parametrize("image_id", ["../outside.jpg", "/etc/passwd", "sub/dir.jpg", ".."])
def test_image_ids_that_leave_the_data_root(tmp_path, image_id):
    fixture, dm = airbus(tmp_path)
    lines = csv_lines(fixture.csv_path)
    fixture.csv_path.write_text("\n".join([*lines, f"{image_id},"]) + "\n")
    with pytest.raises(ValueError, match=rf"csv:{len(lines) + 1}: ImageId '{image_id}' is not a plain file name"):
        dm.setup()


# ---------------------------------------------------------------------- images
def test_an_image_that_does_not_decode(tmp_path):
    fixture, dm = airbus(tmp_path)
    victim = sorted((fixture.root / "train_v2").glob("*.jpg"))[0]
    victim.write_bytes(b"this is not an image")
    # the mask cache reads its header first; a ship-less image fails its JPEG check
    with pytest.raises(ValueError, match=rf"{victim.name}: (not a JPEG file|cannot read image header)"):
        dm.setup()
    assert any(f"{victim.name}: not a JPEG file" in p or f"{victim.name}: cannot read image header" in p for p in dm.check())


def test_a_truncated_jpeg(tmp_path):
    fixture, dm = airbus(tmp_path)
    victim = sorted((fixture.root / "train_v2").glob("*.jpg"))[-1]
    victim.write_bytes(victim.read_bytes()[:200])
    with pytest.raises(ValueError, match=rf"{victim.name}: truncated JPEG"):
        dm.setup()


def test_a_truncated_tiff(tmp_path):
    write_oilseep(tmp_path / "o", n=6)
    victim = sorted((tmp_path / "o" / "train_images_256").glob("*.tif"))[0]
    victim.write_bytes(victim.read_bytes()[:1000])
    dm = make_datamodule("oilseep", tmp_path / "o", tmp_path)
    with pytest.raises(ValueError, match=rf"{victim.name}: cannot decode TIFF"):
        dm.setup()


def test_wrong_dtype(tmp_path):
    write_oilseep(tmp_path / "o", n=6)
    victim = sorted((tmp_path / "o" / "train_images_256").glob("*.tif"))[0]
    tifffile.imwrite(victim, np.zeros((32, 32), np.uint8))
    problems = make_datamodule("oilseep", tmp_path / "o", tmp_path).check()
    assert problems == [f"{victim}: image is 8-bit (uint8), the dataset expects 16-bit (uint16)"]


@pytest.mark.parametrize(
    "replaced, shape, message",
    [
        ("images/img_0.tif", (32, 32, 5), r"image has 5 channel\(s\), expected 3 — convert the file, or set data.in_channels"),
        ("masks/mask_5.tif", (16, 16), r"mask is 16x16 but its image .*img_5.tif is 32x32"),
    ],
    ids=["wrong channel count", "mask and image sizes differ"],
)
def test_a_file_replaced_by_one_of_another_shape(tmp_path, replaced, shape, message):
    write_buildings(tmp_path / "b", n=6)
    victim = tmp_path / "b" / "train" / replaced
    tifffile.imwrite(victim, np.zeros(shape, np.uint8))
    dm = make_datamodule("buildings", tmp_path / "b", tmp_path)
    with pytest.raises(ValueError, match=rf"{victim}: {message}"):
        dm.setup()


def test_mask_values_outside_the_classes(tmp_path):
    write_oilseep(tmp_path / "o", n=6)
    victim = sorted((tmp_path / "o" / "train_masks_256").glob("*.tif"))[-1]
    mask = tifffile.imread(victim)
    mask[0, :3] = [9, 12, 9]
    tifffile.imwrite(victim, mask)
    dm = make_datamodule("oilseep", tmp_path / "o", tmp_path)
    with pytest.raises(ValueError, match=rf"{victim}: mask values \[9, 12\] are outside the classes 0..7"):
        dm.setup()


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path):
    fixture, dm = airbus(tmp_path)
    victim = sorted((fixture.root / "train_v2").glob("*.jpg"))[0]
    bomb = victim.with_suffix(".png")
    bomb_png(bomb)
    with pytest.raises(ValueError) as refused:
        read_image(bomb)  # refused before any decoding: no 30 GB allocation
    # the whole message, path included: a pattern would also match the test's own tmp folder
    # name (".../test_a_decompression_bomb_is_0/...") and pass on any error naming the file
    assert str(refused.value) == (
        f"{bomb}: the header says 100000x100000 = 10,000,000,000 pixels, above the limit of 500,000,000 — a corrupt "
        "header or a decompression bomb? If the image is real, raise data.max_image_pixels (segkit-predict: max_image_pixels)"
    )
    # the limit is a setting: real 32x32 images over a limit of 1000 pixels are refused too
    _, small = airbus(tmp_path / "limit", max_image_pixels=1000)
    with pytest.raises(ValueError, match=r"32x32 = 1,024 pixels, above the limit of 1,000 .*data.max_image_pixels"):
        small.setup()


# --------------------------------------------------------------- whole datasets
def test_empty_training_epoch_after_filtering(tmp_path):
    fixture = write_airbus(tmp_path / "airbus", n_ship=0, n_background=6, size=32)
    dm = make_datamodule("airbus", fixture.root, tmp_path, background_ratio=0.0, val_background_ratio=1.0)
    with pytest.raises(ValueError, match=r"training epoch is empty.*no training image has ships and data.background_ratio=0.0"):
        dm.setup()


def test_an_airbus_validation_split_without_images_names_the_ratios(tmp_path):
    fixture = write_airbus(tmp_path / "airbus", n_ship=0, n_background=6, size=32)
    dm = make_datamodule("airbus", fixture.root, tmp_path)
    with pytest.raises(ValueError, match=r"validation split is empty.*data.val_background_ratio=0.1 of 1 ship-free"):
        dm.setup()


def test_a_split_file_naming_images_that_do_not_exist(tmp_path):
    write_buildings(tmp_path / "b", n=6)
    split = tmp_path / "val.json"
    split.write_text(json.dumps(["img_1", "img_77"]))
    dm = make_datamodule("buildings", tmp_path / "b", tmp_path, split_file=str(split))
    with pytest.raises(ValueError, match=r"val.json: 1 name\(s\) match no training image, e.g. \['img_77'\]"):
        dm.setup()


def test_an_image_without_its_mask(tmp_path):
    write_buildings(tmp_path / "b", n=6)
    (tmp_path / "b" / "train" / "masks" / "mask_2.tif").unlink()
    dm = make_datamodule("buildings", tmp_path / "b", tmp_path)
    with pytest.raises(ValueError, match=r"img_2.tif: image has no mask"):
        dm.setup()


# ------------------------------------------------------------------------- DOTA
def test_dota_unknown_category_names_file_and_line(tmp_path):
    write_dota(tmp_path / "d")
    label = tmp_path / "d" / "labelTxt" / "P0001.txt"
    lines = csv_lines(label)
    lines[3] = lines[3].replace(lines[3].split()[8], "zeppelin")
    label.write_text("\n".join(lines) + "\n")
    dm = make_datamodule("dota", tmp_path / "d", tmp_path)
    assert any("P0001.txt:4: unknown category 'zeppelin'" in p for p in dm.check())
    with pytest.raises(ValueError, match=r"P0001.txt:4: unknown category 'zeppelin' \(DOTA v1.0: plane"):
        dm.prepare_data()


def test_dota_degenerate_polygon_is_skipped_with_a_warning(tmp_path):
    write_dota(tmp_path / "d")
    label = tmp_path / "d" / "labelTxt" / "P0000.txt"
    label.write_text(label.read_text() + "10 10 20 20 30 30 40 40 plane 0\n")  # collinear: no area
    dm = make_datamodule("dota", tmp_path / "d", tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm.prepare_data()
    assert any("P0000.txt:8: degenerate polygon (no area), skipped" in str(w.message) for w in caught)


def test_check_lists_every_problem_at_once(tmp_path):
    write_buildings(tmp_path / "b", n=6)
    images, masks = tmp_path / "b" / "train" / "images", tmp_path / "b" / "train" / "masks"
    tifffile.imwrite(masks / "mask_0.tif", np.full((32, 32), 128, np.uint8))
    tifffile.imwrite(masks / "mask_1.tif", np.zeros((8, 8), np.uint8))
    (images / "img_2.tif").write_bytes(b"II*\0garbage")
    cv2.imwrite(str(images / "img_3.png"), np.zeros((4, 4, 3), np.uint8))  # a stray file of another format
    problems = make_datamodule("buildings", tmp_path / "b", tmp_path).check()
    text = "\n".join(problems)
    assert "mask_0.tif: a binary mask must hold {0, 255} or {0, 1}, found values [128]" in text
    assert "mask_1.tif: mask is 8x8 but its image" in text
    assert "img_2.tif: cannot decode TIFF" in text
    assert len(problems) >= 3
