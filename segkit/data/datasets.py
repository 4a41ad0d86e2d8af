"""Map-style datasets over image files and their masks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from segkit.data.io import DEFAULT_MAX_IMAGE_PIXELS, conform_channels, image_size, read_image, read_mask
from segkit.data.table import PathColumn, StringColumn
from segkit.data.transforms import to_sample
from segkit.errors import DataFileError

__all__ = ["BAD_FILE_POLICIES", "ImageMaskDataset", "ImageSpec", "MaskValues", "label_count"]


def label_count(num_classes: int) -> int:
    """How many values a mask holds for a model of ``num_classes`` outputs: a binary model
    (1 output, sigmoid) still has two labels, background and foreground."""
    return max(int(num_classes), 2)

BAD_FILE_POLICIES = ("error", "skip")
# data.on_bad_file=skip gives up after this many unreadable items in a row: a folder that
# cannot be read at all is an error, not an empty epoch
MAX_CONSECUTIVE_BAD_FILES = 50


@dataclass(frozen=True)
class ImageSpec:
    """What every image of a dataset must be: channel count, optionally dtype, and at most
    ``max_pixels`` pixels (checked from the header, before decoding). ``fix``: what a user
    does about an image with other channels (the settings this dataset accepts)."""

    channels: int
    dtype: str | None = None  # "uint8", "uint16" or None for any
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
    fix: str = "set data.in_channels to the images' channel count"

    def conform(self, image: np.ndarray, path: Path) -> np.ndarray:
        """``image`` with the dataset's channels (:func:`~segkit.data.io.conform_channels`: lossless
        conversions only) and dtype, or ``ValueError`` naming ``path``."""
        image = conform_channels(image, self.channels, path, self.fix)
        if self.dtype is not None and image.dtype != np.dtype(self.dtype):
            bits = {np.dtype("uint8"): "8-bit", np.dtype("uint16"): "16-bit"}
            found = bits.get(image.dtype, str(image.dtype))
            expected = bits.get(np.dtype(self.dtype), self.dtype)
            raise ValueError(f"{path}: image is {found} ({image.dtype}), the dataset expects {expected} ({self.dtype})")
        return image


@dataclass(frozen=True)
class MaskValues:
    """Checks (and maps) mask values: labels ``0..n_labels-1`` plus ``ignore_index``.

    ``scale_255``: binary masks stored as {0, 255} become {0, 1}; {0, 1} is accepted too.
    ``palette``: colour-coded RGB masks; ``palette[k]`` is the ``(r, g, b)`` of class ``k``
    (the masks are read as RGB images, every colour must be in the palette).
    """

    n_labels: int
    ignore_index: int | None = None
    scale_255: bool = False
    palette: tuple[tuple[int, int, int], ...] | None = None
    binary_hint: str = ""  # said when a mask holds exactly {0, 255} and these are not its values

    def from_colours(self, mask: np.ndarray, path: Path | str) -> np.ndarray:
        """An ``(H, W, 3)`` RGB mask → ``(H, W)`` class indices by ``palette``."""
        if mask.ndim != 3 or mask.shape[2] < 3:
            raise ValueError(f"{path}: a colour-coded mask must be RGB, got shape {mask.shape}")
        rgb = mask[:, :, :3].astype(np.uint32)
        codes = (rgb[:, :, 0] << 16) | (rgb[:, :, 1] << 8) | rgb[:, :, 2]
        palette = np.array([(r << 16) | (g << 8) | b for r, g, b in self.palette], dtype=np.uint32)
        order = np.argsort(palette)
        position = np.clip(np.searchsorted(palette[order], codes), 0, len(palette) - 1)
        known = palette[order][position] == codes
        if not known.all():
            unknown = np.unique(codes[~known])
            shown = ", ".join(f"({c >> 16}, {(c >> 8) & 255}, {c & 255})" for c in unknown[:5].tolist())
            raise ValueError(
                f"{path}: {int((~known).sum())} pixel(s) of {len(unknown)} colour(s) not in the palette: {shown}"
                f"{' ...' if len(unknown) > 5 else ''} (data.palette lists the colour of each class)"
            )
        return order[position].astype(self.dtype)

    @property
    def dtype(self) -> type:
        """The smallest dtype that holds every label and ``ignore_index``: what masks travel as."""
        low = min(0, self.ignore_index if self.ignore_index is not None else 0)
        high = max(self.n_labels - 1, self.ignore_index if self.ignore_index is not None else 0)
        if low >= 0 and high <= 255:
            return np.uint8
        if low >= -(2**15) and high < 2**15:
            return np.int16
        return np.int64

    def __call__(self, mask: np.ndarray, path: Path | str) -> np.ndarray:
        if self.palette is not None:
            return self.from_colours(mask, path)
        if self.scale_255:
            values = np.unique(mask)
            if not set(values.tolist()) <= {0, 1, 255} or (1 in values and 255 in values):
                raise ValueError(
                    f"{path}: a binary mask must hold {{0, 255}} or {{0, 1}}, found values {values.tolist()[:10]}"
                )
            return (mask > 0).astype(np.uint8)
        if mask.size == 0 or (int(mask.min()) >= 0 and int(mask.max()) < self.n_labels):
            return mask  # the usual case, two reductions
        invalid = (mask < 0) | (mask >= self.n_labels)
        if self.ignore_index is not None:
            invalid &= mask != self.ignore_index
        if invalid.any():
            found = np.unique(mask).tolist()
            hint = f" — the mask holds only {{0, 255}}: {self.binary_hint}" if self.binary_hint and found in ([0, 255], [255]) else ""
            raise ValueError(
                f"{path}: mask values {np.unique(mask[invalid]).tolist()[:10]} are outside the classes "
                f"0..{self.n_labels - 1}" + (f" (ignore_index {self.ignore_index})" if self.ignore_index is not None else "")
                + hint
            )
        return mask


class ImageMaskDataset(Dataset):
    """Pairs of image files and mask files; a missing mask (``None``) means all background.

    Yields ``{"image": H×W×C (uint8 / uint16 as decoded), "mask": H×W (``mask_values.dtype``),
    "name": str}`` after ``transform``; batches are normalised on the device
    (``SegmentationDataModule.on_after_batch_transfer``).
    """

    def __init__(
        self,
        names: Sequence[str],
        image_paths: Sequence[Path],
        mask_paths: Sequence[Path | None],
        transform: A.Compose,
        image_spec: ImageSpec,
        mask_values: MaskValues,
        mask_decoder: Callable[[str, tuple[int, int]], np.ndarray] | None = None,
        on_bad_file: str = "error",
    ) -> None:
        if not len(names) == len(image_paths) == len(mask_paths):
            raise ValueError("names, image_paths and mask_paths must have the same length")
        if on_bad_file not in BAD_FILE_POLICIES:
            raise ValueError(f"data.on_bad_file must be one of {', '.join(BAD_FILE_POLICIES)}, got {on_bad_file!r}")
        # compact columns, not lists of objects: loader workers then share them with the
        # parent instead of copying them page by page (segkit.data.table)
        self.names = StringColumn(names)
        self.image_paths = PathColumn(image_paths)
        self.mask_paths = PathColumn(mask_paths)
        self.transform = transform
        self.image_spec = image_spec
        self.mask_values = mask_values
        self.mask_decoder = mask_decoder
        self.on_bad_file = on_bad_file

    def __len__(self) -> int:
        return len(self.names)

    def load_image(self, index: int) -> np.ndarray:
        path = self.image_paths[index]
        return self.image_spec.conform(read_image(path, self.image_spec.max_pixels), path)

    def load_mask(self, index: int, shape: tuple[int, int] | None = None) -> np.ndarray:
        """The ``(H, W)`` mask of one item, values checked and mapped; ``shape`` of a missing
        mask is read from the image header when not given. With a ``mask_decoder`` the mask
        comes from ``mask_decoder(name, shape)`` (RLE rows, label polygons) instead of a file."""
        mask_path = self.mask_paths[index]
        if self.mask_decoder is not None:
            shape = shape or image_size(self.image_paths[index], self.image_spec.max_pixels)
            return self.mask_values(self.mask_decoder(self.names[index], shape), self.image_paths[index])
        if mask_path is None:
            return np.zeros(shape or image_size(self.image_paths[index], self.image_spec.max_pixels), dtype=np.uint8)
        if self.mask_values.palette is not None:  # colour-coded: read as an RGB image
            return self.mask_values(read_image(mask_path, self.image_spec.max_pixels), mask_path)
        return self.mask_values(read_mask(mask_path, self.image_spec.max_pixels), mask_path)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw ``(H, W, C)`` image and ``(H, W)`` mask of one item, before transforms."""
        image = self.load_image(index)
        mask = self.load_mask(index, image.shape[:2])
        if mask.shape != image.shape[:2]:
            turned = " (the image as shown, after its EXIF orientation: was the mask drawn on the unrotated pixels?)" \
                if mask.shape == image.shape[1::-1] else ""
            raise ValueError(
                f"{self.mask_paths[index]}: mask is {mask.shape[0]}x{mask.shape[1]} but its image "
                f"{self.image_paths[index]} is {image.shape[0]}x{image.shape[1]}{turned}"
            )
        return image, mask

    def _load_or_skip(self, index: int) -> tuple[int, np.ndarray, np.ndarray, str]:
        """``(index, image, mask, skipped)``: item ``index`` — or, when it cannot be read and
        ``on_bad_file`` is ``skip``, the next readable item, ``skipped`` then saying which
        file(s) were passed over and why (``""`` when none)."""
        skipped = []
        for attempt in range(MAX_CONSECUTIVE_BAD_FILES):
            at = (index + attempt) % len(self)
            try:
                image, mask = self.load(at)
                return at, image, mask, "\n".join(skipped)
            except (ValueError, OSError) as err:  # FileNotFoundError and PermissionError are OSErrors
                if self.on_bad_file == "error":
                    raise DataFileError(
                        f"{err} — fix or remove the file, or set data.on_bad_file=skip to train without such files "
                        "(each is logged and counted in metrics.json)"
                    ) from None
                skipped.append(str(err))
        raise DataFileError(
            f"{MAX_CONSECUTIVE_BAD_FILES} files in a row cannot be read (data.on_bad_file=skip), the last: {skipped[-1]} — "
            "is the dataset folder complete and readable? segkit-prepare check=true lists every problem"
        )

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor | str]:
        """``key``: an index, or ``(index, augmentation seed)`` as segkit's samplers yield.

        albumentations draws from its own generators, seeded from OS entropy; they are
        reseeded per sample — from the key, or else from torch's RNG — so augmentations
        follow the run's seed.
        """
        index, seed = key if isinstance(key, tuple) else (key, None)
        index, image, mask, skipped = self._load_or_skip(index)
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, ()))
        self.transform.set_random_seed(seed)
        out = self.transform(image=image, mask=mask)
        sample: dict[str, torch.Tensor | str] = dict(to_sample(out["image"], out["mask"], self.mask_values.dtype))
        sample["name"] = self.names[index]
        sample["skipped"] = skipped  # data.on_bad_file=skip: "file: why" of items passed over for this one
        # standing in for an unreadable item: fine to train on, but validation leaves it out
        # (scored in its own place, it would count twice in the metrics that choose best.ckpt)
        sample["stand_in"] = bool(skipped)
        return sample
