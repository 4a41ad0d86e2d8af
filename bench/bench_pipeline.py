"""Data pipeline: images/s the Airbus datamodule delivers at 768x768 against the read limit.

Ours: ``AirbusDataModule.train_dataloader()`` at native 768 px with the seed's augmentations
(flips, rotation, brightness), ImageNet normalisation and collation into batches of 8 —
decode, mask from the PNG cache, augment, tensor, collate. Baseline ("the limit"): a bare
loop of ``cv2.imread`` of the JPEG plus ``cv2.imread`` of the cached mask, on the same
files, in one process. With ``w`` workers ours is compared with ``w`` times the limit.
Data: synthetic Airbus-format JPEGs at 768 px (every image has ships, so every mask is
read from the cache).

    python -m bench.bench_pipeline [--images 64] [--workers 0 1 2] [--epochs 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import yaml

from bench.common import ROOT, Report
from datamodules.airbus import AirbusDataModule
from datamodules.synthetic import write_synthetic_airbus


def airbus_augment() -> dict:
    return yaml.safe_load((ROOT / "conf" / "dataset" / "airbus.yaml").read_text())["augment"]


def bare_loop(items) -> float:
    """Seconds to read every image and its cached mask with OpenCV."""
    started = time.perf_counter()
    for item in items:
        image = cv2.imread(str(item.image), cv2.IMREAD_COLOR)
        mask = cv2.imread(str(item.mask), cv2.IMREAD_UNCHANGED) if item.mask is not None else None
        assert image is not None and (item.mask is None or mask is not None)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    report = Report("Data pipeline, Airbus datamodule at 768 px (bench/bench_pipeline.py)")
    with tempfile.TemporaryDirectory() as tmp:
        root = write_synthetic_airbus(Path(tmp) / "airbus", num_images=args.images, size=768, ship_fraction=1.0, seed=3)
        common = dict(root=str(root), image_size=None, batch_size=8, val_fraction=0.05, background_ratio=1.0,
                      cache_dir=str(Path(tmp) / "cache"), augment=airbus_augment(),
                      normalize={"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "max_pixel_value": 255.0})
        probe = AirbusDataModule(**common, num_workers=0)
        probe.prepare_data()
        probe.setup()
        items = [probe.items()[i] for i in probe.split(probe.items())[0]]
        bare_loop(items)  # warm the page cache
        limit = len(items) / min(bare_loop(items) for _ in range(2))
        report.line(f"{len(items)} training images 768x768 (JPEG) with cached PNG masks; bare cv2 read loop: {limit:.1f} images/s")
        for workers in args.workers:
            datamodule = AirbusDataModule(**common, num_workers=workers)
            datamodule.setup()
            loader = datamodule.train_dataloader()
            for _ in loader:  # first epoch starts the (persistent) workers and warms up
                pass
            started, delivered = time.perf_counter(), 0
            for _ in range(args.epochs):
                for batch in loader:
                    delivered += len(batch["image"])
            rate = delivered / (time.perf_counter() - started)
            report.compare(f"pipeline, {workers} worker(s) vs {max(workers, 1)}x the bare read loop", rate,
                           limit * max(workers, 1), "images/s", ">= 0.85")
            del loader, datamodule
    report.save()


if __name__ == "__main__":
    main()
