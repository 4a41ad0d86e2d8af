"""``segkit-plan``: a training recipe planned from the data, the 2-D counterpart of nnU-Net's planning.

:func:`fingerprint` reads what the recipe depends on: the images' sizes, dtype and channel
statistics; the classes' pixel frequencies and which images hold them (``segkit-prepare``'s
class statistics); the sizes of the objects (connected components of each class); and the
share of images without any foreground. :func:`plan` turns that into choices by fixed rules,
each with the reason it was taken, and :func:`render` writes them as an ``experiment``
config with a comment on every choice. No rule looks at a validation score: the plan is
fixed before anything is trained.

The rules, in short (the reasons in the written file say which applied and why):

- **patch**: whole images when every image fits the device's side (256 px on a CPU, 512 on a
  GPU) and they all have one size; otherwise crops of that side (no larger than the smallest
  image, at least 1.5x the 90th-percentile object extent), taken by ``ForegroundCrop``.
- **batch**: about 0.5 M pixels per batch on a CPU, 3 M on a GPU, between 2 and 32 images.
- **normalisation**: z-score from the training split's statistics for 16-bit (SAR) and float
  images; x / 255 for 8-bit images.
- **loss**: ``dice_ce`` (nnU-Net's), or Focal Tversky when the foreground is under 1% of the
  pixels. No class weights: the Dice term weighs every class alike.
- **sampling**: repeat-factor sampling when a foreground class is in fewer than 30% of the
  training images; crops centred on a class pixel a third of the time (half when the
  foreground is under 1%), the class drawn by inverse frequency when the foreground classes'
  frequencies differ more than tenfold.
- **augmentation**: flips, 90° turns and free rotations for imagery whose orientation
  carries no meaning (overhead, microscopy); a horizontal flip only otherwise.
- **model**: U-Net, ResNet-18 encoder on a CPU, ResNet-34 on a GPU, no pretrained weights.
- **schedule**: AdamW 1e-3, polynomial decay, an EMA of the weights over the last third of
  the steps; epochs from the budget and training steps timed on this machine.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Choice", "Fingerprint", "Plan", "fingerprint", "parse_budget", "plan", "render", "run_plan", "step_timer"]

SIDE = {"cpu": 256, "gpu": 512}  # the patch side a device trains comfortably
BATCH_PIXELS = {"cpu": 2**19, "gpu": 3 * 2**20}
ENCODER = {"cpu": "resnet18", "gpu": "resnet34"}
RARE_PRESENCE = 0.3  # a class in fewer than this share of the images is rare (repeat-factor threshold)
SPARSE_FOREGROUND = 0.01  # foreground below this share of the pixels: Focal Tversky, more foreground crops
IMAGERIES = ("overhead", "microscopy", "ground")
#: data settings of a run, not of the data: not written into a plan (where the data is, which fold)
RUN_SETTINGS = ("root", "cache_dir", "folds", "fold", "num_workers", "pin_memory")


#: the training time a plan is sized for when no budget is given
DEFAULT_BUDGET = "15min"


def parse_budget(budget: str | int | float) -> float:
    """Seconds of ``15min``, ``2h``, ``90s``, ``1h30min``, ``HH:MM:SS`` / ``DD:HH:MM:SS`` (as
    ``trainer.max_time``), or a number of seconds (60 or more: a bare ``15`` is refused, as it
    surely meant minutes)."""
    text = str(budget).strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+(\.\d+)?", text):
        seconds = float(text)
        if 0 < seconds < 60:
            raise ValueError(f"budget={budget} would be {seconds:g} seconds: write the unit (budget={text}min, "
                             f"budget={text}s)")
    elif re.fullmatch(r"\d+(:\d+){2,3}", text):
        fields = [float(v) for v in text.split(":")]
        seconds = sum(v * scale for v, scale in zip(reversed(fields), (1, 60, 3600, 86400)))
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)(h|min|m|s)?", text)
        if not parts or "".join(n + (u or "") for n, u in parts) != text or not parts[-1][1]:
            raise ValueError(f"budget={budget!r}: write a time such as 15min, 2h, 1h30min, 90s or 00:15:00")
        scale = {"h": 3600.0, "min": 60.0, "m": 60.0, "s": 1.0}
        seconds = sum(float(n) * scale[u or "s"] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"budget={budget!r}: the training time must be positive")
    return seconds


def _duration(seconds: float) -> str:
    """``15 min``, ``2 h``, ``1 h 30 min``, ``45 s``."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h" + (f" {minutes % 60} min" if minutes % 60 else "")


@dataclass
class Fingerprint:
    """What the plan depends on, measured on the training split (a sample of its images when larger)."""

    dataset: str
    train_images: int
    val_images: int
    sampled: int
    heights: list[int]
    widths: list[int]
    channels: int
    dtype: str
    channel_mean: list[float]
    channel_std: list[float]
    class_names: list[str]
    pixel_frequencies: list[float]
    presence: list[float]  # share of training images holding each class
    empty_share: float  # training images without any foreground
    object_sizes: dict[str, dict[str, float]] = field(default_factory=dict)  # per class: count, median, p10, p90 (px)
    object_extent_p90: float = 0.0  # 90th percentile of the objects' bounding-box long side
    ignore_index: int | None = None
    repeat_draws: float = 0.0  # images per epoch under repeat-factor sampling
    imagery: str = "ground"
    group_name: str = "image"
    equal_channels: bool = False  # every image read has identical channels (grayscale stored as RGB)

    @property
    def foreground_share(self) -> float:
        return float(sum(self.pixel_frequencies[1:]))

    @property
    def median_hw(self) -> tuple[int, int]:
        return int(np.median(self.heights)), int(np.median(self.widths))


def fingerprint(datamodule: Any, max_images: int = 500, seed: int = 42) -> Fingerprint:
    """Measure ``datamodule``'s training split (after :meth:`prepare` with class statistics)."""
    import cv2

    from segkit.data.sampling import repeat_factors

    stats, _ = datamodule.prepare_class_stats()
    items = datamodule.items()
    train_idx, val_idx = datamodule.split(items)
    train = datamodule.raw_dataset([items[i] for i in train_idx])
    order = np.random.default_rng(seed).permutation(len(train))[:max_images] if len(train) > max_images else range(len(train))
    k = len(stats["pixel_counts"])
    heights, widths = [], []
    total = total_sq = None
    count = 0
    dtype, channels = None, None
    equal = True
    sizes: list[list[int]] = [[] for _ in range(k)]
    extents: list[int] = []
    for index in order:
        image = train.load_image(int(index))
        image = image[:, :, None] if image.ndim == 2 else image
        heights.append(image.shape[0])
        widths.append(image.shape[1])
        dtype, channels = str(image.dtype), image.shape[2]
        equal = equal and channels > 1 and all(np.array_equal(image[:, :, 0], image[:, :, i]) for i in range(1, channels))
        pixels = image.reshape(-1, channels).astype(np.float64)
        total = pixels.sum(0) if total is None else total + pixels.sum(0)
        total_sq = (pixels**2).sum(0) if total_sq is None else total_sq + (pixels**2).sum(0)
        count += len(pixels)
        mask = train.load_mask(int(index))
        for c in range(1, k):
            binary = mask == c
            if not binary.any():
                continue
            n, _, comp, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=8)
            sizes[c].extend(comp[1:, cv2.CC_STAT_AREA].tolist())
            extents.extend(np.maximum(comp[1:, cv2.CC_STAT_WIDTH], comp[1:, cv2.CC_STAT_HEIGHT]).tolist())
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(total_sq / max(count, 1) - mean**2, 0.0))
    presence_lists = [stats["presence"][name] for name in train.names]
    presence = [sum(c in p for p in presence_lists) / max(len(presence_lists), 1) for c in range(k)]
    empty = sum(not any(c > 0 for c in p) for p in presence_lists) / max(len(presence_lists), 1)
    objects = {}
    for c in range(1, k):
        if sizes[c]:
            values = np.asarray(sizes[c])
            objects[datamodule.class_names[c]] = {"count": int(len(values)), "median": float(np.median(values)),
                                                  "p10": float(np.percentile(values, 10)),
                                                  "p90": float(np.percentile(values, 90))}
    draws = float(repeat_factors(presence_lists, RARE_PRESENCE).sum()) if presence_lists else 0.0
    return Fingerprint(
        dataset=datamodule.kind, train_images=len(train_idx), val_images=len(val_idx), sampled=len(heights),
        heights=heights, widths=widths, channels=int(channels or datamodule.in_channels), dtype=str(dtype),
        channel_mean=[float(v) for v in mean], channel_std=[float(v) for v in std],
        class_names=list(datamodule.class_names), pixel_frequencies=[float(f) for f in stats["frequencies"]],
        presence=presence, empty_share=float(empty), object_sizes=objects,
        object_extent_p90=float(np.percentile(extents, 90)) if extents else 0.0,
        ignore_index=datamodule.ignore_index, repeat_draws=draws,
        imagery=getattr(datamodule, "imagery", "ground"), group_name=getattr(datamodule, "group_name", "image"),
        equal_channels=bool(equal and count),
    )


@dataclass
class Choice:
    """One planned setting: where it goes in the config, its value, and why."""

    key: str  # "defaults:/model" for a config group, else a dotted config key
    value: Any
    why: str


@dataclass
class Plan:
    name: str
    device: str
    budget_s: float
    choices: list[Choice]
    fingerprint: Fingerprint
    seconds_per_step: float | None = None
    notes: list[str] = field(default_factory=list)

    def value(self, key: str) -> Any:
        for choice in self.choices:
            if choice.key == key:
                return choice.value
        raise KeyError(key)


def _round_down(value: float, multiple: int = 32) -> int:
    return int(value // multiple * multiple)


def plan(fp: Fingerprint, device: str, budget_s: float, name: str, imagery: str | None = None,
         seconds_per_step: Any = None, epochs: int | None = None, num_classes: int | None = None,
         time_limit: bool = True) -> Plan:
    """The choices for ``fp`` on ``device`` (``cpu``/``gpu``) within ``budget_s`` seconds.

    ``seconds_per_step``: ``None``, or a function ``(batch, patch_h, patch_w) -> seconds`` that
    times a training step on this machine; ``epochs`` fixes the epochs instead. ``time_limit``:
    the budget also stops training (``trainer.max_time``).
    """
    if device not in SIDE:
        raise ValueError(f"device={device}: choose cpu or gpu")
    imagery = imagery or fp.imagery
    if imagery not in IMAGERIES:
        raise ValueError(f"imagery={imagery}: choose {', '.join(IMAGERIES)} (or auto: the dataset's)")
    fp = dataclasses.replace(fp, imagery=imagery)
    c: list[Choice] = []
    notes: list[str] = []
    if fp.channels == 3 and fp.equal_channels:
        notes.append("every image read has three equal channels (grayscale saved as RGB): data.in_channels=1 "
                     "would train on one channel, 3x less input for the same information")
    side = SIDE[device]
    same_size = len(set(fp.heights)) == 1 and len(set(fp.widths)) == 1
    min_side = min(min(fp.heights), min(fp.widths))
    med_h, med_w = fp.median_hw
    fg = fp.foreground_share
    sparse = fg < SPARSE_FOREGROUND

    # ---- patch
    if same_size and med_h <= side and med_w <= side:
        crop = None
        patch_h, patch_w = -(-med_h // 32) * 32, -(-med_w // 32) * 32
        c.append(Choice("data.image_size", None, f"every image is {med_h}x{med_w}, within the {side} px a {device.upper()} "
                        "trains comfortably: whole images, native resolution"))
        c.append(Choice("data.pad_multiple", 32, "padded to a multiple of 32, the U-Net's size multiple"))
    else:
        want = max(64, min(side, _round_down(min_side)))
        if fp.object_extent_p90 * 1.5 > want and want < _round_down(min_side):
            want = min(_round_down(min_side), _round_down(fp.object_extent_p90 * 1.5) + 32)
        if want < 32:
            raise ValueError(f"the smallest training image is {min_side} px: segkit-plan needs images of 32 px or more")
        crop = want
        patch_h = patch_w = crop
        why = f"images are {med_h}x{med_w} (median; {min_side} px the smallest side)"
        c.append(Choice("data.image_size", None, f"{why}: native resolution, trained on {crop} px crops "
                        f"(a {device.upper()} trains {side} px comfortably; 90% of the objects are within "
                        f"{fp.object_extent_p90:.0f} px) and validated on whole images"))
        c.append(Choice("data.pad_multiple", 32, "padded to a multiple of 32, the U-Net's size multiple"))

    # ---- batch
    batch = int(np.clip(round(BATCH_PIXELS[device] / (patch_h * patch_w)), 2, 32))
    batch = min(batch, max(2, fp.train_images))
    c.append(Choice("data.batch_size", batch, f"about {BATCH_PIXELS[device] / 2**20:.1f} M pixels per batch on a "
                    f"{device.upper()}: {batch} patches of {patch_h}x{patch_w}"))

    # ---- normalisation
    if fp.dtype in ("uint16", "float32", "float64", "int16", "int32"):
        peak = 65535.0 if fp.dtype == "uint16" else 1.0
        stats = ", ".join(f"{m:.1f} ± {s:.1f}" for m, s in zip(fp.channel_mean, fp.channel_std))
        c.append(Choice("data.normalize", {"mean": "dataset", "std": "dataset", "max_pixel_value": peak},
                        f"{fp.dtype} images (channel mean ± std {stats}): z-score with the training split's own "
                        "mean and std (segkit-train computes them; a fixed x / 65535 would squeeze them near 0)"))
    else:
        c.append(Choice("data.normalize", {"mean": [0.0] * fp.channels, "std": [1.0] * fp.channels,
                                           "max_pixel_value": 255.0},
                        "8-bit images: x / 255 (the encoder is trained from scratch, so no ImageNet statistics)"))

    # ---- loss
    if sparse:
        c.append(Choice("defaults:/loss", "focal_tversky", f"the foreground is {fg:.2%} of the pixels (under 1%): "
                        "Focal Tversky, which weighs missed foreground above false alarms; no class weights (its "
                        "per-class mean already weighs every class alike)"))
    else:
        c.append(Choice("defaults:/loss", "dice_ce", f"the foreground is {fg:.2%} of the pixels: nnU-Net's Dice + CE "
                        "(batch Dice over the foreground classes); no class weights (the Dice term already weighs "
                        "every class alike)"))

    # ---- sampling
    fg_presence = [(name, p) for name, p in zip(fp.class_names[1:], fp.presence[1:]) if p > 0]
    rarest = min(fg_presence, key=lambda t: t[1]) if fg_presence else None
    sampling = "repeat_factor" if rarest is not None and rarest[1] < RARE_PRESENCE else "uniform"
    if sampling == "repeat_factor":
        c.append(Choice("data.sampling", sampling, f"{rarest[0]} is in {rarest[1]:.0%} of the training images "
                        f"(under {RARE_PRESENCE:.0%}): images holding rare classes are drawn more often "
                        f"(~{fp.repeat_draws:.0f} draws per epoch from {fp.train_images} images)"))
    else:
        c.append(Choice("data.sampling", "uniform", "every foreground class is in at least "
                        f"{RARE_PRESENCE:.0%} of the training images: each image once per epoch"))

    # ---- augmentation
    augment: dict[str, Any] = {}
    if crop is not None:
        fg_freqs = [f for f in fp.pixel_frequencies[1:] if f > 0]
        spread = max(fg_freqs) / min(fg_freqs) if len(fg_freqs) > 1 else 1.0
        draw = "inverse_frequency" if spread > 10 else "uniform"
        augment["crop"] = {"type": "ForegroundCrop", "height": crop, "width": crop,
                           "foreground_share": 0.5 if sparse else round(1 / 3, 4), "class_draw": draw}
    if imagery in ("overhead", "microscopy"):
        augment.update({
            "hflip": {"type": "HorizontalFlip", "p": 0.5}, "vflip": {"type": "VerticalFlip", "p": 0.5},
            "rotate90": {"type": "RandomRotate90", "p": 0.5},
            "rotate": {"type": "Rotate", "limit": 180, "p": 0.2, "border_mode": 4},
        })
        aug_why = (f"{imagery} imagery, whose orientation carries no meaning: flips, 90° turns and free rotations "
                   "(p 0.2, nnU-Net's; image and mask reflected at the borders, so no pixel gets an invented label)")
    else:
        augment["hflip"] = {"type": "HorizontalFlip", "p": 0.5}
        aug_why = ("orientation may carry meaning (ground-level photographs; for a folder of images of unknown kind "
                   "say imagery=overhead or microscopy to segkit-plan when it does not): a horizontal flip only")
    if fp.dtype == "uint8":
        augment["contrast"] = {"type": "RandomBrightnessContrast", "brightness_limit": 0.1, "contrast_limit": 0.1,
                               "p": 0.3}
        aug_why += "; mild brightness/contrast changes"
    if crop is not None:
        by_frequency = augment["crop"]["class_draw"] != "uniform"
        aug_why += (f"; crops centred on a pixel of a class {'half' if sparse else 'a third'} of the time (class drawn "
                    + ("by inverse frequency, the foreground classes differing more than tenfold in frequency)"
                       if by_frequency else "uniformly among those present)"))
    c.append(Choice("data.augment", augment, aug_why))

    # ---- model
    c.append(Choice("defaults:/model", "unet", "U-Net: the nnU-Net architecture family"))
    c.append(Choice("model.encoder_name", ENCODER[device], f"{ENCODER[device]} encoder: "
                    + ("light enough for a CPU budget" if device == "cpu" else "the usual GPU choice")))
    c.append(Choice("model.encoder_weights", None, "trained from scratch: nothing to download, any channel count"))

    # ---- schedule
    draws = fp.repeat_draws if sampling == "repeat_factor" else fp.train_images
    steps_per_epoch = max(1, math.ceil(draws / batch))
    if epochs is None:
        if seconds_per_step is None:
            raise ValueError("segkit-plan needs either epochs=N or a machine to time training steps on")
        step_s = float(seconds_per_step(batch, patch_h, patch_w))
        val_s = fp.val_images * step_s / batch / 3 * (med_h * med_w) / (patch_h * patch_w)
        epoch_s = steps_per_epoch * step_s + val_s
        epochs = int(np.clip(math.floor(0.9 * budget_s / epoch_s), 1, 1000))
        epoch_why = (f"{epochs} epoch{'s' if epochs != 1 else ''}: a training step took {step_s:.2f} s here, "
                     f"{steps_per_epoch} steps and ~{val_s:.0f} s of validation an epoch, 90% of the "
                     f"{_duration(budget_s)} budget" + (" (the budget does not hold one epoch: raise it)"
                                                      if 0.9 * budget_s < epoch_s else ""))
    else:
        step_s = None
        epoch_why = f"{epochs} epochs, as asked (steps not timed)"
    total_steps = epochs * steps_per_epoch
    c.append(Choice("trainer.max_epochs", int(epochs), epoch_why))
    if time_limit:
        c.append(Choice("trainer.max_time", _clock(budget_s), "the budget itself as a safety stop (the LR schedule "
                        "follows whichever ends first)"))
    else:
        c.append(Choice("trainer.max_time", None, "no time limit: epochs were asked for without a budget"))
    c.append(Choice("defaults:/scheduler", "poly", "polynomial LR decay (power 0.9), nnU-Net's"))
    c.append(Choice("defaults:/callbacks", "ema", "an exponential moving average of the weights for validation "
                    "and the saved model"))
    decay = float(np.clip(1 - 3 / max(total_steps, 1), 0.9, 0.999))
    bound = " (the bound: 0.9 at the least, 0.999 at the most)" if decay in (0.9, 0.999) else ""
    c.append(Choice("callbacks.ema.decay", round(decay, 4), f"averages over ~{1 / (1 - decay):.0f} steps, about the "
                    f"last third of the {total_steps} steps{bound}"))
    c.append(Choice("optimizer.lr", 1.0e-3, "AdamW at 1e-3, segkit's default"))
    if fp.train_images < 20:
        notes.append(f"only {fp.train_images} training images: expect a noisy validation score; consider "
                     "cross-validation (data.folds=5)")
    return Plan(name, device, budget_s, c, fp, step_s, notes)


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"00:{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _yaml(value: Any) -> str:
    """A value in YAML flow style (JSON is YAML; ``None`` is ``null``)."""
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if isinstance(value, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]*", value) and value not in ("null", "true", "false"):
        return value
    return json.dumps(value)


def render(p: Plan, data_settings: Mapping[str, Any] | None = None, command: str = "") -> str:
    """The plan as an ``experiment`` config: a header with the fingerprint, a comment per choice."""
    fp = p.fingerprint
    med_h, med_w = fp.median_hw
    lines = [
        "# @package _global_",
        f"# Planned by segkit-plan from the data ({time.strftime('%Y-%m-%d')}); every choice below says why.",
        f"#   {command}" if command else "#",
        f"# Fingerprint of the training split: {fp.train_images} images ({fp.sampled} read), {fp.val_images} held out "
        f"by {fp.group_name}; {med_h}x{med_w} median, {fp.channels} x {fp.dtype};",
        f"#   foreground {fp.foreground_share:.2%} of the pixels, {fp.empty_share:.0%} of the images without any;",
        "#   class: pixel share / images holding it / objects (median px): "
        + "; ".join(f"{name} {freq:.2%}/{pres:.0%}" + (f"/{fp.object_sizes[name]['median']:.0f}" if name in fp.object_sizes else "")
                    for name, freq, pres in zip(fp.class_names, fp.pixel_frequencies, fp.presence)),
        *[f"# NOTE: {note}" for note in p.notes],
        "defaults:",
    ]
    groups = [ch for ch in p.choices if ch.key.startswith("defaults:")]
    lines.append(f"  - override /dataset: {fp.dataset}")
    for ch in groups:
        lines.append(f"  - override {ch.key.removeprefix('defaults:')}: {ch.value}   # {ch.why}")
    tree: dict[str, list[tuple[str, Any, str]]] = {}
    if data_settings:
        for key, value in data_settings.items():
            tree.setdefault("data", []).append((key, value, "your data's setting, as given to segkit-plan"))
    for ch in p.choices:
        if ch.key.startswith("defaults:"):
            continue
        top, _, rest = ch.key.partition(".")
        tree.setdefault(top, []).append((rest, ch.value, ch.why))
    for top, entries in tree.items():
        lines += ["", f"{top}:"]
        for key, value, why in entries:
            parts = key.split(".")
            indent = "  "
            for depth, part in enumerate(parts[:-1]):  # nested keys (callbacks.ema.decay)
                lines.append(f"{indent * (depth + 1)}{part}:")
            pad = indent * len(parts)
            if isinstance(value, Mapping) and key == "augment":
                lines.append(f"{pad}# {why}")
                lines.append(f"{pad}{parts[-1]}:")
                for name, spec in value.items():
                    lines.append(f"{pad}  {name}: {_yaml(spec)}")
            else:
                lines.append(f"{pad}{parts[-1]}: {_yaml(value)}   # {why}")
    lines += ["", "monitor:", "  metric: val/dice   # the best checkpoint: the mean Dice of the foreground classes",
              "  mode: max   # the higher the better", ""]
    return "\n".join(lines)


def fingerprint_json(fp: Fingerprint) -> dict[str, Any]:
    out = asdict(fp)
    out.pop("heights")
    out.pop("widths")
    out["median_hw"] = list(fp.median_hw)
    out["min_side"] = int(min(min(fp.heights), min(fp.widths)))
    out["foreground_share"] = fp.foreground_share
    return out


def step_timer(device: str, in_channels: int, num_classes: int, loss: str = "dice_ce", steps: int = 3) -> Any:
    """A function ``(batch, height, width) -> seconds`` per training step (forward, loss,
    backward, AdamW step) of the planned U-Net, timed here in the precision training would use
    (one warm-up step, then the mean of ``steps``)."""
    import torch

    from segkit.module import SegmentationModule
    from segkit.predictor import autocast_dtype
    from segkit.runtime import resolve_precision

    accelerator = "gpu" if device == "gpu" else "cpu"
    if accelerator == "gpu" and not torch.cuda.is_available():
        raise ValueError("device=gpu: this machine has no CUDA GPU to time training steps on; run segkit-plan on the "
                         "machine that will train, or give epochs=N")
    torch_device = torch.device("cuda" if accelerator == "gpu" else "cpu")
    dtype = autocast_dtype(resolve_precision("auto", accelerator), torch_device)

    def seconds(batch: int, height: int, width: int) -> float:
        module = SegmentationModule(model={"name": "unet", "encoder_name": ENCODER[device], "encoder_weights": None},
                                    loss={"name": loss}, optimizer={"_target_": "torch.optim.AdamW", "lr": 1e-3},
                                    num_classes=num_classes, in_channels=in_channels).to(torch_device).train()
        optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
        generator = torch.Generator().manual_seed(0)
        images = torch.randn(batch, in_channels, height, width, generator=generator).to(torch_device)
        classes = max(num_classes, 2)
        masks = torch.randint(0, classes, (batch, height, width), generator=generator).to(torch_device)
        timings = []
        for _ in range(steps + 1):
            started = time.perf_counter()
            with torch.autocast(torch_device.type, dtype=dtype, enabled=dtype is not None):
                logits = module(images)
            loss_value = module.loss_fn(logits.float(), masks)
            optimizer.zero_grad(set_to_none=True)
            loss_value.backward()
            optimizer.step()
            if torch_device.type == "cuda":
                torch.cuda.synchronize()
            timings.append(time.perf_counter() - started)
        return float(np.mean(timings[1:]))

    return seconds


def default_output(name: str) -> Path:
    """``conf/experiment/<name>_planned.yaml`` among segkit's own configs."""
    import segkit.conf

    return Path(segkit.conf.__file__).parent / "experiment" / f"{name}_planned.yaml"


def run_plan(cfg: Any, overrides: list[str] | None = None) -> dict[str, Any]:
    """``segkit-plan``: fingerprint ``cfg.data``, plan, write the experiment; returns what was written.

    ``overrides``: the command line's overrides (``data.root=...``): the ``data.*`` ones other
    than the root are written into the plan, and all of them are repeated in the command it
    prints to train it.
    """
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from segkit.data.io import refuse_overwrite, require_writable, write_bytes_atomic

    overrides = list(overrides or [])
    budget_s = parse_budget(DEFAULT_BUDGET if cfg.get("budget") is None else cfg.budget)
    device = str(cfg.device)
    if device == "auto":
        device = "gpu" if torch.cuda.is_available() else "cpu"
    datamodule = instantiate(cfg.data, _convert_="all")
    name = str(cfg.get("name") or datamodule.kind)
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
        raise ValueError(f"name={name}: letters, digits, _ and - only (it names the experiment file)")
    output = Path(str(cfg.output)) if cfg.get("output") else default_output(name)
    if output.suffix not in (".yaml", ".yml"):  # a folder: its experiment/ subfolder, for --config-dir
        output = (output if output.name == "experiment" else output / "experiment") / f"{name}_planned.yaml"
    refuse_overwrite([output, output.with_suffix(".fingerprint.json")], bool(cfg.overwrite))
    require_writable(output.parent, "write the plan elsewhere with output=<folder>/experiment/<name>_planned.yaml")
    datamodule.require_work_dir()
    for message in datamodule.prepare(class_stats=True):
        print(f"- {message}")
    fp = fingerprint(datamodule, int(cfg.max_images), int(cfg.seed))
    imagery = None if str(cfg.imagery) == "auto" else str(cfg.imagery)
    epochs = cfg.get("epochs")
    timer = None
    if epochs is None:
        loss = "focal_tversky" if fp.foreground_share < SPARSE_FOREGROUND else "dice_ce"
        print(f"timing training steps on this machine ({device})...", flush=True)
        timer = step_timer(device, datamodule.in_channels, datamodule.num_classes, loss)
    result = plan(fp, device, budget_s, name, imagery, timer, None if epochs is None else int(epochs),
                  time_limit=epochs is None or cfg.get("budget") is not None)
    data_settings = {}
    for override in overrides:
        key, _, value = override.lstrip("+").partition("=")
        if key.startswith("data.") and key[5:] not in RUN_SETTINGS and "." not in key[5:]:
            data_settings[key[5:]] = OmegaConf.to_container(cfg.data, resolve=True).get(key[5:])
    experiment = output.stem
    in_conf = output.parent.resolve() == default_output(name).parent.resolve()
    train_args = [a for a in overrides if a.startswith(("data.root=", "data.cache_dir=", "+data.root="))]
    config_dir = "" if in_conf else (f"--config-dir {output.parent.parent} " if output.parent.name == "experiment" else None)
    command = (f"segkit-train {config_dir}experiment={experiment} {' '.join(train_args)}".strip()
               if config_dir is not None else None)
    text = render(result, data_settings, command or "")
    write_bytes_atomic(output, text.encode())
    write_bytes_atomic(output.with_suffix(".fingerprint.json"), json.dumps(fingerprint_json(result.fingerprint), indent=2).encode())
    print(text)
    print(f"plan written to {output} (fingerprint beside it: {output.with_suffix('.fingerprint.json').name})")
    if command:
        print(f"train it: {command}")
    else:
        print(f"to train it, put it in a folder named experiment/ and run segkit-train --config-dir <that folder's parent> "
              f"experiment={experiment} ...")
    return {"output": str(output), "command": command, "plan": result}
