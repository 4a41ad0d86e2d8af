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

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from segkit.data.cache import MaskCache, default_cache_dir, file_sha256
from segkit.data.class_stats import CLASS_STATS_FILE
from segkit.data.datasets import ImageMaskDataset
from segkit.data.io import image_size
from segkit.data.rle import rle_decode_many
from segkit.data.sampling import BackgroundRatioSampler, background_subset
from segkit.data.splits import stratified_split
from segkit.data.transforms import build_pipeline

__all__ = ["AirbusDataModule", "AirbusIndex", "read_airbus_csv"]

COLUMNS = ("ImageId", "EncodedPixels")
RLE_ORDER = "F"


@dataclass(frozen=True)
class AirbusIndex:
    """The CSV grouped per image.

    Attributes:
        csv_path: the CSV it was read from.
        image_ids: unique ImageIds in CSV order.
        ships: ImageId → list of ``(csv_line, rle)`` for its non-empty rows (line 1 is the header).
    """

    csv_path: Path
    image_ids: list[str]
    ships: dict[str, list[tuple[int, str]]]

    def has_ship(self, image_id: str) -> bool:
        return image_id in self.ships


def read_airbus_csv(path: str | os.PathLike) -> AirbusIndex:
    """Read and group ``train_ship_segmentations_v2.csv``; errors name the file and line."""
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: the file is empty; expected a header 'ImageId,EncodedPixels'") from None
    except pd.errors.ParserError as err:
        raise ValueError(f"{path}: not a valid CSV ({err})") from err
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{path}: expected columns {','.join(COLUMNS)}, found {','.join(map(str, frame.columns))} "
            f"(missing {', '.join(missing)})"
        )
    if frame.empty:
        raise ValueError(f"{path}: the CSV has a header but no rows")
    ids = frame["ImageId"].str.strip()
    rles = frame["EncodedPixels"].str.strip()
    lines = np.arange(len(frame)) + 2
    bad = ~ids.map(_is_plain_file_name)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(
            f"{path}:{lines[i]}: ImageId {ids.iloc[i]!r} is not a plain file name "
            "(empty, or contains a path separator or '..')"
        )
    ships: dict[str, list[tuple[int, str]]] = {}
    has_rle = (rles != "").to_numpy()
    for image_id, line, rle in zip(ids[has_rle], lines[has_rle], rles[has_rle]):
        ships.setdefault(image_id, []).append((int(line), rle))
    return AirbusIndex(csv_path=path, image_ids=list(dict.fromkeys(ids)), ships=ships)


def _is_plain_file_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name


class AirbusDataModule(L.LightningDataModule):
    """Airbus ship segmentation, binary (``num_classes=1``, sigmoid) or two-class softmax.

    Args:
        root: folder holding ``images_dir`` and ``csv_file``.
        images_dir: image folder below ``root``.
        csv_file: the RLE CSV below ``root``.
        num_classes: 1 (binary, sigmoid) or 2 (background/ship, softmax).
        in_channels: must be 3 (RGB JPEGs).
        image_size: side (or ``[height, width]``) images and masks are resized to; ``None`` keeps 768.
        batch_size: images per batch.
        num_workers: DataLoader worker processes.
        pin_memory: pin host memory; ``None`` = only when CUDA is available.
        val_fraction: share of images held out, stratified by ship / no ship.
        background_ratio: share of ship-free training images drawn anew each epoch.
        val_background_ratio: share of ship-free validation images kept (a fixed draw).
        seed: seed of the split and of the per-epoch background draws.
        cache_dir: mask cache folder; ``None`` = a per-root folder under ``~/.cache/segkit``.
        augment: albumentations spec for training (see ``segkit.data.transforms``).
        normalize: ``albumentations.Normalize`` kwargs.
    """

    kind = "airbus"

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
        pin_memory: bool | None = None,
        val_fraction: float = 0.1,
        background_ratio: float = 0.1,
        val_background_ratio: float = 0.1,
        seed: int = 42,
        cache_dir: str | None = None,
        augment: Mapping[str, Any] | None = None,
        normalize: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if num_classes not in (1, 2):
            raise ValueError(f"Airbus masks are ship/no ship: num_classes must be 1 or 2, got {num_classes}")
        if in_channels != 3:
            raise ValueError(f"Airbus images are RGB JPEGs: in_channels must be 3, got {in_channels}")
        self.save_hyperparameters()
        self.root = Path(root) if root is not None else None
        self.images_dir = images_dir
        self.csv_file = csv_file
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.val_fraction = val_fraction
        self.background_ratio = background_ratio
        self.val_background_ratio = val_background_ratio
        self.seed = seed
        self.cache_dir = cache_dir
        self.augment = augment
        self.normalize = normalize
        self.index: AirbusIndex | None = None
        self._cache: MaskCache | None = None
        self.train_dataset: ImageMaskDataset | None = None
        self.val_dataset: ImageMaskDataset | None = None
        self._train_sampler: BackgroundRatioSampler | None = None

    # ----------------------------------------------------------------- locations
    @property
    def class_names(self) -> list[str]:
        return ["background", "ship"]

    @property
    def csv_path(self) -> Path:
        return self.root / self.csv_file

    @property
    def image_dir(self) -> Path:
        return self.root / self.images_dir

    def _check_layout(self) -> None:
        expected = (
            f"expected {self.images_dir}/<ImageId>.jpg and {self.csv_file} "
            "(columns ImageId,EncodedPixels) below it"
        )
        if self.root is None:
            raise ValueError(f"data.root is not set: point it at the Airbus folder ({expected})")
        root = self.root
        if not root.is_dir():
            raise FileNotFoundError(f"Airbus data root {root} does not exist ({expected})")
        missing = [str(p) for p in (self.image_dir, self.csv_path) if not p.exists()]
        if missing:
            raise FileNotFoundError(f"Airbus data at {root} is incomplete: missing {', '.join(missing)} ({expected})")

    @property
    def work_dir(self) -> Path:
        """Where derived files go: ``cache_dir`` or a per-root folder of the segkit cache."""
        if self.cache_dir:
            return Path(self.cache_dir)
        if self.root is None:
            self._check_layout()  # raises: no root, no work dir
        return default_cache_dir(self.kind, str(self.root.resolve()))

    @property
    def class_stats_path(self) -> Path:
        """The ``class_stats.json`` that ``segkit-prepare`` writes for this dataset."""
        return self.work_dir / CLASS_STATS_FILE

    def _mask_cache(self) -> MaskCache:
        """The mask cache, built (or completed) if needed; the CSV is hashed once per instance."""
        if self._cache is None:
            index = self._load_index()
            cache = MaskCache(self.work_dir / "masks", fingerprint=file_sha256(self.csv_path))
            if not cache.is_complete():
                cache.build(sorted(index.ships), self._decode_ship_mask)
            self._cache = cache
        return self._cache

    # ------------------------------------------------------------------- stages
    def _load_index(self) -> AirbusIndex:
        if self.index is None:
            self._check_layout()
            index = read_airbus_csv(self.csv_path)
            present = set(os.listdir(self.image_dir))
            missing = [i for i in index.image_ids if i not in present]
            if missing:
                raise FileNotFoundError(
                    f"{self.csv_path}: {len(missing)} ImageId(s) have no image in {self.image_dir}, "
                    f"e.g. {missing[0]!r}" + (f", {missing[1]!r}" if len(missing) > 1 else "")
                )
            self.index = index
        return self.index

    def prepare_data(self) -> None:
        """Build the per-image mask cache (rank 0 only under DDP)."""
        self._mask_cache()

    def _decode_ship_mask(self, image_id: str) -> np.ndarray:
        index = self._load_index()
        shape = image_size(self.image_dir / image_id)
        ships = index.ships[image_id]
        try:
            return rle_decode_many([rle for _, rle in ships], shape, order=RLE_ORDER)
        except ValueError:
            for line, rle in ships:  # find the offending row for the message
                try:
                    rle_decode_many([rle], shape, order=RLE_ORDER)
                except ValueError as err:
                    raise ValueError(
                        f"{index.csv_path}:{line}: ImageId {image_id!r}: bad EncodedPixels for a "
                        f"{shape[0]}x{shape[1]} image: {err}"
                    ) from None
            raise

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        index = self._load_index()
        cache = self._mask_cache()
        ids = index.image_ids
        has_ship = np.array([index.has_ship(i) for i in ids], dtype=np.int64)
        train_idx, val_idx = stratified_split(ids, has_ship, self.val_fraction, self.seed)
        val_neg = [i for i in val_idx if not has_ship[i]]
        rng = np.random.default_rng((self.seed, 1))
        keep = set(background_subset(val_neg, self.val_background_ratio, rng).tolist())
        val_idx = [i for i in val_idx if has_ship[i] or i in keep]

        def dataset(indices: list[int], augment: Mapping[str, Any] | None) -> ImageMaskDataset:
            names = [ids[i] for i in indices]
            return ImageMaskDataset(
                names=names,
                image_paths=[self.image_dir / n for n in names],
                mask_paths=[cache.path(n) if index.has_ship(n) else None for n in names],
                transform=build_pipeline(self.image_size, augment, self.normalize),
                in_channels=self.in_channels,
            )

        self.train_dataset = dataset(train_idx, self.augment)
        self.val_dataset = dataset(val_idx, None)
        if len(self.train_dataset) == 0:
            raise ValueError(f"{self.csv_path}: no training images left after the split")
        train_ship = has_ship[train_idx]
        self._train_sampler = BackgroundRatioSampler(
            positives=np.flatnonzero(train_ship),
            negatives=np.flatnonzero(train_ship == 0),
            ratio=self.background_ratio,
            seed=self.seed,
        )

    # -------------------------------------------------------------- dataloaders
    def _loader(self, dataset: ImageMaskDataset, **kwargs: Any) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        assert self.train_dataset is not None, "call setup() first"
        return self._loader(self.train_dataset, sampler=self._train_sampler, drop_last=len(self._train_sampler) > self.batch_size)

    def val_dataloader(self) -> DataLoader:
        assert self.val_dataset is not None, "call setup() first"
        return self._loader(self.val_dataset, shuffle=False)
