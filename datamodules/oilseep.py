"""SAR oil-seep segmentation: 16-bit single-channel TIFF images, 8-bit class masks.

::

    <root>/<images_dir>/<name>.tif   256x256 uint16 (I;16)
    <root>/<masks_dir>/<name>.tif    256x256 uint8, 0 = background, 1..7 = seep classes

As distributed the folders are ``train_images_256`` and ``train_masks_256``; images and
masks pair by file name. Masks are very sparse (~2% of pixels are seeps).
The split keeps each scene on one side: a name's part before its first dot
(``041869`` of ``041869.000043.tif``) names the SAR scene, whose tiles are neighbours
and would leak across a tile-by-tile split.
Normalisation: a fixed range (``normalize.max_pixel_value: 65535``), per-image min-max
(``normalize.normalization: min_max``), or the training split's mean/std computed by
``segkit-prepare`` (``normalize.mean: dataset``, ``normalize.std: dataset``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from segkit.data.class_stats import IMAGE_STATS_FILE
from segkit.data.datamodule import Item, Scan, SegmentationDataModule
from segkit.data.io import list_files, read_image, write_json_atomic

__all__ = ["OilSeepDataModule", "pair_by_name"]


def pair_by_name(image_dir: Path, mask_dir: Path, suffixes: tuple[str, ...]) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """Pair ``image_dir/<name>`` with ``mask_dir/<name>``; every unpaired file (hidden files left out)."""
    images = {p.name: p for p in list_files(image_dir, suffixes)}
    masks = {p.name: p for p in list_files(mask_dir, suffixes)}
    pairs = [(name, images[name], masks[name]) for name in images if name in masks]
    unpaired = [f"{images[n]}: image has no mask {mask_dir / n}" for n in images if n not in masks]
    unpaired += [f"{masks[n]}: mask has no image {image_dir / n}" for n in masks if n not in images]
    return pairs, unpaired


class OilSeepDataModule(SegmentationDataModule):
    """SAR oil seeps, 8 classes (background + 7 seep classes) from 16-bit images.

    Args:
        root: folder holding ``images_dir`` and ``masks_dir``.
        images_dir, masks_dir: folders below ``root`` (as distributed: train_images_256 /
            train_masks_256).
        **kwargs: everything :class:`SegmentationDataModule` takes.
    """

    kind = "oilseep"
    group_name = "scene"
    image_dtype = "uint16"
    default_class_names = ("background", "seep1", "seep2", "seep3", "seep4", "seep5", "seep6", "seep7")

    def __init__(
        self,
        root: str | None = None,
        images_dir: str = "train_images_256",
        masks_dir: str = "train_masks_256",
        num_classes: int = 8,
        in_channels: int = 1,
        val_fraction: float = 0.2,
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, num_classes=num_classes, in_channels=in_channels, val_fraction=val_fraction, **kwargs)
        self.images_dir = images_dir
        self.masks_dir = masks_dir

    def layout_help(self) -> str:
        return f"expected {self.images_dir}/<name>.tif (uint16) and {self.masks_dir}/<name>.tif (uint8, 0..7)"

    def scan(self) -> Scan:
        image_dir, mask_dir = self.root / self.images_dir, self.root / self.masks_dir
        self.require_paths(image_dir, mask_dir)
        pairs, unpaired = pair_by_name(image_dir, mask_dir, (".tif", ".tiff"))
        return Scan([Item(name, image, mask, group=name.split(".")[0]) for name, image, mask in pairs], missing=unpaired)

    def prepare_dataset(self) -> list[str]:
        """Mean and std of the training images (in units of 65535), for ``normalize.mean: dataset``."""
        path = self.work_dir / IMAGE_STATS_FILE
        fingerprint = self.fingerprint()
        if path.is_file():
            import json

            if json.loads(path.read_text()).get("fingerprint") == fingerprint:
                return [f"image statistics {path} are up to date"]
        items = self.items()
        train_idx, _ = self.split(items)
        total = np.zeros(self.in_channels)
        total_sq = np.zeros(self.in_channels)
        count = 0
        for i in train_idx:
            image = read_image(items[i].image, self.max_image_pixels).astype(np.float64) / 65535.0
            flat = image.reshape(-1, image.shape[2])
            total += flat.sum(axis=0)
            total_sq += (flat**2).sum(axis=0)
            count += flat.shape[0]
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
        std = np.where(std > 1e-6, std, 1.0)  # constant images: no division by zero
        write_json_atomic(path, {"mean": mean.tolist(), "std": std.tolist(), "max_pixel_value": 65535.0,
                                 "images": len(train_idx), "fingerprint": fingerprint})
        return [f"image statistics of {len(train_idx)} training images written to {path}"]
