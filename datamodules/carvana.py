"""Carvana Image Masking (Kaggle) in its distributed layout.

::

    <root>/train/<car>_<NN>.jpg               1918x1280 RGB JPEG, 16 views (NN = 01..16) per car
    <root>/train_masks/<car>_<NN>_mask.gif    palette GIF, indices {0, 1}
    <root>/train_masks.csv                    img,rle_mask — row-major (order "C") RLE over 1280x1918

Masks come from the GIFs (``mask_source=gif``) or the CSV (``mask_source=csv``, decoded
as each image loads). Train and validation are split **by car**, never by image: the
16 views of a car are near-duplicates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from segkit.data.datamodule import Item, Scan, SegmentationDataModule
from segkit.data.datasets import MaskValues
from segkit.data.io import list_files, read_mask
from segkit.data.normalize import IMAGENET
from segkit.data.pairing import files_by_key, pair_by_key
from segkit.data.rle_csv import RleCsvMasks, RleTable, read_rle_csv

__all__ = ["CarvanaDataModule", "car_id"]

RLE_ORDER = "C"  # row-major: left to right, then top to bottom


def car_id(stem: str) -> str:
    """``"0cdf5b5d0ce1_01"`` → ``"0cdf5b5d0ce1"``."""
    return stem.rsplit("_", 1)[0]


class CarvanaDataModule(RleCsvMasks, SegmentationDataModule):
    """Carvana car masks, binary.

    Args:
        root: folder holding ``images_dir`` and ``masks_dir`` or ``csv_file``.
        images_dir: JPEG folder below ``root``.
        masks_dir: GIF mask folder below ``root`` (``mask_source=gif``).
        csv_file: RLE CSV below ``root`` (``mask_source=csv``).
        mask_source: ``"gif"`` or ``"csv"``.
        **kwargs: everything :class:`SegmentationDataModule` takes; ``image_size`` resizes,
            ``pad_multiple`` pads instead (1918 → 1920 for a multiple of 32 or 128).
    """

    kind = "carvana"
    group_name = "car"  # the 16 views of a car are near-duplicates: split by car
    image_dtype = "uint8"
    default_class_names = ("background", "car")

    binary_masks = "car/background"
    rle_order = RLE_ORDER
    defaults = {
        "image_size": [1024, 1024], "batch_size": 4, "normalize": IMAGENET,
        "augment": {"shift_scale_rotate": {"type": "Affine", "translate_percent": [-0.0625, 0.0625], "scale": [0.9, 1.1],
                                           "rotate": [-10, 10], "p": 0.5}},
    }

    def __init__(
        self,
        root: str | None = None,
        images_dir: str = "train",
        masks_dir: str = "train_masks",
        csv_file: str = "train_masks.csv",
        mask_source: str = "gif",
        **kwargs: Any,
    ) -> None:
        if mask_source not in ("gif", "csv"):
            raise ValueError(f"data.mask_source must be 'gif' or 'csv', got {mask_source!r}")
        super().__init__(root=root, **kwargs)
        self.images_dir = images_dir
        self.masks_dir = masks_dir
        self.csv_file = csv_file
        self.mask_source = mask_source

    def layout_help(self) -> str:
        return (
            f"expected {self.images_dir}/<car>_<NN>.jpg with {self.masks_dir}/<car>_<NN>_mask.gif "
            f"(mask_source=gif) or {self.csv_file} with columns img,rle_mask (mask_source=csv)"
        )

    def scan(self) -> Scan:
        image_dir = self.root / self.images_dir
        self.require_paths(image_dir)
        images = {p.name: p for p in list_files(image_dir, (".jpg", ".jpeg"))}
        problems = [f"{p}: file name is not <car>_<NN>.jpg" for p in images.values() if "_" not in p.stem]
        if self.mask_source == "gif":
            return self._scan_gif(images, problems)
        return self._scan_csv(images, problems)

    def _scan_gif(self, images: dict[str, Path], problems: list[str]) -> Scan:
        mask_dir = self.root / self.masks_dir
        self.require_paths(mask_dir)
        masks = files_by_key(mask_dir, (".gif",), lambda p: p.name[: -len("_mask.gif")] if p.name.endswith("_mask.gif") else None,
                             problems=[])  # other GIFs in the folder are not masks
        pairs, missing = pair_by_key({p.stem: p for p in images.values()}, masks, mask_for=lambda k: mask_dir / f"{k}_mask.gif",
                                     image_for=lambda k: self.root / self.images_dir / f"{k}.jpg")
        return Scan([Item(image.name, image, mask, group=car_id(key)) for key, image, mask in pairs], problems, missing)

    def read_rle_table(self) -> RleTable:
        self.require_paths(self.csv_path)
        return read_rle_csv(self.csv_path, "img", "rle_mask", one_row_per_id=True)

    def _scan_csv(self, images: dict[str, Path], problems: list[str]) -> Scan:
        table = self.rle_table()
        items, missing = [], []
        for name in table.ids:
            if name not in images:
                missing.append(f"{self.csv_path}:{table.first_line[name]}: img {name!r} has no image {self.root / self.images_dir / name}")
                continue
            path = images.pop(name)
            items.append(Item(name=name, image=path, mask=self.csv_path, group=car_id(path.stem)))  # its CSV row
        missing += [f"{p}: image has no row in {self.csv_path}" for p in images.values()]
        return Scan(items, problems, missing)

    # ------------------------------------------------------------ preparation
    def prepare_dataset(self) -> list[str]:
        """``mask_source=csv``: decode every row once (a bad row stops here, naming its line);
        writes nothing per image."""
        if self.mask_source == "gif":
            return []
        return [self.check_rle_rows({i.name: i.image for i in self.items()})]

    def mask_values(self) -> MaskValues:
        """GIF masks are read by their colours (car white = 255, see ``read_mask``); the CSV's
        decoded masks are 0/1: both map to 0/1."""
        return MaskValues(n_labels=2, ignore_index=self.ignore_index, scale_255=True)

    def source_mask_decoder(self):
        """``mask_source=csv``: masks decoded from the CSV's RLE rows (training, checks and evaluation)."""
        return self.rle_decoder() if self.mask_source == "csv" else None

    def check(self) -> list[str]:
        """The base checks (the CSV's RLE decoded); with ``mask_source=csv`` and
        GIFs present, also CSV mask == GIF mask."""
        problems = super().check()
        if self.mask_source == "csv" and (self.root / self.masks_dir).is_dir():
            problems += self._compare_csv_with_gifs()
        return problems

    def _compare_csv_with_gifs(self) -> list[str]:
        table = self.rle_table()
        problems = []
        scan = self._scan or self.scan()
        for item in scan.items:
            gif = self.root / self.masks_dir / f"{Path(item.name).stem}_mask.gif"
            if not gif.is_file():
                continue
            try:
                from_gif = self.mask_values()(read_mask(gif), gif)
                from_csv = self.mask_values()(table.decode(item.name, from_gif.shape, self.rle_order), self.csv_path)
            except (ValueError, FileNotFoundError):
                continue  # listed among the base checks' problems
            if not np.array_equal(from_csv, from_gif):
                inter = np.logical_and(from_csv, from_gif).sum()
                union = np.logical_or(from_csv, from_gif).sum()
                problems.append(
                    f"{self.csv_path}:{table.first_line[item.name]}: the mask of {item.name!r} differs from {gif} "
                    f"(area {int(from_csv.sum())} vs {int(from_gif.sum())} px, IoU {inter / max(union, 1):.3f}): "
                    "Carvana's RLE is row-major over the 1280x1918 image — was it written in another pixel order or size?"
                )
        return problems
