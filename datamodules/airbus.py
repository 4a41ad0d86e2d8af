"""Airbus Ship Detection (Kaggle) in its distributed layout.

::

    <root>/train_v2/<ImageId>             768x768 RGB JPEG
    <root>/train_ship_segmentations_v2.csv  ImageId,EncodedPixels — one row per ship,
                                            an empty EncodedPixels for an image without ships

RLE is column-major and 1-indexed (``order="F"``). Masks of all ships of an image are
decoded once into a per-image PNG cache (rebuilt when the CSV changes); every epoch
draws all ship images plus a fresh ``background_ratio`` share of the ship-free ones.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np

from segkit.data.cache import MaskCache, file_sha256
from segkit.data.datamodule import Item, Scan, SegmentationDataModule
from segkit.data.rle_csv import RleTable, cache_rle_masks, read_rle_csv
from segkit.data.sampling import BackgroundRatioSampler, background_subset
from segkit.data.splits import stratified_split

__all__ = ["AirbusDataModule", "read_airbus_csv"]

RLE_ORDER = "F"


def read_airbus_csv(path: str | os.PathLike) -> RleTable:
    """Read and group ``train_ship_segmentations_v2.csv`` (``ImageId,EncodedPixels``)."""
    return read_rle_csv(path, "ImageId", "EncodedPixels")


class AirbusDataModule(SegmentationDataModule):
    """Airbus ship segmentation, binary (``num_classes=1``, sigmoid) or two-class softmax.

    Args:
        root: folder holding ``images_dir`` and ``csv_file``.
        images_dir: image folder below ``root``.
        csv_file: the RLE CSV below ``root``.
        background_ratio: share of ship-free training images drawn anew each epoch.
        val_background_ratio: share of ship-free validation images kept (a fixed draw).
        val_fraction: share of images held out, stratified by ship / no ship.
        **kwargs: everything :class:`SegmentationDataModule` takes (image_size, batch_size, ...).
    """

    kind = "airbus"
    fixed_in_channels = True  # RGB JPEGs; in_channels other than 3 is refused
    image_dtype = "uint8"
    default_class_names = ("background", "ship")

    def __init__(
        self,
        root: str | None = None,
        images_dir: str = "train_v2",
        csv_file: str = "train_ship_segmentations_v2.csv",
        num_classes: int = 1,
        in_channels: int = 3,
        image_size: int | list[int] | None = 256,
        batch_size: int = 8,
        num_workers: int = 2,
        val_fraction: float = 0.1,
        background_ratio: float = 0.1,
        val_background_ratio: float = 0.1,
        seed: int = 42,
        **kwargs: Any,
    ) -> None:
        if num_classes not in (1, 2):
            raise ValueError(f"Airbus masks are ship/no ship: num_classes must be 1 or 2, got {num_classes}")
        if in_channels != 3:
            raise ValueError(f"Airbus images are RGB JPEGs: in_channels must be 3, got {in_channels}")
        super().__init__(
            root=root, num_classes=num_classes, in_channels=in_channels, image_size=image_size,
            batch_size=batch_size, num_workers=num_workers, val_fraction=val_fraction, seed=seed, **kwargs,
        )
        self.images_dir = images_dir
        self.csv_file = csv_file
        self.background_ratio = background_ratio
        self.val_background_ratio = val_background_ratio
        self.index: RleTable | None = None
        self._cache: MaskCache | None = None
        self._cache_written = 0

    @property
    def csv_path(self) -> Path:
        return self.root / self.csv_file

    def channel_fix(self) -> str:
        return "Airbus images are RGB: convert the file to RGB, or remove it (data.on_bad_file=skip skips it)"

    @property
    def image_dir(self) -> Path:
        return self.root / self.images_dir

    def layout_help(self) -> str:
        return (
            f"expected {self.images_dir}/<ImageId>.jpg and {self.csv_file} "
            "(columns ImageId,EncodedPixels) below it"
        )

    # ---------------------------------------------------------------- listing
    def scan(self) -> Scan:
        self.require_paths(self.image_dir, self.csv_path)
        index = self._load_index()
        present = set(os.listdir(self.image_dir))
        masks = self.work_dir / "masks"
        items, missing = [], []
        for image_id in index.ids:
            if image_id not in present:
                missing.append(f"{self.csv_path}:{index.first_line[image_id]}: ImageId {image_id!r} has no image {self.image_dir / image_id}")
                continue
            mask = masks / f"{image_id}.png" if index.has_mask(image_id) else None
            items.append(Item(name=image_id, image=self.image_dir / image_id, mask=mask, group=image_id))
        return Scan(items, missing=missing)

    def _load_index(self) -> RleTable:
        if self.index is None:
            self.index = read_airbus_csv(self.csv_path)
        return self.index

    def fingerprint(self) -> str:
        return file_sha256(self.csv_path)

    def source_mask_decoder(self):
        """Masks decoded from the CSV's RLE rows (checks and evaluation need no mask cache)."""
        return functools.partial(self._load_index().decode, order=RLE_ORDER)

    # ------------------------------------------------------------ preparation
    def _mask_cache(self) -> MaskCache:
        """The mask cache of the ship images, built or completed once per instance."""
        if self._cache is None:
            ships = {i.name: i.image for i in self.items() if i.mask is not None}
            self._cache, self._cache_written = cache_rle_masks(
                self._load_index(), self.work_dir / "masks", ships, RLE_ORDER, self.max_image_pixels)
        return self._cache

    def prepare_dataset(self) -> list[str]:
        """Build the per-image mask cache (rank 0 only under DDP)."""
        return [self._mask_cache().describe(self._cache_written)]

    # ---------------------------------------------------------- split, sample
    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is None:
            self._mask_cache()
        super().setup(stage)

    def split(self, items: list[Item]) -> tuple[list[int], list[int]]:
        """Stratified by ship / no ship; validation keeps a fixed share of its ship-free images."""
        has_ship = np.array([i.mask is not None for i in items], dtype=np.int64)
        train_idx, val_idx = stratified_split([i.name for i in items], has_ship, self.val_fraction, self.seed)
        val_neg = [i for i in val_idx if not has_ship[i]]
        rng = np.random.default_rng((self.seed, 1))
        keep = set(background_subset(val_neg, self.val_background_ratio, rng).tolist())
        return train_idx, [i for i in val_idx if has_ship[i] or i in keep]

    def empty_val_hint(self) -> str:
        items = self._scan.items if self._scan is not None else []
        _, held = stratified_split([i.name for i in items], [i.mask is not None for i in items], self.val_fraction, self.seed)
        ships = sum(items[i].mask is not None for i in held)
        return (f"data.val_fraction={self.val_fraction} held out {len(held)} image(s), {ships} with ships, and validation keeps "
                f"data.val_background_ratio={self.val_background_ratio} of {len(held) - ships} ship-free one(s): "
                "raise data.val_background_ratio or data.val_fraction, add images with ships, or train without "
                "validation with data.val_fraction=0")

    def empty_epoch_hint(self) -> str:
        return (f"no training image has ships and data.background_ratio={self.background_ratio} draws none of the "
                "ship-less ones: raise data.background_ratio")

    def train_sampler(self, items: list[Item]) -> BackgroundRatioSampler:
        has_ship = np.array([i.mask is not None for i in items])
        return BackgroundRatioSampler(
            positives=np.flatnonzero(has_ship),
            negatives=np.flatnonzero(~has_ship),
            ratio=self.background_ratio,
            seed=self.seed,
        )
