"""Map-style datasets over image files and their masks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from segkit.data.io import image_size, read_image, read_mask
from segkit.data.transforms import to_sample

__all__ = ["ImageMaskDataset"]


class ImageMaskDataset(Dataset):
    """Pairs of image files and mask files; a missing mask (``None``) means all background.

    Yields ``{"image": float32 C×H×W, "mask": int64 H×W, "name": str}`` after ``transform``.
    """

    def __init__(
        self,
        names: Sequence[str],
        image_paths: Sequence[Path],
        mask_paths: Sequence[Path | None],
        transform: A.Compose,
        in_channels: int,
    ) -> None:
        if not len(names) == len(image_paths) == len(mask_paths):
            raise ValueError("names, image_paths and mask_paths must have the same length")
        self.names = list(names)
        self.image_paths = list(image_paths)
        self.mask_paths = list(mask_paths)
        self.transform = transform
        self.in_channels = in_channels

    def __len__(self) -> int:
        return len(self.names)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw ``(H, W, C)`` image and ``(H, W)`` mask of one item, before transforms."""
        image_path, mask_path = self.image_paths[index], self.mask_paths[index]
        image = read_image(image_path)
        if image.shape[2] != self.in_channels:
            raise ValueError(
                f"{image_path}: image has {image.shape[2]} channels, the dataset expects "
                f"{self.in_channels} (data.in_channels)"
            )
        if mask_path is None:
            mask = np.zeros(image.shape[:2], dtype=np.uint8)
        else:
            mask = read_mask(mask_path)
            if mask.shape != image.shape[:2]:
                raise ValueError(
                    f"{mask_path}: mask is {mask.shape[0]}x{mask.shape[1]} but its image "
                    f"{image_path} is {image.shape[0]}x{image.shape[1]}"
                )
        return image, mask

    def load_mask(self, index: int) -> np.ndarray:
        """The raw ``(H, W)`` mask of one item without decoding its image (for statistics)."""
        mask_path = self.mask_paths[index]
        if mask_path is None:
            return np.zeros(image_size(self.image_paths[index]), dtype=np.uint8)
        return read_mask(mask_path)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        image, mask = self.load(index)
        out = self.transform(image=image, mask=mask)
        sample: dict[str, torch.Tensor | str] = dict(to_sample(out["image"], out["mask"]))
        sample["name"] = self.names[index]
        return sample
