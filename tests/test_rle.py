import numpy as np
import pandas as pd
import pytest

from segkit.data.rle import rle_decode, rle_decode_many, rle_encode
from tests.conftest import realdata
from tests.fixtures.reference import naive_rle_decode, naive_rle_encode


@pytest.mark.parametrize("order", ["F", "C"])
@pytest.mark.parametrize("seed", range(6))
def test_random_masks_round_trip_and_match_reference(order, seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in rng.integers(1, 40, 2))
    mask = (rng.random(shape) < rng.uniform(0.05, 0.95)).astype(np.uint8)
    rle = rle_encode(mask, order=order)
    assert rle == naive_rle_encode(mask, order)
    np.testing.assert_array_equal(rle_decode(rle, shape, order=order), mask)
    np.testing.assert_array_equal(naive_rle_decode(rle, shape, order), mask)


@pytest.mark.parametrize("order", ["F", "C"])
def test_edge_cases(order):
    shape = (5, 7)
    empty = np.zeros(shape, np.uint8)
    full = np.ones(shape, np.uint8)
    assert rle_encode(empty, order) == ""
    assert rle_encode(full, order) == "1 35"
    np.testing.assert_array_equal(rle_decode("1 35", shape, order), full)
    for r, c in [(0, 0), (4, 6), (0, 6), (4, 0)]:
        single = empty.copy()
        single[r, c] = 1
        rle = rle_encode(single, order)
        index = (c * 5 + r) if order == "F" else (r * 7 + c)
        assert rle == f"{index + 1} 1"
        np.testing.assert_array_equal(rle_decode(rle, shape, order), single)


def test_column_major_versus_row_major():
    # pixel 2 (1-indexed) is below pixel 1 in column-major order, right of it in row-major
    f = rle_decode("1 2", (3, 3), order="F")
    c = rle_decode("1 2", (3, 3), order="C")
    assert f[0, 0] == f[1, 0] == 1 and f.sum() == 2
    assert c[0, 0] == c[0, 1] == 1 and c.sum() == 2


@pytest.mark.parametrize("empty", ["", "   ", None, float("nan")])
def test_empty_values_decode_to_empty_mask(empty):
    mask = rle_decode(empty, (4, 4))
    assert mask.dtype == np.uint8 and mask.shape == (4, 4) and mask.sum() == 0


def test_nonzero_values_count_as_foreground():
    mask = np.array([[0, 255], [7, 0]], np.uint8)
    assert rle_encode(mask, "F") == "2 2"


def test_decode_many_is_the_union():
    masks = rle_decode_many(["1 2", "", "7 2"], (3, 3))
    assert masks.sum() == 4 and masks[0, 0] == masks[1, 0] == masks[0, 2] == masks[1, 2] == 1


@pytest.mark.parametrize(
    "rle, message",
    [
        ("1 2 3", "odd number of tokens"),
        ("1 2.5", "'2.5' is not an integer"),
        ("a 3", "'a' is not an integer"),
        ("0 3", r"RLE run 1 starts at 0: starts are 1-indexed"),
        ("1 0", "length 0"),
        ("3 -1", "length -1"),
        ("1 2 10 8", r"RLE run 2 \(start 10, length 8\) ends at pixel 17, beyond the mask's 16 pixels"),
        ("1 4 3 2", r"RLE runs 1 \(start 1, length 4\) and 2 \(start 3, length 2\) overlap"),
        ("9 2 1 10", "overlap"),
    ],
)
def test_malformed_rle_raises(rle, message):
    with pytest.raises(ValueError, match=message):
        rle_decode(rle, (4, 4))


def test_bad_arguments():
    with pytest.raises(ValueError, match="order"):
        rle_decode("1 1", (2, 2), order="X")
    with pytest.raises(ValueError, match="2-D"):
        rle_encode(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="must be a string"):
        rle_decode(3.0, (2, 2))


def test_real_airbus_rows():
    folder = realdata("airbus")
    frame = pd.read_csv(folder / "train_ship_segmentations_v2.csv", keep_default_na=False)
    rows = frame[frame.EncodedPixels != ""]
    assert len(rows) > 10
    for rle in rows.EncodedPixels:
        mask = rle_decode(rle, (768, 768), order="F")
        lengths = np.array(rle.split(), dtype=np.int64)[1::2]
        assert mask.sum() == lengths.sum()  # area = sum of run lengths (no overlaps)
        assert rle_encode(mask, order="F") == rle  # Kaggle strings are canonical
    ship = rows[rows.ImageId == "0a1b7d6ec.jpg"].EncodedPixels.iloc[0]
    assert rle_decode(ship, (768, 768)).sum() == 377  # per SOURCES.md
    np.testing.assert_array_equal(rle_decode(ship, (768, 768)), naive_rle_decode(ship, (768, 768)))


def test_runs_out_of_order_but_disjoint_are_accepted():
    mask = rle_decode("9 2 1 3", (4, 4))
    np.testing.assert_array_equal(mask, rle_decode("1 3 9 2", (4, 4)))
    assert mask.sum() == 5
