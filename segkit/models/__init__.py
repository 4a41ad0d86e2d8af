"""Model factory: ``build_model(name, in_channels, num_classes, **params)``.

Every model is wrapped in :class:`SegmentationNet`, which checks that the input's height
and width are multiples of what the architecture needs (and at least its smallest side)
and says which when not.

``name=smp`` builds any of segmentation-models-pytorch's 12 architectures (``arch``) on any
of its encoders (``encoder_name``, timm's included as ``tu-<name>``); ``unet`` and
``mobilenet_unet`` are smp's U-Net on ResNet-34 and MobileNetV2.
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

__all__ = ["ARCHITECTURES", "INPUT_OPTIONS", "MODELS", "SegmentationNet", "build_model", "count_parameters", "pretraining_statistics",
           "require_pretrained_weights"]


class SegmentationNet(nn.Module):
    """A segmentation network plus the input size multiple it needs.

    ``forward(x)``: ``(B, C, H, W)`` float → ``(B, num_classes, H, W)`` logits.
    """

    def __init__(self, net: nn.Module, size_multiple: int, name: str, min_size: int = 0) -> None:
        super().__init__()
        self.net = net
        self.size_multiple = size_multiple
        self.min_size = min_size
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
        if min(height, width) < self.min_size:
            raise ValueError(
                f"model {self.name!r} needs inputs of at least {self.min_size}x{self.min_size} (its pooling "
                f"pyramid), got {height}x{width}: data.image_size={self.min_size} or more, or another model.arch"
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
        features = self.net.encoder(x)
        if isinstance(features, tuple) and len(features) == 2 and isinstance(features[0], (list, tuple)):
            features = features[0]  # DPT's ViT encoder: (features, prefix tokens)
        return self.net.classification_head(features[-1])


def _load_encoder_weights(encoder: nn.Module, path: str | os.PathLike) -> None:
    """An encoder state dict from ``path``: a plain one, one under ``state_dict``, or the
    encoder's part of a segkit-train checkpoint (``net.net.encoder.*``)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 — torch's errors here are pages long (unpickler internals)
        first = " ".join(str(err).split())[:160]
        raise ValueError(f"{path}: not a PyTorch weights file torch.load can read ({type(err).__name__}: {first}); "
                         "model.encoder_weights takes a file saved with torch.save(encoder.state_dict(), ...), "
                         "a segkit-train checkpoint, or a weight name (imagenet)") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if isinstance(state, dict):
        prefix = "net.net.encoder."  # a segkit checkpoint: its encoder
        if any(str(k).startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if str(k).startswith(prefix)}
    if not isinstance(state, dict):
        raise ValueError(f"{path}: holds a {type(state).__name__}, not a state dict of encoder weights")
    try:
        encoder.load_state_dict(state)
    except RuntimeError:
        expected = set(encoder.state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        shapes = [k for k in sorted(expected & set(state)) if tuple(state[k].shape) != tuple(encoder.state_dict()[k].shape)]
        parts = [f"{len(keys)} {what} (e.g. {', '.join(keys[:3])})" for what, keys in
                 (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes)) if keys]
        raise ValueError(f"{path}: encoder weights do not fit the encoder: {'; '.join(parts)} of "
                         f"{len(expected)} keys. Are they for another encoder than model.encoder_name?") from None


#: seconds to wait for the weights' host before saying it cannot be reached
HUB_PROBE_TIMEOUT_S = 3.0


def _hub_weights(encoder_name: str, weights: str) -> tuple[str, str | None, str]:
    """(repo id, revision, file) of a named pretrained encoder on the Hugging Face hub, where
    smp 0.6 (its own encoders) and timm (``tu-`` ones) fetch them from."""
    if encoder_name.startswith("tu-"):
        import timm

        cfg = timm.models.get_pretrained_cfg(encoder_name[3:])
        hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        if not hub_id:
            raise ValueError(f"model.encoder_name={encoder_name}: timm knows no pretrained weights for it on the Hugging "
                             "Face hub; model.encoder_weights=null trains from scratch, or give a local file")
        return hub_id, None, "model.safetensors"
    from segmentation_models_pytorch.encoders import encoders

    settings = encoders.get(encoder_name, {}).get("pretrained_settings", {})
    if weights not in settings:
        raise ValueError(f"model.encoder_weights={weights!r}: encoder {encoder_name} has no such pretrained weights; "
                         f"it has {', '.join(settings) or 'none'} (or give a local .pth file)")
    return settings[weights]["repo_id"], settings[weights].get("revision"), "model.safetensors"


def require_pretrained_weights(encoder_name: str, weights: str) -> None:
    """Before smp or timm reach for the network: named pretrained weights must be in the
    Hugging Face cache, or its host reachable within a few seconds. Otherwise raise at once,
    naming the weights, the cache folder and the way to give a local file (never a hang on
    a machine without the internet)."""
    from urllib.parse import urlparse

    from huggingface_hub import constants, try_to_load_from_cache

    from segkit.runtime import connection_problem

    repo_id, revision, filename = _hub_weights(encoder_name, weights)
    cached = try_to_load_from_cache(repo_id, filename, revision=revision)
    if isinstance(cached, str):
        return
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    if constants.HF_HUB_OFFLINE:
        reason = "HF_HUB_OFFLINE is set"
    else:
        problem = connection_problem(host, 443, HUB_PROBE_TIMEOUT_S)
        if problem is None:
            return  # reachable: smp / timm download them into the cache
        reason = f"{host} cannot be reached ({problem})"
    raise ValueError(
        f"model.encoder_weights={weights}: the pretrained weights of encoder {encoder_name} ({repo_id} on the Hugging "
        f"Face hub) are not in the cache ({constants.HF_HUB_CACHE}) and {reason}. Run once where the internet is "
        "reachable (the weights are cached for later runs), copy such a cache here (HF_HUB_CACHE), or give a local "
        "file of the encoder's weights: model.encoder_weights=/path/to/encoder.pth")


#: model options about the inputs rather than the network, with their defaults:
#: ``normalize_from_weights``: named pretrained weights bring their pretraining mean/std
INPUT_OPTIONS = {"normalize_from_weights": True}
#: the encoder each registered smp model uses when ``encoder_name`` is not given
DEFAULT_ENCODER = {"unet": "resnet34", "mobilenet_unet": "mobilenet_v2", "smp": "resnet34"}


def _per_channel(values: list[float], channels: int) -> list[float]:
    """RGB statistics for ``channels`` input channels the way smp adapts the first convolution
    of a pretrained encoder: one channel gets the RGB weights summed (so the RGB mean of the
    statistics), more than three repeat them in turn (so the statistics repeat too)."""
    if channels == len(values):
        return values
    if channels == 1:
        return [sum(values) / len(values)]
    return [values[i % len(values)] for i in range(channels)]


def pretraining_statistics(model: dict[str, Any], channels: int) -> dict[str, Any] | None:
    """The input ``mean``/``std`` (fractions of the pixel range, one per image channel) that
    the model's named pretrained encoder weights were trained with, and where they were
    read; ``None`` when the model has no named weights (from scratch, a local file, SegNet).

    timm (``tu-`` encoders) keeps them in its pretrained config; smp's own encoders in the
    ``config.json`` that smp downloads with the weights into the Hugging Face cache (read from
    the cache; fetched only where the weights would be, see :func:`require_pretrained_weights`)."""
    weights = model.get("encoder_weights")
    encoder = model.get("encoder_name") or DEFAULT_ENCODER.get(str(model.get("name")))
    if weights is None or encoder is None or _is_path(str(weights)):
        return None
    if encoder.startswith("tu-"):
        import timm

        cfg = timm.models.get_pretrained_cfg(encoder[3:])
        if cfg is None or not cfg.mean or not cfg.std:
            raise ValueError(f"model.encoder_name={encoder}: timm keeps no pretraining mean/std for it; "
                             "model.normalize_from_weights=false normalises with data.normalize instead")
        mean, std, source = list(cfg.mean), list(cfg.std), f"timm's pretrained config of {encoder[3:]}"
        top = 1.0
    else:
        import json

        from huggingface_hub import hf_hub_download, try_to_load_from_cache

        repo_id, revision, _ = _hub_weights(encoder, str(weights))
        path = try_to_load_from_cache(repo_id, "config.json", revision=revision)
        if not isinstance(path, str):
            require_pretrained_weights(encoder, str(weights))  # offline: the same quick, clear refusal
            path = hf_hub_download(repo_id, "config.json", revision=revision)
        try:
            settings = json.loads(Path(path).read_text())
            mean, std = [float(v) for v in settings["mean"]], [float(v) for v in settings["std"]]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: the config of {repo_id} gives no readable mean/std ({type(err).__name__}: {err}); "
                             "model.normalize_from_weights=false normalises with data.normalize instead") from None
        top = float(list(settings.get("input_range", [0, 1]))[-1]) or 1.0
        source = f"{repo_id} (config.json)"
    return {"mean": _per_channel([m / top for m in mean], channels),
            "std": _per_channel([s / top for s in std], channels), "source": source}


def _is_path(value: str) -> bool:
    """smp weight names ("imagenet", "ssl", ...) have no separator and no suffix; files do."""
    return os.sep in value or "/" in value or Path(value).suffix != ""


def _smp_net(architecture: Callable[..., nn.Module], in_channels: int, num_classes: int, encoder_name: str,
             encoder_weights: str | None, classification_head: bool, **params: Any) -> nn.Module:
    """An smp network; ``encoder_weights`` is None, a weight name (checked against the cache
    and the network first, see :func:`require_pretrained_weights`) or a local file.
    ``classification_head`` adds an image-level head on the encoder (smp ``aux_params``:
    average pooling, dropout 0.2, one logit) for classification pretraining stages."""
    local = encoder_weights is not None and _is_path(str(encoder_weights))
    if local and not Path(str(encoder_weights)).is_file():
        raise FileNotFoundError(f"{encoder_weights}: encoder weights file not found")
    if encoder_weights is not None and not local:
        require_pretrained_weights(encoder_name, str(encoder_weights))
        if encoder_name.startswith("tu-"):
            encoder_weights = True  # timm: the pretrained variant is the encoder name's tag
    try:
        net = architecture(
            encoder_name=encoder_name,
            encoder_weights=None if local else encoder_weights,
            in_channels=in_channels,
            classes=num_classes,
            aux_params={"classes": 1, "dropout": 0.2, "pooling": "avg"} if classification_head else None,
            **params,
        )
    except KeyError as err:  # smp: "Wrong encoder name `x`, supported encoders: [...]" (all ~80 of them)
        import difflib

        from segmentation_models_pytorch.encoders import get_encoder_names

        names = get_encoder_names()
        if encoder_name not in names and not encoder_name.startswith("tu-"):
            close = difflib.get_close_matches(encoder_name, names, n=3, cutoff=0.6)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            raise ValueError(f"model.encoder_name={encoder_name!r} is no smp encoder: {hint}"
                             "(smp.encoders.get_encoder_names() lists smp's; timm's go as tu-<name>)") from None
        raise ValueError(f"model.encoder_name={encoder_name!r} is not an encoder {architecture.__name__} can use: "
                         f"{' '.join(str(err).split())[:300]}") from None
    if local:
        _load_encoder_weights(net.encoder, str(encoder_weights))
    return net


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
        """smp ``Unet`` (see :func:`_smp_net` for the weights and the classification head)."""
        net = _smp_net(smp.Unet, in_channels, num_classes, encoder_name, encoder_weights, classification_head,
                       encoder_depth=encoder_depth, decoder_channels=tuple(decoder_channels), **params)
        return SegmentationNet(net, size_multiple=2**encoder_depth, name=f"unet/{encoder_name}")

    return build


#: smp's architectures, by the name ``model.arch`` takes
ARCHITECTURES = ("Unet", "UnetPlusPlus", "FPN", "PSPNet", "DeepLabV3", "DeepLabV3Plus", "Linknet", "MAnet", "PAN",
                 "UPerNet", "Segformer", "DPT")
#: the smallest input side an architecture takes (PAN's feature pyramid pools its 1/32 map further)
MIN_SIDE = {"PAN": 128}


def _smp_any(
    in_channels: int,
    num_classes: int,
    arch: str = "Unet",
    encoder_name: str = "resnet34",
    encoder_weights: str | None = None,
    encoder_depth: int | None = None,
    classification_head: bool = False,
    **params: Any,
) -> SegmentationNet:
    """Any smp architecture on any smp encoder. ``encoder_depth: None`` keeps the architecture's
    own default (5; PSPNet 3; DPT 4); ``params`` are the architecture's other arguments
    (``decoder_channels``, ``encoder_output_stride``, ...). The size multiple is the
    encoder's output stride (what smp checks inputs against); DPT's ViT takes an even number of
    patches (its fusion upsamples the patch grid by 2 and adds it to the next: 15 patches give
    a 16 against 15 mismatch), so twice the patch size."""
    canonical = {a.lower(): a for a in ARCHITECTURES}.get(str(arch).lower())
    if canonical is None:
        import difflib

        lower = {a.lower(): a for a in ARCHITECTURES}
        close = difflib.get_close_matches(str(arch).lower(), list(lower), n=1, cutoff=0.6)
        hint = f"did you mean {lower[close[0]]}? " if close else ""
        raise ValueError(f"model.arch={arch!r} is not an smp architecture; {hint}choose one of {', '.join(ARCHITECTURES)}")
    if canonical == "DPT":
        params.setdefault("dynamic_img_size", True)  # timm ViTs are otherwise fixed to their pretraining size
    if encoder_depth is not None:
        params["encoder_depth"] = encoder_depth
    net = _smp_net(getattr(smp, canonical), in_channels, num_classes, encoder_name, encoder_weights,
                   classification_head, **params)
    multiple = int(getattr(net.encoder, "output_stride", 2 ** (encoder_depth or 5)))
    if canonical == "DPT":
        multiple *= 2
    return SegmentationNet(net, size_multiple=multiple, name=f"{canonical}/{encoder_name}",
                           min_size=MIN_SIDE.get(canonical, 0))


def _segnet(in_channels: int, num_classes: int, **params: Any) -> SegmentationNet:
    net = SegNet(in_channels=in_channels, num_classes=num_classes, **params)
    return SegmentationNet(net, size_multiple=net.size_multiple, name="segnet")


MODELS: dict[str, Callable[..., SegmentationNet]] = {
    "unet": _smp_unet("resnet34"),
    "mobilenet_unet": _smp_unet("mobilenet_v2"),
    "segnet": _segnet,
    "smp": _smp_any,
}


def build_model(name: str, in_channels: int, num_classes: int, **params: Any) -> SegmentationNet:
    """Build a registered model; ``params`` are the model's own options (see ``conf/model``)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}")
    for key in INPUT_OPTIONS:  # how inputs are normalised (segkit.stage.pretrained_normalize), not the network
        params.pop(key, None)
    return MODELS[name](in_channels=in_channels, num_classes=num_classes, **params)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
