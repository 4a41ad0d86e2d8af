"""Model factory: ``build_model(name, in_channels, num_classes, **params)``.

Every model is wrapped in :class:`SegmentationNet`, which checks that the input's height
and width are multiples of what the architecture needs and says which multiple when not.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import torch
from torch import nn

from segkit.models.segnet import SegNet

__all__ = ["SegmentationNet", "build_model", "MODELS", "count_parameters"]


class SegmentationNet(nn.Module):
    """A segmentation network plus the input size multiple it needs.

    ``forward(x)``: ``(B, C, H, W)`` float → ``(B, num_classes, H, W)`` logits.
    """

    def __init__(self, net: nn.Module, size_multiple: int, name: str) -> None:
        super().__init__()
        self.net = net
        self.size_multiple = size_multiple
        self.name = name

    def _check_size(self, x: torch.Tensor) -> None:
        height, width = x.shape[-2:]
        m = self.size_multiple
        if height % m or width % m:
            raise ValueError(
                f"model {self.name!r} needs input height and width that are multiples of {m}, "
                f"got {height}x{width}: resize or pad to e.g. "
                f"{-(-height // m) * m}x{-(-width // m) * m} (data.image_size)"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_size(x)
        out = self.net(x)
        return out[0] if isinstance(out, tuple) else out  # smp with a classification head

    @property
    def has_classification_head(self) -> bool:
        return getattr(self.net, "classification_head", None) is not None

    def unused_parts(self, task: str) -> list[tuple[str, nn.Module]]:
        """The submodules whose output a ``task``'s loss never reaches: the decoder and the
        segmentation head in a classification stage, the image-level head in a segmentation
        stage (its output is dropped). Frozen for that stage, so DDP waits for no gradient
        they cannot get."""
        if not self.has_classification_head:
            return []
        names = ("decoder", "segmentation_head") if task == "classification" else ("classification_head",)
        return [(name, getattr(self.net, name)) for name in names]

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` → ``(B, 1)`` image-level logits from the encoder's deepest features."""
        if not self.has_classification_head:
            raise ValueError(
                f"model {self.name!r} has no classification head: set model.classification_head=true "
                "(smp encoders only) for a classification stage"
            )
        self._check_size(x)
        return self.net.classification_head(self.net.encoder(x)[-1])


def _load_encoder_weights(encoder: nn.Module, path: str | os.PathLike) -> None:
    path = Path(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    try:
        encoder.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{path}: encoder weights do not fit the encoder: {err}") from err


def _is_path(value: str) -> bool:
    """smp weight names ("imagenet", "ssl", ...) have no separator and no suffix; files do."""
    return os.sep in value or "/" in value or Path(value).suffix != ""


def _smp_unet(encoder_name: str) -> Callable[..., SegmentationNet]:
    def build(
        in_channels: int,
        num_classes: int,
        encoder_name: str = encoder_name,
        encoder_weights: str | None = None,
        encoder_depth: int = 5,
        decoder_channels: list[int] | tuple[int, ...] = (256, 128, 64, 32, 16),
        classification_head: bool = False,
        **params: Any,
    ) -> SegmentationNet:
        """smp ``Unet``; ``encoder_weights`` is None, an smp name (downloads!) or a local file.

        ``classification_head`` adds an image-level head on the encoder (smp ``aux_params``:
        average pooling, dropout 0.2, one logit) for classification pretraining stages.
        """
        local = encoder_weights is not None and _is_path(str(encoder_weights))
        if local and not Path(str(encoder_weights)).is_file():
            raise FileNotFoundError(f"{encoder_weights}: encoder weights file not found")
        net = smp.Unet(
            encoder_name=encoder_name,
            encoder_weights=None if local else encoder_weights,
            encoder_depth=encoder_depth,
            decoder_channels=tuple(decoder_channels),
            in_channels=in_channels,
            classes=num_classes,
            aux_params={"classes": 1, "dropout": 0.2, "pooling": "avg"} if classification_head else None,
            **params,
        )
        if local:
            _load_encoder_weights(net.encoder, str(encoder_weights))
        return SegmentationNet(net, size_multiple=2**encoder_depth, name=f"unet/{encoder_name}")

    return build


def _segnet(in_channels: int, num_classes: int, **params: Any) -> SegmentationNet:
    net = SegNet(in_channels=in_channels, num_classes=num_classes, **params)
    return SegmentationNet(net, size_multiple=net.size_multiple, name="segnet")


MODELS: dict[str, Callable[..., SegmentationNet]] = {
    "unet": _smp_unet("resnet34"),
    "mobilenet_unet": _smp_unet("mobilenet_v2"),
    "segnet": _segnet,
}


def build_model(name: str, in_channels: int, num_classes: int, **params: Any) -> SegmentationNet:
    """Build a registered model; ``params`` are the model's own options (see ``conf/model``)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}")
    return MODELS[name](in_channels=in_channels, num_classes=num_classes, **params)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
