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
from albumentations.augmentations.crops.transforms import BaseCrop

__all__ = [
    "ForegroundCrop", "SEGKIT_TRANSFORMS", "build_augmentations", "build_pipeline", "to_sample", "wants_class_frequencies",
]

Size = int | Sequence[int] | None


CLASS_DRAWS = ("uniform", "inverse_frequency")


class ForegroundCrop(BaseCrop):
    """A ``height x width`` crop that holds foreground as often as asked: nnU-Net's oversampling.

    With probability ``foreground_share`` a class is drawn among the classes the mask holds
    (every value but ``background`` and ``ignore_values``): uniformly, or with
    ``class_draw="inverse_frequency"`` in proportion to ``1 / f_c``, the class's share of the
    training pixels (so the rarest class present is drawn most), then one of its pixels, and
    the crop is placed at random around that pixel (clipped to the image);
    otherwise, and when the mask holds no such class, the crop is placed anywhere. So rare
    classes are in a third of the crops (the default) however small they are, where a plain
    random crop of a large image mostly holds background. Seeded like every albumentations
    transform (per sample, per epoch, by segkit's samplers).

    Args:
        height, width: the crop, no larger than the image (pad first: ``data.pad_multiple``).
        foreground_share: share of crops centred on a pixel of a drawn class (nnU-Net: 1/3).
        background: the mask value that is never drawn.
        ignore_values: other mask values never drawn (e.g. ``ignore_index``).
        class_draw: ``uniform`` or ``inverse_frequency`` (needs ``class_frequencies``; the
            datamodule fills them in from ``segkit-prepare``'s class statistics).
        class_frequencies: each class's share of the training pixels, by mask value.
        p: probability of cropping at all (1: always).
    """

    def __init__(self, height: int, width: int, foreground_share: float = 1 / 3, background: int = 0,
                 ignore_values: Sequence[int] | None = None, class_draw: str = "uniform",
                 class_frequencies: Sequence[float] | None = None, p: float = 1.0) -> None:
        super().__init__(p=p)
        if height < 1 or width < 1 or not 0.0 <= foreground_share <= 1.0:
            raise ValueError(f"ForegroundCrop: height and width >= 1 and foreground_share in [0, 1] needed, got "
                             f"{height}, {width}, {foreground_share}")
        if class_draw not in CLASS_DRAWS:
            raise ValueError(f"ForegroundCrop: class_draw must be one of {', '.join(CLASS_DRAWS)}, got {class_draw!r}")
        self.height, self.width = int(height), int(width)
        self.foreground_share = float(foreground_share)
        self.background = background
        self.ignore_values = list(ignore_values or [])
        self.class_draw = class_draw
        self.class_frequencies = None if class_frequencies is None else [float(f) for f in class_frequencies]

    def _draw_class(self, classes: list[int]) -> int:
        if self.class_draw == "uniform":
            return self.py_random.choice(classes)
        if self.class_frequencies is None:
            raise ValueError("ForegroundCrop(class_draw=inverse_frequency) has no class frequencies: in a segkit "
                             "augmentation spec the datamodule supplies them (from segkit-prepare's class_stats.json)")
        frequencies = self.class_frequencies
        smallest = min((f for f in frequencies if f > 0), default=1.0)
        # a class the statistics never saw (0 pixels, or beyond them) counts as the rarest seen
        weights = [1.0 / (frequencies[c] if c < len(frequencies) and frequencies[c] > 0 else smallest) for c in classes]
        return self.py_random.choices(classes, weights=weights)[0]

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        image_height, image_width = params["shape"][:2]
        if self.height > image_height or self.width > image_width:
            raise ValueError(f"ForegroundCrop: the crop {self.height}x{self.width} is larger than the image "
                             f"{image_height}x{image_width}: choose a smaller crop, or resize or pad the images first")
        x_min = self.py_random.randint(0, image_width - self.width)
        y_min = self.py_random.randint(0, image_height - self.height)
        mask = data.get("mask")
        if mask is not None and self.py_random.random() < self.foreground_share:
            classes = [int(v) for v in np.unique(mask) if v != self.background and v not in self.ignore_values]
            if classes:
                ys, xs = np.nonzero(mask == self._draw_class(classes))
                pick = self.py_random.randrange(len(ys))
                x_min = int(np.clip(xs[pick] - self.py_random.randint(0, self.width - 1), 0, image_width - self.width))
                y_min = int(np.clip(ys[pick] - self.py_random.randint(0, self.height - 1), 0, image_height - self.height))
        return {"crop_coords": (x_min, y_min, x_min + self.width, y_min + self.height)}

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("height", "width", "foreground_share", "background", "ignore_values", "class_draw", "class_frequencies")


#: segkit's own transforms, usable by ``type:`` in an augmentation spec beside albumentations'
SEGKIT_TRANSFORMS: dict[str, type[A.BasicTransform]] = {"ForegroundCrop": ForegroundCrop}


def build_augmentations(spec: Mapping[str, Mapping[str, Any] | None] | None) -> list[A.BasicTransform]:
    """Instantiate ``{name: {type: ClassName, **kwargs}}`` entries (albumentations' transforms and
    :data:`SEGKIT_TRANSFORMS`); ``None`` entries are skipped."""
    transforms: list[A.BasicTransform] = []
    for name, entry in (spec or {}).items():
        if entry is None:
            continue
        params = dict(entry)
        type_name = params.pop("type", None)
        if type_name is None:
            raise ValueError(f"augmentation {name!r} has no 'type' (an albumentations class name)")
        cls = SEGKIT_TRANSFORMS.get(type_name) or getattr(A, type_name, None)
        if cls is None:
            raise ValueError(f"augmentation {name!r}: albumentations has no transform {type_name!r} "
                             f"(segkit adds {', '.join(SEGKIT_TRANSFORMS)})")
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


def wants_class_frequencies(augment: Mapping[str, Mapping[str, Any] | None] | None) -> bool:
    """Whether an augmentation spec has a ``ForegroundCrop`` that draws classes by frequency."""
    return any(entry is not None and entry.get("type") == "ForegroundCrop" and
               entry.get("class_draw", "uniform") != "uniform" and entry.get("class_frequencies") is None
               for entry in (augment or {}).values())


def build_pipeline(
    image_size: Size,
    augment: Mapping[str, Mapping[str, Any] | None] | None,
    pad_multiple: int | None = None,
    mask_fill: int = 0,
    class_frequencies: Sequence[float] | None = None,
) -> A.Compose:
    """Resize (if ``image_size``) → pad to a multiple → augmentations, on the images' own dtype.

    Normalisation is not part of it: it runs per batch on the training device
    (``segkit.data.normalize.Normalizer``).

    Args:
        image_size: output ``(height, width)`` or a square side; ``None`` keeps the input size.
        augment: augmentation spec (see :func:`build_augmentations`); ``None`` for evaluation.
        pad_multiple: pad bottom/right so height and width are multiples of this.
        mask_fill: mask label of the padding (``ignore_index`` in training).
        class_frequencies: the training pixels' class shares, for ``ForegroundCrop``'s
            ``class_draw: inverse_frequency`` (see :func:`wants_class_frequencies`).
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
    augmentations = build_augmentations(augment)
    for transform in augmentations:  # the padding label (ignore_index) is no class to look for
        if isinstance(transform, ForegroundCrop) and mask_fill not in (transform.background, *transform.ignore_values):
            transform.ignore_values.append(mask_fill)
        if isinstance(transform, ForegroundCrop) and transform.class_draw != "uniform" and transform.class_frequencies is None:
            transform.class_frequencies = None if class_frequencies is None else list(class_frequencies)
    steps.extend(augmentations)
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
