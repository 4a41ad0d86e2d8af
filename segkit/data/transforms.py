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
    normalize: Mapping[str, Any] | None,
    pad_multiple: int | None = None,
    mask_fill: int = 0,
) -> A.Compose:
    """Resize (if ``image_size``) → pad to a multiple → augmentations → normalisation.

    Args:
        image_size: output ``(height, width)`` or a square side; ``None`` keeps the input size.
        augment: augmentation spec (see :func:`build_augmentations`); ``None`` for evaluation.
        normalize: kwargs of ``albumentations.Normalize`` (mean, std, max_pixel_value,
            normalization); ``None`` only converts to float32 in [0, 1] using the dtype's range.
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
    if normalize is not None:
        steps.append(A.Normalize(**dict(normalize)))
    return A.Compose(steps)


def to_sample(image: np.ndarray, mask: np.ndarray) -> dict[str, torch.Tensor]:
    """``(H, W, C)`` float image and ``(H, W)`` mask → ``{"image": C×H×W float32, "mask": H×W int64}``."""
    if np.issubdtype(image.dtype, np.integer):  # not normalised: scale the dtype's range to [0, 1]
        image = image.astype(np.float32) / float(np.iinfo(image.dtype).max)
    elif image.dtype != np.float32:  # albumentations' per-image Normalize of uint8 returns float64
        image = image.astype(np.float32)
    image_t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    mask_t = torch.from_numpy(np.ascontiguousarray(mask)).long()
    return {"image": image_t, "mask": mask_t}
