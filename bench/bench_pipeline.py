"""Data pipeline: images/s the Airbus datamodule delivers at 768x768 against the read limit.

Ours: ``AirbusDataModule.train_dataloader()`` at native 768 px with the Airbus kernel's augmentations
(flips, rotation, brightness) and collation into batches of 8 — decode, mask decoded from
the CSV's RLE rows, augment, collate (uint8 images and masks; normalisation runs per batch on the
training device, timed separately here on the CPU). Baselines: "the limit", a bare loop of
``cv2.imread`` of the JPEG plus the decode of its RLE rows on the same files in one
process (with ``w`` workers ours is compared with ``w`` times the limit); the same loop
plus the same albumentations augmentations (what is left is segkit's own cost); and the
hand-written loader of Kaggle kernels — an albumentations Dataset with the same
augmentations, ``Normalize`` and ``ToTensorV2`` (float32 CHW images, int64 masks) in the
workers — with the same workers. Data: synthetic Airbus-format JPEGs at 768 px (every
image has ships, so every mask is decoded).

    python -m bench.bench_pipeline [--images 128] [--workers 0 1 2] [--epochs 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import albumentations as A
import cv2
import torch
import yaml
from albumentations.pytorch import ToTensorV2
from torch.utils.data import DataLoader, Dataset

from bench.common import ROOT, Report
from datamodules.airbus import AirbusDataModule
from datamodules.synthetic import write_synthetic_airbus
from segkit.data.transforms import build_augmentations

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "max_pixel_value": 255.0}


def airbus_augment() -> dict:
    return yaml.safe_load((ROOT / "conf" / "dataset" / "airbus.yaml").read_text())["augment"]


def bare_augmented_loop(items, augment, decode) -> float:
    """Seconds for the bare read loop plus the same augmentations: the work itself, without
    segkit (no checks, seeding, tensors or collation)."""
    transform = A.Compose(build_augmentations(augment))
    started = time.perf_counter()
    for item in items:
        image = cv2.cvtColor(cv2.imread(str(item.image), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        mask = decode(item.name, image.shape[:2])
        transform(image=image, mask=mask)
    return time.perf_counter() - started


def bare_loop(items, decode) -> float:
    """Seconds to read every image with OpenCV and decode its mask's RLE rows."""
    started = time.perf_counter()
    for item in items:
        image = cv2.imread(str(item.image), cv2.IMREAD_COLOR)
        mask = decode(item.name, image.shape[:2])
        assert image is not None and mask is not None
    return time.perf_counter() - started


class HandWritten(Dataset):
    """The kernels' loader: read, augment, ``Normalize`` + ``ToTensorV2`` in the worker, int64 mask."""

    def __init__(self, items, augment, decode) -> None:
        self.items, self.decode = items, decode
        self.transform = A.Compose([*build_augmentations(augment), A.Normalize(**IMAGENET), ToTensorV2()])

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        item = self.items[index]
        image = cv2.cvtColor(cv2.imread(str(item.image), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        mask = self.decode(item.name, image.shape[:2])
        out = self.transform(image=image, mask=mask)
        return out["image"], out["mask"].long()


def rate(loader, epochs: int) -> float:
    """Images/s of the best of ``epochs`` epochs (as the baselines take their best pass),
    after one epoch that starts the workers."""
    for _ in loader:
        pass
    best = 0.0
    for _ in range(epochs):
        started, delivered = time.perf_counter(), 0
        for batch in loader:
            delivered += len(batch["image"] if isinstance(batch, dict) else batch[0])
        best = max(best, delivered / (time.perf_counter() - started))
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    report = Report("Data pipeline, Airbus datamodule at 768 px (bench/bench_pipeline.py)")
    with tempfile.TemporaryDirectory() as tmp:
        root = write_synthetic_airbus(Path(tmp) / "airbus", num_images=args.images, size=768, ship_fraction=1.0, seed=3)
        common = dict(root=str(root), image_size=None, batch_size=8, val_fraction=0.05, background_ratio=1.0,
                      cache_dir=str(Path(tmp) / "cache"), augment=airbus_augment(), normalize=IMAGENET)
        probe = AirbusDataModule(**common, num_workers=0)
        probe.prepare_data()
        probe.setup()
        items = [probe.items()[i] for i in probe.split(probe.items())[0]]
        decode = probe.rle_decoder()
        bare_loop(items, decode)  # warm the page cache
        limit = len(items) / min(bare_loop(items, decode) for _ in range(2))
        report.line(f"{len(items)} training images 768x768 (JPEG), masks from RLE rows; bare cv2 read + RLE decode loop: "
                    f"{limit:.1f} images/s")
        for workers in args.workers:
            datamodule = AirbusDataModule(**common, num_workers=workers)
            datamodule.setup()
            ours = rate(datamodule.train_dataloader(), args.epochs)
            report.compare(f"pipeline, {workers} worker(s) vs {max(workers, 1)}x the bare read loop", ours,
                           limit * max(workers, 1), "images/s", ">= 0.85")
            kernel = DataLoader(HandWritten(items, airbus_augment(), decode), batch_size=8, shuffle=True, num_workers=workers,
                                persistent_workers=workers > 0)
            report.compare(f"pipeline, {workers} worker(s) vs the hand-written albumentations loader", ours,
                           rate(kernel, args.epochs), "images/s", ">= 1.0")
            if workers == 0:  # the framework's own cost: the same reads and augmentations, bare
                augmented = len(items) / min(bare_augmented_loop(items, airbus_augment(), decode) for _ in range(2))
                report.compare("pipeline, 0 workers vs the bare read loop + the same augmentations", ours, augmented,
                               "images/s", ">= 0.85")
                # where the normalisation went: the device, once per batch
                batch = next(iter(datamodule.train_dataloader()))
                datamodule.prepare_batch(batch)
                started = time.perf_counter()
                for _ in range(5):
                    datamodule.prepare_batch(batch)
                per_image = (time.perf_counter() - started) / 5 / len(batch["image"])
                report.line(f"  normalisation on the device when it is this CPU ({torch.get_num_threads()} threads): "
                            f"{per_image * 1e3:.2f} ms per image (a GPU does it in microseconds)")
                moved = sum(t.numel() * t.element_size() for t in (batch["image"], batch["mask"]))
                before = batch["image"].numel() * 4 + batch["mask"].numel() * 8
                report.line(f"  bytes per batch of 8 through shared memory / to the device: {moved / 2**20:.1f} MiB "
                            f"(float32 images + int64 masks: {before / 2**20:.1f} MiB)")
            del datamodule, kernel
    report.save()


if __name__ == "__main__":
    main()
