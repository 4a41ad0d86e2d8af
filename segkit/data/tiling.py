"""Overlapping patch grids over large images (DOTA scenes, sliding-window prediction)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

__all__ = ["axis_starts", "iter_patches", "pad_patch", "patch_grid"]


def axis_starts(size: int, patch: int, overlap: int) -> list[int]:
    """Start offsets along one axis: every ``patch - overlap`` pixels, the last flush with the end.

    A ``size`` not larger than ``patch`` gives ``[0]`` (the patch is then padded).
    """
    if patch <= 0:
        raise ValueError(f"patch size must be > 0, got {patch}")
    if not 0 <= overlap < patch:
        raise ValueError(f"overlap must be in [0, patch size {patch}), got {overlap}")
    if size <= patch:
        return [0]
    stride = patch - overlap
    starts = list(range(0, size - patch, stride))
    starts.append(size - patch)
    return starts


def patch_grid(height: int, width: int, patch: int, overlap: int) -> list[tuple[int, int]]:
    """``(y, x)`` top-left corners of the patches covering a ``height x width`` image."""
    return [(y, x) for y in axis_starts(height, patch, overlap) for x in axis_starts(width, patch, overlap)]


def iter_patches(
    image: np.ndarray, mask: np.ndarray, patch: int, overlap: int, pad_value: int = 0, pad_label: int = 255
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """Yield ``(y, x, image_patch, mask_patch)`` one at a time (never a list of all patches).

    Patches that stick out of a smaller image are padded: image with ``pad_value``, mask
    with ``pad_label`` (the ``ignore_index`` of training).
    """
    height, width = mask.shape
    for y, x in patch_grid(height, width, patch, overlap):
        img, msk = pad_patch(image[y : y + patch, x : x + patch], mask[y : y + patch, x : x + patch], patch, pad_value, pad_label)
        yield y, x, img, msk


def pad_patch(
    image: np.ndarray, mask: np.ndarray, patch: int, pad_value: int = 0, pad_label: int = 255
) -> tuple[np.ndarray, np.ndarray]:
    """A patch cut at an image's edge, padded to ``patch x patch`` (image with ``pad_value``,
    mask with ``pad_label``); a full patch as it is."""
    if image.shape[0] < patch or image.shape[1] < patch:
        pad = ((0, patch - image.shape[0]), (0, patch - image.shape[1]))
        image = np.pad(image, pad + ((0, 0),) * (image.ndim - 2), constant_values=pad_value)
        mask = np.pad(mask, pad, constant_values=pad_label)
    return image, mask
