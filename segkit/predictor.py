"""Applying a trained model to whole images of any size, exactly as it saw them in training.

:class:`Preprocessing` reproduces the training pipeline's deterministic part (resize, pad,
normalisation as ``segkit.data.normalize.Normalizer``) from the checkpoint; :class:`Predictor` runs the model over
an image — one window when it fits, blended sliding windows when it does not — with
optional TTA and mixed precision, and returns class labels (and probabilities) at the
image's own resolution. Window outputs and TTA views are averaged as logits, and so are
the models of an ensemble (several checkpoints, e.g. the folds of a cross-validation), each
window normalised as its own model's training normalised it.

Normalisation is applied per window as one affine map per channel, ``(x - offset) *
scale``: per-image statistics (``normalization: image`` / ``min_max`` ...) are taken over
the whole (resized, padded) image first, as training took them, so a window is
normalised as the whole image would have been.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from segkit.checkpoint import LoadedCheckpoint
from segkit.data.datasets import label_count
from segkit.data.io import conform_channels
from segkit.data.normalize import Normalizer
from segkit.inference import TTA_TRANSFORMS, iter_blended_rows, predict_with_tta, window_layout
from segkit.module import SegmentationModule

__all__ = [
    "Prediction", "Predictor", "Preprocessing", "autocast_dtype", "build_predictor", "check_ensemble", "resolve_device",
]

@dataclass(frozen=True)
class Preprocessing:
    """The deterministic part of training's pipeline (see ``segkit.data.transforms.build_pipeline``).

    Args:
        in_channels: channels the model takes.
        image_dtype: ``"uint8"``/``"uint16"`` the training images had (``None``: any).
        image_size: ``(height, width)`` training resized to, or ``None`` (native size).
        pad_multiple: training padded bottom/right with zeros to this multiple (``None``: no padding).
        size_multiple: the model's input size multiple.
        normalize: ``albumentations.Normalize`` arguments, or ``None`` (divide by the dtype's maximum).
    """

    in_channels: int
    image_dtype: str | None
    image_size: tuple[int, int] | None
    pad_multiple: int | None
    size_multiple: int
    normalize: Mapping[str, Any] | None

    @classmethod
    def from_checkpoint(cls, spec: Mapping[str, Any]) -> Preprocessing:
        size = spec.get("image_size")
        return cls(
            in_channels=int(spec["in_channels"]),
            image_dtype=spec.get("image_dtype"),
            image_size=None if size is None else (int(size[0]), int(size[1])),
            pad_multiple=spec.get("pad_multiple"),
            size_multiple=int(spec.get("size_multiple") or 1),
            normalize=spec.get("normalize"),
        )

    def check(self, image: np.ndarray, path: str | Path) -> np.ndarray:
        """``image`` as the model takes it, or ``ValueError`` naming ``path``.

        Its channels are conformed to ``in_channels`` by the channel policy training applies
        (:func:`~segkit.data.io.conform_channels`: gray → RGB, a fully opaque alpha channel
        dropped, RGB with equal channels → gray; colour → gray, transparency and other
        counts refused); its dtype must be the one the model was trained on.
        """
        if image.ndim == 2:
            image = image[:, :, None]
        image = conform_channels(
            image, self.in_channels, path, f"the model was trained on {self.in_channels}-channel images: convert the file"
        )
        if self.image_dtype is not None and image.dtype != np.dtype(self.image_dtype):
            raise ValueError(
                f"{path}: image is {image.dtype}, the model was trained on {self.image_dtype} images "
                "(its normalisation assumes that range)"
            )
        if image.dtype not in (np.uint8, np.uint16, np.float32):
            raise ValueError(f"{path}: unsupported image dtype {image.dtype} (uint8, uint16 or float32)")
        return image

    def resize(self, image: np.ndarray) -> np.ndarray:
        """Resize to ``image_size`` as ``albumentations.Resize`` does (bilinear); unchanged when ``None``."""
        if self.image_size is None or image.shape[:2] == self.image_size:
            return image
        height, width = self.image_size
        resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        return resized[:, :, None] if resized.ndim == 2 else resized

    def affine(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, float | None]:
        """``(offset, scale, clip)`` per channel: the normalised image is
        ``clip((image - offset) * scale)`` — what training's :class:`~segkit.data.normalize.Normalizer`
        computes for this image (per-image statistics over the padded image, as training had it)."""
        normalizer = Normalizer(self.normalize)
        per_image = normalizer.mode not in (None, "standard")
        pixels = torch.from_numpy(np.ascontiguousarray(self._padded(image) if per_image else image[:1, :1]))
        offset, scale, clip = normalizer.affine(pixels[None])
        return offset[0, 0, 0].numpy().copy(), scale[0, 0, 0].numpy().copy(), clip

    def _padded(self, image: np.ndarray) -> np.ndarray:
        """The image as training's ``PadIfNeeded`` left it (its zeros count in per-image statistics)."""
        if not self.pad_multiple:
            return image
        m = self.pad_multiple
        pad_h, pad_w = -image.shape[0] % m, -image.shape[1] % m
        if not (pad_h or pad_w):
            return image
        return np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)))


@dataclass
class Prediction:
    """One image's prediction at its own resolution.

    ``labels``: ``(H, W)`` uint8 class indices (binary: 0/1). ``probabilities``: ``(K, H, W)``
    float32 (sigmoid for binary, ``K = 1``; softmax otherwise), or ``None`` when not kept.
    """

    labels: np.ndarray
    probabilities: np.ndarray | None


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a Lightning precision string on ``device`` (``None``: full precision)."""
    precision = str(precision)
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    if precision in ("32", "32-true", "64", "64-true"):
        return None
    raise ValueError(f"precision must be 32-true, 16-mixed or bf16-mixed (or auto), got {precision!r}")


GEOMETRY = ("in_channels", "image_dtype", "image_size", "pad_multiple", "size_multiple")
_GEOMETRY_MEANING = {  # for the refusal: what a differing setting does to an image
    "in_channels": "channels read from each image", "image_dtype": "image dtype",
    "image_size": "resizing before the model (None: native size)",
    "pad_multiple": "sides padded to a multiple of (data.pad_multiple; None: no padding)",
    "size_multiple": "the model's input side multiple",
}


def check_ensemble(modules: Sequence[SegmentationModule], preps: Sequence[Preprocessing],
                   names: Sequence[str] | None = None) -> None:
    """``ValueError`` unless the models can be averaged: the same classes and threshold,
    images prepared the same way up to normalisation. ``names`` (checkpoint paths) are
    used in the message."""
    names = list(names) if names is not None else [f"model {i + 1}" for i in range(len(modules))]
    first = modules[0].hparams
    for name, module, prep in zip(names[1:], modules[1:], preps[1:]):
        hp = module.hparams
        for key in ("num_classes", "class_names", "threshold", "ignore_index"):
            if hp.get(key) != first.get(key):
                raise ValueError(f"{names[0]} and {name} cannot be averaged: {key} {first.get(key)!r} vs "
                                 f"{hp.get(key)!r} (an ensemble's models must predict the same classes)")
        for key in GEOMETRY:
            if getattr(prep, key) != getattr(preps[0], key):
                raise ValueError(f"{names[0]} and {name} cannot be averaged: they were trained on images with "
                                 f"{key} {getattr(preps[0], key)!r} vs {getattr(prep, key)!r} ({_GEOMETRY_MEANING[key]}); "
                                 "an ensemble's models see the same windows and may differ in their normalisation only")


class Predictor:
    """Predicts whole images with a trained :class:`SegmentationModule`.

    Args:
        module: the trained module (its hyperparameters give classes and threshold), or
            several (an ensemble: their logits are averaged).
        preprocessing: how training prepared images; one per module for an ensemble, which
            may differ only in their normalisation (each model sees windows normalised as
            its own training normalised them).
        device: ``torch.device`` to run on.
        precision: ``32-true``, ``16-mixed`` (fp16 autocast on CUDA), ``bf16-mixed``.
        tile: window side for images larger than it (rounded up to the model's multiple).
        overlap: pixels shared by neighbouring windows.
        batch_size: windows per forward pass (bounds memory).
        blend: ``gaussian``, ``linear`` or ``constant`` weighting of overlapping windows.
        tta: names from :data:`segkit.inference.TTA_TRANSFORMS`; probabilities are averaged.
        threshold: binary decision threshold (default: the checkpoint's).
    """

    def __init__(
        self,
        module: SegmentationModule | Sequence[SegmentationModule],
        preprocessing: Preprocessing | Sequence[Preprocessing],
        device: torch.device | str = "cpu",
        precision: str = "32-true",
        tile: int = 1024,
        overlap: int = 256,
        batch_size: int = 4,
        blend: str = "gaussian",
        tta: Sequence[str] = (),
        threshold: float | None = None,
    ) -> None:
        unknown = [t for t in tta if t not in TTA_TRANSFORMS]
        if unknown:
            raise ValueError(f"unknown TTA transform(s) {unknown}; available: {', '.join(TTA_TRANSFORMS)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        modules = [module] if isinstance(module, SegmentationModule) else list(module)
        preps = [preprocessing] if isinstance(preprocessing, Preprocessing) else list(preprocessing)
        if not modules or len(preps) != len(modules):
            raise ValueError(f"{len(modules)} model(s) and {len(preps)} preprocessing(s): give one of each per model")
        check_ensemble(modules, preps)
        self.device = torch.device(device)
        self.modules = [m.to(self.device).eval() for m in modules]
        self.preprocessings = preps
        self.module, self.preprocessing = self.modules[0], preps[0]  # classes, threshold, geometry: shared
        self.precision = str(precision)
        self.autocast = autocast_dtype(self.precision, self.device)
        self.tile, self.overlap, self.batch_size, self.blend = tile, overlap, batch_size, blend
        self.tta = list(tta)
        self.num_classes = int(self.module.hparams.num_classes)
        self.threshold = float(self.module.hparams.threshold if threshold is None else threshold)
        window_layout(self.tile, self.tile, tile, overlap, self.preprocessing.size_multiple)  # validates tile/overlap
        self.windows_run = 0  # a count, for tests and benchmarks

    # ----------------------------------------------------------------- model
    def _forward(self, batch: torch.Tensor, member: int = 0) -> torch.Tensor:
        context = (
            torch.autocast(self.device.type, dtype=self.autocast) if self.autocast is not None else contextlib.nullcontext()
        )
        with context:
            return self.modules[member](batch)

    def logits_of_batch(self, batch: torch.Tensor, member: int = 0) -> torch.Tensor:
        """``(B, C, h, w)`` normalised images (sides multiples of the model's) → ``(B, K, h, w)``
        logits of model ``member``, averaged over the TTA views (in the autocast dtype when
        there are none)."""
        with torch.no_grad():
            self.windows_run += batch.shape[0]
            forward = functools.partial(self._forward, member=member)
            return predict_with_tta(forward, batch.to(self.device), self.tta)

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        """``(K, ...)`` logits → float32 probabilities: sigmoid for one output, softmax otherwise."""
        if logits.shape[0] == 1:
            return torch.sigmoid(logits.float())
        return torch.softmax(logits, dim=0, dtype=torch.float32)

    # ----------------------------------------------------------------- image
    def iter_rows(self, image: np.ndarray) -> Iterator[tuple[int, int, torch.Tensor]]:
        """Blended logits of a ``(H, W, C)`` image (training resolution, already resized),
        band by band: ``(y0, y1, (K, y1 - y0, W) float32 tensor on the device)``; a band is
        valid until the next one is asked for (see :func:`segkit.inference.iter_blended_rows`).

        Windows are blended as logits (as MONAI and nnU-Net do); probabilities are taken of
        the finished rows only, once per pixel rather than once per window that covers it.
        """
        prep = self.preprocessing
        maps = []  # each model's normalisation of this image: (offset, scale, clip)
        for member_prep in self.preprocessings:
            offset, scale, clip = member_prep.affine(image)
            maps.append((torch.from_numpy(offset).to(self.device), torch.from_numpy(scale).to(self.device), clip))
        layout = window_layout(image.shape[0], image.shape[1], self.tile, self.overlap, prep.size_multiple)
        pad_h, pad_w = layout.padded_h - image.shape[0], layout.padded_w - image.shape[1]
        if pad_h or pad_w:  # zeros before normalisation, as training's PadIfNeeded
            image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)))

        staging = WindowStaging(self.device)

        def windows(corners: list[tuple[int, int]], wh: int, ww: int) -> torch.Tensor:
            raw_t = staging.upload([image[y : y + wh, x : x + ww] for y, x in corners])
            total = None
            for member, (offset_t, scale_t, clip) in enumerate(maps):
                # in place on a float copy of the batch: 16-bit windows arrive as float32, which
                # .float() would not copy, and every member must start from the raw values
                tensor = raw_t.to(torch.float32, copy=True).sub_(offset_t).mul_(scale_t)
                if clip is not None:
                    tensor.clamp_(-clip, clip)
                logits = self.logits_of_batch(tensor.permute(0, 3, 1, 2), member)  # NHWC memory: channels-last
                if len(maps) == 1:
                    return logits
                total = logits.float() if total is None else total.add_(logits.float())
            return total.div_(len(maps))

        with torch.no_grad():
            yield from iter_blended_rows(layout, windows, self.batch_size, self.blend, self.device)

    def predict(self, image: np.ndarray, keep_probabilities: bool = False, probabilities_out: np.ndarray | None = None) -> Prediction:
        """Labels (and optionally probabilities) of one ``(H, W, C)`` image at its own resolution.

        ``probabilities_out``: a ``(K, H, W)`` array (e.g. a ``numpy.memmap``) to write the
        probabilities into band by band instead of keeping them in memory.
        """
        height, width = image.shape[:2]
        labels = np.empty((height, width), dtype=np.uint8 if label_count(self.num_classes) <= 256 else np.int32)
        keep = keep_probabilities and probabilities_out is None
        kept = np.empty((max(self.num_classes, 1), height, width), np.float32) if keep else None
        resized = self.preprocessing.resize(image)
        if resized.shape[:2] == (height, width):
            bands = self.iter_rows(resized)
        else:  # trained on resized images: predict at that size, scale the logits back
            small = torch.cat([band.clone() for _, _, band in self.iter_rows(resized)], dim=1)
            full = F.interpolate(small[None], size=(height, width), mode="bilinear", align_corners=False)[0]
            bands = iter([(0, height, full)])
        for y0, y1, band in bands:
            labels[y0:y1] = self._labels(band).cpu().numpy()
            if kept is not None or probabilities_out is not None:
                probabilities = self.activate(band).cpu().numpy()
                target = kept if kept is not None else probabilities_out
                target[:, y0:y1] = probabilities
        return Prediction(labels, kept)

    def _labels(self, logits: torch.Tensor) -> torch.Tensor:
        """Class indices of ``(K, h, w)`` logits: sigmoid above the threshold (compared in
        logit space), or the arg-max class (the arg-max of the softmax)."""
        if logits.shape[0] == 1:
            t = self.threshold
            cut = math.inf if t >= 1 else -math.inf if t <= 0 else math.log(t / (1 - t))
            return (logits[0] > cut).to(torch.uint8)
        return logits.argmax(dim=0).to(torch.uint8 if logits.shape[0] <= 256 else torch.int32)


class WindowStaging:
    """Window batches from host memory to the device.

    On CUDA the windows are cut straight into one of two reused page-locked (pinned) buffers
    and uploaded without blocking, so cutting the next batch overlaps the copy and the model;
    a buffer is refilled only once its previous upload has finished (a CUDA event). Elsewhere
    (or ``pinned=False``) a plain stack and copy. uint8 windows travel as uint8, others as
    float32.
    """

    def __init__(self, device: torch.device | str, pinned: bool | None = None) -> None:
        self.device = torch.device(device)
        self.pinned = self.device.type == "cuda" if pinned is None else pinned
        self._buffers: dict[tuple[tuple[int, ...], str], list[list[Any]]] = {}
        self._turn = 0

    def upload(self, windows: Sequence[np.ndarray]) -> torch.Tensor:
        """``(B, h, w, C)`` on the device, from ``B`` arrays of one shape."""
        dtype = np.dtype(np.uint8 if windows[0].dtype == np.uint8 else np.float32)
        if not self.pinned:
            raw = np.stack(windows)
            return torch.from_numpy(raw if raw.dtype == dtype else raw.astype(dtype)).to(self.device)
        shape = (len(windows), *windows[0].shape)
        pair = self._buffers.get((shape, dtype.str))
        if pair is None:
            pin = torch.cuda.is_available()
            torch_dtype = torch.uint8 if dtype == np.uint8 else torch.float32
            pair = self._buffers[(shape, dtype.str)] = [[torch.empty(shape, dtype=torch_dtype, pin_memory=pin), None]
                                                        for _ in range(2)]
        self._turn ^= 1
        slot = pair[self._turn]
        buffer, uploaded = slot
        if uploaded is not None:
            uploaded.synchronize()  # its last upload has left the buffer
        np.stack(windows, out=buffer.numpy())
        moved = buffer.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            slot[1] = torch.cuda.Event()
            slot[1].record()
        else:  # the same memory on the host: hand out a copy, the buffer is refilled
            moved = moved.clone()
        return moved


def resolve_device(device: str) -> torch.device:
    """``auto`` (CUDA when available, else the CPU), ``cpu`` or ``cuda[:N]`` (refused without CUDA)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device}: CUDA is not available on this machine (device=cpu or auto)")
    return torch.device(device)


def build_predictor(loaded: LoadedCheckpoint | Sequence[LoadedCheckpoint], cfg: Any) -> Predictor:
    """A :class:`Predictor` with the inference settings of ``cfg`` (``conf/inference``);
    several checkpoints make an ensemble (their logits averaged)."""
    from segkit.runtime import resolve_precision

    members = [loaded] if isinstance(loaded, LoadedCheckpoint) else list(loaded)
    preps = [Preprocessing.from_checkpoint(m.preprocessing) for m in members]
    check_ensemble([m.module for m in members], preps, [str(m.path) for m in members])
    device = resolve_device(str(cfg.device))
    precision = resolve_precision(cfg.precision, "gpu" if device.type == "cuda" else "cpu")
    return Predictor(
        [m.module for m in members],
        preps,
        device=device,
        precision=precision,
        tile=int(cfg.tile),
        overlap=int(cfg.overlap),
        batch_size=int(cfg.batch_size),
        blend=str(cfg.blend),
        tta=list(cfg.tta or []),
        threshold=cfg.get("threshold"),
    )
