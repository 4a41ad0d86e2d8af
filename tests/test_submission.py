"""Kaggle submissions: one row per ship (airbus) / per image (carvana), decoded back exactly."""

import io

import numpy as np
import pandas as pd
import pytest

from segkit.submission import SubmissionWriter, ship_components
from tests.fixtures.reference import naive_rle_decode


def masks():
    a = np.zeros((40, 60), bool)
    a[2:10, 3:20] = True       # ship 1: 136 px
    a[20:30, 40:44] = True     # ship 2: 40 px
    a[35:37, 50:51] = True     # a 2-pixel speck
    b = np.zeros((40, 60), bool)  # no ship
    c = np.zeros((40, 60), bool)
    c[5, 5] = c[6, 6] = True   # touching at a corner only
    return {"a.jpg": a, "b.jpg": b, "c.jpg": c}


def decode_csv(path, id_column, rle_column, shape, order):
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    out = {}
    for image_id, group in frame.groupby(id_column, sort=False):
        rows = [naive_rle_decode(r, shape, order).astype(bool) for r in group[rle_column] if r]
        out[image_id] = (len(group), rows)
    return frame, out


def test_airbus_rows_decode_to_the_predicted_masks(tmp_path):
    writer = SubmissionWriter("airbus", tmp_path / "submission.csv")
    for name, mask in masks().items():
        writer.add(name, mask)
    counts = writer.close()
    frame, decoded = decode_csv(tmp_path / "submission.csv", "ImageId", "EncodedPixels", (40, 60), "F")
    assert list(frame.columns) == ["ImageId", "EncodedPixels"]
    assert counts == {"rows": 5, "images": 3, "empty_images": 1}
    for name, mask in masks().items():
        n_rows, rows = decoded[name]
        union = np.zeros_like(mask)
        for row in rows:
            assert not (union & row).any()  # ships never overlap
            union |= row
        np.testing.assert_array_equal(union, mask)
    assert decoded["a.jpg"][0] == 3  # one row per blob
    assert decoded["b.jpg"] == (1, [])  # an image with no ship: one empty row
    assert decoded["c.jpg"][0] == 1  # corner-touching pixels are one ship with 8-connectivity


def test_min_size_and_connectivity(tmp_path):
    writer = SubmissionWriter("airbus", tmp_path / "s.csv", min_size=10, connectivity=4)
    kept = writer.add("a.jpg", masks()["a.jpg"])
    assert kept.sum() == 136 + 40  # the speck is dropped, and the kept mask says so
    writer.add("c.jpg", masks()["c.jpg"])
    writer.close()
    _, decoded = decode_csv(tmp_path / "s.csv", "ImageId", "EncodedPixels", (40, 60), "F")
    assert decoded["a.jpg"][0] == 2 and decoded["c.jpg"] == (1, [])  # c's two 1-px ships are under min_size
    assert len(ship_components(masks()["c.jpg"], connectivity=4)) == 2
    assert len(ship_components(masks()["c.jpg"], connectivity=8)) == 1


def test_carvana_is_row_major_one_row_per_image(tmp_path):
    writer = SubmissionWriter("carvana", tmp_path / "submission.csv")
    for name, mask in masks().items():
        writer.add(name, mask)
    writer.close()
    frame, decoded = decode_csv(tmp_path / "submission.csv", "img", "rle_mask", (40, 60), "C")
    assert list(frame.columns) == ["img", "rle_mask"] and len(frame) == 3
    for name, mask in masks().items():
        n_rows, rows = decoded[name]
        assert n_rows == 1
        np.testing.assert_array_equal(rows[0] if rows else np.zeros_like(mask), mask)
    # row-major: the first run of a.jpg starts on row 2 at column 3 (1-indexed 2*60+3+1)
    assert frame.loc[frame.img == "a.jpg", "rle_mask"].item().split()[:2] == ["124", "17"]


def test_a_file_that_does_not_decode_back_is_refused(tmp_path):
    writer = SubmissionWriter("airbus", tmp_path / "s.csv")
    writer.add("a.jpg", masks()["a.jpg"])
    good = pd.DataFrame(writer.rows, columns=["ImageId", "EncodedPixels"])
    tampered = good.copy()
    tampered.loc[0, "EncodedPixels"] = "1 5"
    buffer = io.StringIO()
    tampered.to_csv(buffer, index=False)
    with pytest.raises(AssertionError, match="do not decode to the predicted mask"):
        writer.validate(buffer.getvalue().encode())
    missing = good.iloc[:0]
    buffer = io.StringIO()
    missing.to_csv(buffer, index=False)
    with pytest.raises(AssertionError, match="missing from the file"):
        writer.validate(buffer.getvalue().encode())
    assert not (tmp_path / "s.csv").exists()


def test_duplicate_ids_and_unknown_formats_are_refused(tmp_path):
    writer = SubmissionWriter("carvana", tmp_path / "s.csv")
    writer.add("x.jpg", masks()["a.jpg"])
    with pytest.raises(ValueError, match="added twice"):
        writer.add("x.jpg", masks()["a.jpg"])
    with pytest.raises(ValueError, match="unknown submission format 'coco'"):
        SubmissionWriter("coco", tmp_path / "s.csv")
