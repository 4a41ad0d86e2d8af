"""Albumentations pipelines built from config.

Augmentations are a mapping ``name -> {type: <albumentations class>, **kwargs}`` so that a
Hydra override can change or drop one entry (``data.augment.rotate=null``); entries keep
their order. Geometric transforms move the mask with the image (nearest interpolation).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import albumentations as A
import numpy as np
import torch

__all__ = ["build_augmentations", "build_pipeline", "to_sample"]

Size = int | Sequence[int] | None


def build_augmentations(spec: Mapping[str, Mapping[str, Any] | None] | None) -> list[A.BasicTransform]:
    """Instantiate ``{name: {type: ClassName, **kwargs}}`` entries; ``None`` entries are skipped."""
    transforms: list[A.BasicTransform] = []
    for name, entry in (spec or {}).items():
        if entry is None:
            continue
        params = dict(entry)
        type_name = params.pop("type", None)
        if type_name is None:
            raise ValueError(f"augmentation {name!r} has no 'type' (an albumentations class name)")
        cls = getattr(A, type_name, None)
        if cls is None:
            raise ValueError(f"augmentation {name!r}: albumentations has no transform {type_name!r}")
        accepted = {
            n for n, p in inspect.signature(cls.__init__).parameters.items()
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and n != "self"
        }
        unknown = sorted(set(params) - accepted)
        if unknown:  # albumentations only warns about these: a typo would go unnoticed
            raise ValueError(
                f"augmentation {name!r} ({type_name}): unknown argument(s) {', '.join(unknown)}; "
                f"it takes {', '.join(sorted(accepted))}"
            )
        try:
            transforms.append(cls(**params))
        except (TypeError, ValueError) as err:
            raise ValueError(f"augmentation {name!r} ({type_name}): {err}") from err
    return transforms


def _hw(size: Size) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def build_pipeline(
    image_size: Size,
    augment: Mapping[str, Mapping[str, Any] | None] | None,
    pad_multiple: int | None = None,
    mask_fill: int = 0,
) -> A.Compose:
    """Resize (if ``image_size``) → pad to a multiple → augmentations, on the images' own dtype.

    Normalisation is not part of it: it runs per batch on the training device
    (``segkit.data.normalize.Normalizer``).

    Args:
        image_size: output ``(height, width)`` or a square side; ``None`` keeps the input size.
        augment: augmentation spec (see :func:`build_augmentations`); ``None`` for evaluation.
        pad_multiple: pad bottom/right so height and width are multiples of this.
        mask_fill: mask label of the padding (``ignore_index`` in training).
    """
    steps: list[A.BasicTransform] = []
    hw = _hw(image_size)
    if hw is not None:
        steps.append(A.Resize(*hw))
    if pad_multiple:
        steps.append(
            A.PadIfNeeded(
                min_height=None, min_width=None, pad_height_divisor=pad_multiple, pad_width_divisor=pad_multiple,
                position="top_left", fill=0, fill_mask=mask_fill,
            )
        )
    steps.extend(build_augmentations(augment))
    return A.Compose(steps)


def to_sample(image: np.ndarray, mask: np.ndarray, mask_dtype: np.dtype | type = np.uint8) -> dict[str, torch.Tensor]:
    """``(H, W, C)`` image and ``(H, W)`` mask → ``{"image": H×W×C tensor, "mask": H×W tensor}``.

    The image keeps its dtype (uint8 / uint16; float64 becomes float32) and layout: it is
    normalised and made ``(B, C, H, W)`` float32 per batch on the training device
    (``segkit.data.normalize.Normalizer``, which the datamodule applies after the batch is
    moved). Masks travel as ``mask_dtype`` (uint8 unless labels or ``ignore_index`` need more).
    """
    if image.ndim == 2:
        image = image[:, :, None]
    if image.dtype == np.float64:
        image = image.astype(np.float32)
    image_t = torch.from_numpy(np.ascontiguousarray(image))
    mask_t = torch.from_numpy(np.ascontiguousarray(mask, dtype=mask_dtype))
    return {"image": image_t, "mask": mask_t}
