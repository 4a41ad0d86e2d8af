"""RLE codec at Airbus scale: segkit vs the per-run Python loop of Kaggle kernels.

Rows are the real EncodedPixels of ../shared/realdata/airbus (768x768, column-major),
repeated to ``--rows`` decodes; each encode re-encodes the decoded mask. Both sides run
in this process on the same rows; outputs must be identical. Prints rows/s and ratios.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from segkit.data.rle import rle_decode, rle_encode

SHAPE = (768, 768)
REAL_CSV = Path(__file__).resolve().parents[1].parent / "shared" / "realdata" / "airbus" / "train_ship_segmentations_v2.csv"


def kaggle_decode(mask_rle: str, shape=SHAPE) -> np.ndarray:
    """The decoder most Airbus kernels copy: one slice assignment per run."""
    s = mask_rle.split()
    starts, lengths = [np.asarray(x, dtype=int) for x in (s[0:][::2], s[1:][::2])]
    starts -= 1
    ends = starts + lengths
    img = np.zeros(shape[0] * shape[1], dtype=np.uint8)
    for lo, hi in zip(starts, ends):
        img[lo:hi] = 1
    return img.reshape(shape).T


def kaggle_encode(img: np.ndarray) -> str:
    """The per-pixel-run loop encoder of many kernels."""
    pixels = img.T.flatten()
    runs, start, previous = [], 0, 0
    for i, p in enumerate(pixels, start=1):
        if p and not previous:
            start = i
        elif not p and previous:
            runs += [start, i - start]
        previous = p
    if previous:
        runs += [start, len(pixels) + 1 - start]
    return " ".join(map(str, runs))


def rows(n: int) -> list[str]:
    if REAL_CSV.is_file():
        frame = pd.read_csv(REAL_CSV, keep_default_na=False)
        real = [r for r in frame.EncodedPixels if r]
    else:  # fall back to synthetic ship-like runs
        import cv2

        from datamodules.synthetic import _ship_polygon  # noqa: PLC0415

        rng = np.random.default_rng(0)
        real = []
        for _ in range(20):
            m = np.zeros(SHAPE, np.uint8)
            cv2.fillPoly(m, [_ship_polygon(rng, 768)], 1)
            real.append(rle_encode(m))
    return [real[i % len(real)] for i in range(n)]


def timed(fn, items) -> float:
    """Seconds to apply ``fn`` to every item; outputs are dropped (20k masks would be 11 GiB)."""
    start = time.perf_counter()
    for x in items:
        fn(x)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--encode-rows", type=int, default=300)
    args = parser.parse_args()
    data = rows(args.rows)
    for rle in set(data):  # identical output on every distinct row, both directions
        mask = rle_decode(rle, SHAPE, "F")
        assert np.array_equal(mask, kaggle_decode(rle)), "decoders disagree"
        assert rle_encode(mask, "F") == kaggle_encode(mask) == rle, "encoders disagree"
    t_ours = timed(lambda r: rle_decode(r, SHAPE, "F"), data)
    t_base = timed(kaggle_decode, data)
    print(f"decode  {args.rows} rows: segkit {args.rows / t_ours:9.0f} rows/s | kaggle loop {args.rows / t_base:9.0f} rows/s | ratio {t_base / t_ours:5.2f}x")
    masks = [rle_decode(r, SHAPE, "F") for r in data[: args.encode_rows]]
    t_ours = timed(lambda m: rle_encode(m, "F"), masks)
    t_base = timed(kaggle_encode, masks)
    print(f"encode  {len(masks)} masks: segkit {len(masks) / t_ours:9.0f} masks/s | kaggle loop {len(masks) / t_base:9.0f} masks/s | ratio {t_base / t_ours:5.1f}x")


if __name__ == "__main__":
    main()
