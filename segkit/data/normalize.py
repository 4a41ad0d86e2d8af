"""Image normalisation, applied to whole batches on the training device.

Workers hand over images as they were decoded and augmented — ``(B, H, W, C)`` uint8 /
uint16 (float32 only when a transform made them so) — and masks as uint8: four times less
memory through the workers' shared memory and the host→device copy than float32 images
and int64 masks. :class:`Normalizer` then turns a batch into ``(B, C, H, W)`` float32 with
channels-last strides (the layout the models run fastest in, so no copy follows) where the
batch lives, usually the GPU. It is what ``albumentations.Normalize`` computes, for every
``normalization`` mode, including its per-image statistics and the constants albucore
uses; the predictor applies the same map to windows of large images
(``segkit.predictor.Preprocessing``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["Normalizer"]

#: ImageNet statistics (what pretrained encoders expect), in albumentations ``Normalize`` form
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "max_pixel_value": 255.0}

_EPS = 1e-4  # albucore's
_CLIP = 20.0  # albucore clips per-image normalised values to [-20, 20]
_MODES = ("standard", "image", "image_per_channel", "min_max", "min_max_per_channel")


def _dtype_peak(dtype: torch.dtype) -> float:
    if dtype.is_floating_point:
        return 1.0
    return float(torch.iinfo(dtype).max)


class Normalizer:
    """``albumentations.Normalize`` arguments (or ``None``: scale the dtype's range to [0, 1])
    as a per-sample, per-channel affine map ``clip((x - offset) * scale)``.

    Args:
        normalize: ``mean``, ``std``, ``max_pixel_value``, ``normalization`` (albumentations'
            names and defaults); ``mean``/``std`` must be numbers here (``"dataset"`` is
            resolved by the datamodule).
    """

    def __init__(self, normalize: Mapping[str, Any] | None) -> None:
        self.spec = None if normalize is None else dict(normalize)
        self.mode: str | None = None
        if self.spec is None:
            return
        unknown = sorted(set(self.spec) - {"mean", "std", "max_pixel_value", "normalization", "p"})
        if unknown:
            raise ValueError(f"normalize: unknown key(s) {', '.join(unknown)} (mean, std, max_pixel_value, normalization)")
        self.mode = self.spec.get("normalization", "standard")
        if self.mode not in _MODES:
            raise ValueError(f"normalize.normalization: {self.mode!r} is not one of {', '.join(_MODES)}")
        if self.mode == "standard":
            mean = self.spec.get("mean", (0.485, 0.456, 0.406))
            std = self.spec.get("std", (0.229, 0.224, 0.225))
            for key, value in (("mean", mean), ("std", std)):
                if isinstance(value, str):
                    raise ValueError(f"normalize.{key}: {value!r} must be resolved to numbers first")
            # max_pixel_value null: the range of the images' dtype (255 for uint8, 65535 for uint16)
            peak = self.spec.get("max_pixel_value", 255.0)
            self._peak = None if peak is None else float(peak)
            self._mean_unit = torch.as_tensor(mean, dtype=torch.float64).flatten()
            self._std_unit = torch.as_tensor(std, dtype=torch.float64).flatten()
        # the fixed mean/scale as float32 (1, 1, 1, C) on each device they were used on: copied
        # there once, not with a blocking host->device copy on every batch
        self._on_device: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def affine(self, images: torch.Tensor, source_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor, float | None]:
        """``(offset, scale, clip)`` for ``(B, H, W, C)`` images: offset and scale are ``(B, 1, 1, C)``
        float32. ``source_dtype``: the images' dtype before any conversion (decides the range
        and albucore's uint8 constants); defaults to ``images.dtype``."""
        source_dtype = source_dtype or images.dtype
        batch, channels = images.shape[0], images.shape[-1]
        shape = (batch, 1, 1, channels)
        kwargs = dict(dtype=torch.float32, device=images.device)
        if self.mode is None:
            scale = torch.full(shape, 1.0 / _dtype_peak(source_dtype), **kwargs)
            return torch.zeros(shape, **kwargs), scale, None
        if self.mode == "standard":
            peak = self._peak if self._peak is not None else _dtype_peak(source_dtype)
            key = (str(images.device), channels, peak)
            if key not in self._on_device:
                if self._mean_unit.numel() not in (1, channels) or self._std_unit.numel() not in (1, channels):
                    raise ValueError(
                        f"normalize: mean/std have {self._mean_unit.numel()}/{self._std_unit.numel()} values "
                        f"but the images have {channels} channel(s)"
                    )
                mean, scale = self._mean_unit * peak, 1.0 / (self._std_unit * peak)
                self._on_device[key] = tuple(
                    v.to(torch.float32).expand(channels).reshape(1, 1, 1, channels).contiguous().to(images.device)
                    for v in (mean, scale))
            offset, scale = self._on_device[key]
            return offset.expand(shape), scale.expand(shape), None
        values = images if images.dtype == torch.float32 else images.float()
        per_channel = self.mode.endswith("per_channel") and channels > 1
        dims = (1, 2) if per_channel else (1, 2, 3)
        uint8 = source_dtype == torch.uint8  # albucore's uint8 (LUT) path adds eps where its OpenCV path does not
        if self.mode in ("image", "image_per_channel"):
            std, mean = torch.std_mean(values, dim=dims, correction=0, keepdim=True)
            eps = _EPS if (uint8 or not per_channel) else 0.0
            return mean.expand(shape), (1.0 / (std + eps)).expand(shape), _CLIP
        low = values.amin(dim=dims, keepdim=True)
        span = values.amax(dim=dims, keepdim=True) - low + (_EPS if (uint8 or per_channel) else 0.0)
        scale = torch.where(span > 0, 1.0 / span.clamp_min(1e-12), torch.zeros_like(span))
        return low.expand(shape), scale.expand(shape), _CLIP

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C)`` images of any dtype → normalised ``(B, C, H, W)`` float32, channels-last strides."""
        if images.ndim != 4:
            raise ValueError(f"expected (batch, height, width, channels) images, got shape {tuple(images.shape)}")
        source_dtype = images.dtype
        values = images.to(torch.float32, copy=True)
        offset, scale, clip = self.affine(values, source_dtype)
        values.sub_(offset).mul_(scale)
        if clip is not None:
            values.clamp_(-clip, clip)
        return values.permute(0, 3, 1, 2)
