"""Airbus Ship Detection (Kaggle) in its distributed layout.

::

    <root>/train_v2/<ImageId>             768x768 RGB JPEG
    <root>/train_ship_segmentations_v2.csv  ImageId,EncodedPixels — one row per ship,
                                            an empty EncodedPixels for an image without ships

RLE is column-major and 1-indexed (``order="F"``). The masks of all ships of an image
are decoded from the CSV's rows as the image loads (nothing written per image); every
epoch draws all ship images plus a fresh ``background_ratio`` share of the ship-free ones.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from segkit.data.cache import file_sha256
from segkit.data.datamodule import Item, Scan, SegmentationDataModule
from segkit.data.normalize import IMAGENET
from segkit.data.rle_csv import RleCsvMasks, RleTable, read_rle_csv
from segkit.data.sampling import BackgroundRatioSampler, background_subset
from segkit.data.splits import group_kfold, stratified_split

__all__ = ["AirbusDataModule", "read_airbus_csv"]

RLE_ORDER = "F"  # column-major: top to bottom, then left to right
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def read_airbus_csv(path: str | os.PathLike) -> RleTable:
    """Read and group ``train_ship_segmentations_v2.csv`` (``ImageId,EncodedPixels``)."""
    return read_rle_csv(path, "ImageId", "EncodedPixels")


class AirbusDataModule(RleCsvMasks, SegmentationDataModule):
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

    imagery = "overhead"  # satellite / aerial scenes: no up or down

    kind = "airbus"
    fixed_in_channels = True  # RGB JPEGs; in_channels other than 3 is refused
    image_dtype = "uint8"
    default_class_names = ("background", "ship")

    binary_masks = "ship/no ship"
    rle_order = RLE_ORDER
    defaults = {
        "image_size": 256, "val_fraction": 0.1, "normalize": IMAGENET,
        "augment": {  # the Airbus kernel's: h/v flips, rotation, brightness
            "hflip": {"type": "HorizontalFlip", "p": 0.5},
            "vflip": {"type": "VerticalFlip", "p": 0.5},
            "rotate": {"type": "Rotate", "limit": 20, "border_mode": 4, "p": 0.5},  # 4 = cv2.BORDER_REFLECT_101
            "brightness": {"type": "RandomBrightnessContrast", "brightness_limit": 0.2, "contrast_limit": 0.1, "p": 0.5},
        },
    }

    def __init__(
        self,
        root: str | None = None,
        images_dir: str = "train_v2",
        csv_file: str = "train_ship_segmentations_v2.csv",
        background_ratio: float = 0.1,
        val_background_ratio: float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, **kwargs)
        self.images_dir = images_dir
        self.csv_file = csv_file
        self.background_ratio = background_ratio
        self.val_background_ratio = val_background_ratio

    def channel_fix(self) -> str:
        return "Airbus images are RGB: convert the file to RGB, or remove it (data.on_bad_file=skip skips it)"

    @property
    def images_path(self) -> Path:
        return self.root / self.images_dir

    def layout_help(self) -> str:
        return (
            f"expected {self.images_dir}/<ImageId>.jpg and {self.csv_file} "
            "(columns ImageId,EncodedPixels) below it"
        )

    # ---------------------------------------------------------------- listing
    def scan(self) -> Scan:
        self.require_paths(self.images_path, self.csv_path)
        table = self.rle_table()
        present = set(os.listdir(self.images_path))
        items, missing = [], []
        for image_id in table.ids:
            if image_id not in present:
                missing.append(f"{self.csv_path}:{table.first_line[image_id]}: ImageId {image_id!r} "
                               f"has no image {self.images_path / image_id}")
                continue
            # the mask of a ship image is its rows in the CSV; an image without ships has none
            mask = self.csv_path if table.has_mask(image_id) else None
            items.append(Item(name=image_id, image=self.images_path / image_id, mask=mask, group=image_id))
        # an image the CSV does not name has no mask at all (not "no ships": that is an empty row)
        missing += [f"{self.images_path / name}: image has no row in {self.csv_path} (an image without ships has an "
                    "empty row there)" for name in sorted(present)
                    if name not in table.first_line and not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)]
        return Scan(items, missing=missing)

    def read_rle_table(self) -> RleTable:
        return read_airbus_csv(self.csv_path)

    def fingerprint(self) -> str:
        return file_sha256(self.csv_path)

    def source_mask_decoder(self):
        """Masks decoded from the CSV's RLE rows, for training, checks and evaluation alike."""
        return self.rle_decoder()

    # ------------------------------------------------------------ preparation
    def prepare_dataset(self) -> list[str]:
        """Decode every ship image's rows once (a bad row stops here, naming its line); writes
        nothing per image."""
        return [self.check_rle_rows({i.name: i.image for i in self.items() if i.mask is not None})]

    # ---------------------------------------------------------- split, sample
    def split(self, items: list[Item]) -> tuple[list[int], list[int]]:
        """Stratified by ship / no ship; validation keeps a fixed share of its ship-free images."""
        has_ship = np.array([i.mask is not None for i in items], dtype=np.int64)
        if self.folds:  # stratified folds: each fold holds its share of ship and ship-free images
            train_idx, val_idx = group_kfold([i.name for i in items], self.split_groups(items), self.folds, self.fold,
                                             self.seed, strata=has_ship)
        else:
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
        if self.sampling != "uniform":
            raise ValueError(f"data.sampling={self.sampling}: Airbus has one class, whose images are all drawn every "
                             "epoch; data.background_ratio sets the share of ship-free images")
        has_ship = np.array([i.mask is not None for i in items])
        return BackgroundRatioSampler(
            positives=np.flatnonzero(has_ship),
            negatives=np.flatnonzero(~has_ship),
            ratio=self.background_ratio,
            seed=self.seed,
        )
