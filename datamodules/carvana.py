"""Carvana Image Masking (Kaggle) in its distributed layout.

::

    <root>/train/<car>_<NN>.jpg               1918x1280 RGB JPEG, 16 views (NN = 01..16) per car
    <root>/train_masks/<car>_<NN>_mask.gif    palette GIF, indices {0, 1}
    <root>/train_masks.csv                    img,rle_mask — row-major (order "C") RLE over 1280x1918

Masks come from the GIFs (``mask_source=gif``) or the CSV (``mask_source=csv``, decoded
once into a PNG cache). Train and validation are split **by car**, never by image: the
16 views of a car are near-duplicates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from segkit.data.cache import MaskCache
from segkit.data.datamodule import Item, Scan, SegmentationDataModule
from segkit.data.io import read_mask
from segkit.data.rle_csv import RleTable, cache_rle_masks, read_rle_csv

__all__ = ["CarvanaDataModule", "car_id"]

RLE_ORDER = "C"


def car_id(stem: str) -> str:
    """``"0cdf5b5d0ce1_01"`` → ``"0cdf5b5d0ce1"``."""
    return stem.rsplit("_", 1)[0]


class CarvanaDataModule(SegmentationDataModule):
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
    image_dtype = "uint8"
    default_class_names = ("background", "car")

    def __init__(
        self,
        root: str | None = None,
        images_dir: str = "train",
        masks_dir: str = "train_masks",
        csv_file: str = "train_masks.csv",
        mask_source: str = "gif",
        num_classes: int = 1,
        in_channels: int = 3,
        val_fraction: float = 0.2,
        **kwargs: Any,
    ) -> None:
        if mask_source not in ("gif", "csv"):
            raise ValueError(f"mask_source must be 'gif' or 'csv', got {mask_source!r}")
        if num_classes not in (1, 2):
            raise ValueError(f"Carvana masks are car/background: num_classes must be 1 or 2, got {num_classes}")
        super().__init__(root=root, num_classes=num_classes, in_channels=in_channels, val_fraction=val_fraction, **kwargs)
        self.images_dir = images_dir
        self.masks_dir = masks_dir
        self.csv_file = csv_file
        self.mask_source = mask_source
        self._table: RleTable | None = None
        self._cache: MaskCache | None = None
        self._cache_written = 0

    @property
    def csv_path(self) -> Path:
        return self.root / self.csv_file

    def layout_help(self) -> str:
        return (
            f"expected {self.images_dir}/<car>_<NN>.jpg with {self.masks_dir}/<car>_<NN>_mask.gif "
            f"(mask_source=gif) or {self.csv_file} with columns img,rle_mask (mask_source=csv)"
        )

    def scan(self) -> Scan:
        image_dir = self.root / self.images_dir
        self.require_paths(image_dir)
        images = {p.name: p for p in sorted(image_dir.glob("*.jpg"))}
        problems = [f"{p}: file name is not <car>_<NN>.jpg" for p in images.values() if "_" not in p.stem]
        if self.mask_source == "gif":
            return self._scan_gif(images, problems)
        return self._scan_csv(images, problems)

    def _scan_gif(self, images: dict[str, Path], problems: list[str]) -> Scan:
        mask_dir = self.root / self.masks_dir
        self.require_paths(mask_dir)
        masks = {p.name: p for p in mask_dir.glob("*_mask.gif")}
        items = []
        for name, path in images.items():
            mask = masks.pop(f"{path.stem}_mask.gif", None)
            if mask is None:
                problems.append(f"{path}: image has no mask {mask_dir / (path.stem + '_mask.gif')}")
                continue
            items.append(Item(name=name, image=path, mask=mask, group=car_id(path.stem)))
        problems += [f"{p}: mask has no image {self.root / self.images_dir / p.name.replace('_mask.gif', '.jpg')}" for p in sorted(masks.values())]
        return Scan(items, problems)

    def _table_(self) -> RleTable:
        if self._table is None:
            self.require_paths(self.csv_path)
            self._table = read_rle_csv(self.csv_path, "img", "rle_mask", one_row_per_id=True)
        return self._table

    def _scan_csv(self, images: dict[str, Path], problems: list[str]) -> Scan:
        table = self._table_()
        masks = self.work_dir / "masks"
        items = []
        for name in table.ids:
            if name not in images:
                problems.append(f"{self.csv_path}:{table.first_line[name]}: img {name!r} has no image {self.root / self.images_dir / name}")
                continue
            path = images.pop(name)
            items.append(Item(name=name, image=path, mask=masks / f"{name}.png", group=car_id(path.stem)))
        problems += [f"{p}: image has no row in {self.csv_path}" for p in images.values()]
        return Scan(items, problems)

    # ------------------------------------------------------------ preparation
    def _mask_cache(self) -> MaskCache:
        """The mask cache decoded from the CSV, built or completed once per instance."""
        if self._cache is None:
            images = {i.name: i.image for i in self.items()}
            self._cache, self._cache_written = cache_rle_masks(
                self._table_(), self.work_dir / "masks", images, RLE_ORDER, self.max_image_pixels)
        return self._cache

    def prepare_dataset(self) -> list[str]:
        if self.mask_source == "gif":
            return []
        return [self._mask_cache().describe(self._cache_written)]

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is None and self.mask_source == "csv":
            self._mask_cache()
        super().setup(stage)

    def check(self) -> list[str]:
        """The base checks; with ``mask_source=csv`` and GIFs present, also CSV mask == GIF mask."""
        if self.mask_source == "csv":
            try:
                self._mask_cache()
            except (ValueError, FileNotFoundError) as err:
                return [str(err)]
        problems = super().check()
        if self.mask_source == "csv" and (self.root / self.masks_dir).is_dir():
            problems += self._compare_csv_with_gifs()
        return problems

    def _compare_csv_with_gifs(self) -> list[str]:
        table = self._table_()
        problems = []
        for item in self.items():
            gif = self.root / self.masks_dir / f"{Path(item.name).stem}_mask.gif"
            if not gif.is_file():
                continue
            from_csv = self.mask_values()(read_mask(item.mask), item.mask)
            from_gif = self.mask_values()(read_mask(gif), gif)
            if not np.array_equal(from_csv, from_gif):
                inter = np.logical_and(from_csv, from_gif).sum()
                union = np.logical_or(from_csv, from_gif).sum()
                problems.append(
                    f"{self.csv_path}:{table.first_line[item.name]}: the mask of {item.name!r} differs from {gif} "
                    f"(area {int(from_csv.sum())} vs {int(from_gif.sum())} px, IoU {inter / max(union, 1):.3f}): "
                    "Carvana's RLE is row-major over the 1280x1918 image — was it written in another pixel order or size?"
                )
        return problems
