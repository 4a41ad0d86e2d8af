"""The LightningDataModule plumbing every dataset shares.

A dataset's module subclasses :class:`SegmentationDataModule` and says only what is
specific to its format: where the files are (:meth:`scan`), how to split them
(:meth:`split`), what its masks hold (:meth:`mask_values`) and its one-off preparation
(:meth:`prepare_dataset`). The base class builds the datasets, pipelines and loaders,
finds every problem of the files for ``segkit-prepare check=true``, and keeps derived
files (caches, patches, statistics) in a work folder outside the user's data.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from segkit.data.cache import default_cache_dir
from segkit.data.class_stats import CLASS_STATS_FILE
from segkit.data.datasets import BAD_FILE_POLICIES, ImageMaskDataset, ImageSpec, MaskValues
from segkit.data.io import DEFAULT_MAX_IMAGE_PIXELS, require_writable
from segkit.data.normalize import Normalizer
from segkit.data.sampling import EpochShuffleSampler, ShardSampler
from segkit.data.splits import group_split
from segkit.data.transforms import build_pipeline
from segkit.errors import format_problems

__all__ = ["MISSING_POLICIES", "Item", "Scan", "SegmentationDataModule", "default_class_names"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    """One image of a dataset: its name, files and split group (car id, source scene...)."""

    name: str
    image: Path
    mask: Path | None
    group: str


@dataclass
class Scan:
    """What a dataset's files hold, and every problem found while listing them.

    ``missing``: files whose counterpart is absent (a CSV row or label file without its
    image, an image without its mask): what a partial download looks like, skipped under
    ``data.missing=skip``. ``problems``: everything else, always an error.
    """

    items: list[Item]
    problems: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


MISSING_POLICIES = ("error", "skip")


def default_class_names(num_classes: int) -> list[str]:
    """``[background, foreground]`` for a binary dataset, ``class0 .. class<K-1>`` otherwise."""
    return ["background", "foreground"] if num_classes == 1 else [f"class{i}" for i in range(num_classes)]


class SegmentationDataModule(L.LightningDataModule):
    """Base of the dataset modules.

    Args:
        root: the dataset's folder, as distributed.
        num_classes: 1 = binary (sigmoid), more = softmax classes; masks hold ``0..K-1``.
        in_channels: image channels.
        image_size: side or ``[height, width]`` images and masks are resized to; ``None`` keeps them.
        pad_multiple: pad images (after resizing) so both sides are multiples of this
            (the model's size multiple); the padding is labelled ``ignore_index`` (or 0).
        batch_size, num_workers, pin_memory: DataLoader settings (``pin_memory=None``: only with CUDA).
        val_fraction: share of split groups held out for validation.
        seed: seed of the split and of random draws.
        cache_dir: work folder for derived files; ``None`` = ``~/.cache/segkit/<kind>-<hash of root>``.
        augment: albumentations spec for training (``segkit.data.transforms``).
        normalize: ``albumentations.Normalize`` kwargs; ``mean``/``std`` may be ``"dataset"``
            to use the statistics ``segkit-prepare`` computed.
        ignore_index: mask value that counts nowhere (padding).
        max_image_pixels: largest height x width decoded; larger headers are refused before
            decoding (corrupt files, decompression bombs). ``None``: no limit.
        missing: ``error`` (default) or ``skip`` files whose counterpart is absent (a CSV row
            without its image, a label file without its scene, an image without its mask):
            ``skip`` trains on the complete pairs of a partial download and says how many it left out.
        on_bad_file: ``error`` (default): a file that cannot be used during training stops the
            run with one line naming it; ``skip``: it is logged, replaced by the next readable
            item, and counted in ``metrics.json`` (``skipped_files``).
    """

    kind = "dataset"
    image_dtype: str | None = None
    default_class_names: Sequence[str] | None = None

    def __init__(
        self,
        root: str | None = None,
        num_classes: int = 1,
        in_channels: int = 3,
        image_size: int | list[int] | None = None,
        pad_multiple: int | None = None,
        batch_size: int = 8,
        num_workers: int = 2,
        pin_memory: bool | None = None,
        val_fraction: float = 0.2,
        seed: int = 42,
        cache_dir: str | None = None,
        augment: Mapping[str, Any] | None = None,
        normalize: Mapping[str, Any] | None = None,
        ignore_index: int | None = None,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
        missing: str = "error",
        on_bad_file: str = "error",
    ) -> None:
        if missing not in MISSING_POLICIES:
            raise ValueError(f"data.missing must be one of {', '.join(MISSING_POLICIES)}, got {missing!r}")
        if on_bad_file not in BAD_FILE_POLICIES:
            raise ValueError(f"data.on_bad_file must be one of {', '.join(BAD_FILE_POLICIES)}, got {on_bad_file!r}")
        super().__init__()
        self.save_hyperparameters()
        self.root = Path(root) if root is not None else None
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.image_size = image_size
        self.pad_multiple = pad_multiple
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.val_fraction = val_fraction
        self.seed = seed
        self.cache_dir = cache_dir
        self.augment = augment
        self.normalize = normalize
        self.ignore_index = ignore_index
        self.max_image_pixels = max_image_pixels
        self.missing = missing
        self.on_bad_file = on_bad_file
        self.skipped_files: dict[str, str] = {}  # on_bad_file=skip: file -> why, as batches reported them
        self.checked_missing: list[str] = []  # check(): the files without counterpart it found
        self._scan: Scan | None = None
        self.train_dataset: ImageMaskDataset | None = None
        self.val_dataset: ImageMaskDataset | None = None
        self._train_sampler: Sampler | None = None
        self._normalizer: Normalizer | None = None

    # ------------------------------------------------------------- per dataset
    def layout_help(self) -> str:
        """The expected folder layout, for error messages."""
        raise NotImplementedError

    def scan(self) -> Scan:
        """List the dataset's items; report (do not raise) every pairing problem."""
        raise NotImplementedError

    def split(self, items: list[Item]) -> tuple[list[int], list[int]]:
        """Train and validation indices; by default whole groups, ``val_fraction`` of them."""
        return group_split([i.name for i in items], [i.group for i in items], self.val_fraction, self.seed)

    def mask_values(self) -> MaskValues:
        return MaskValues(n_labels=max(self.num_classes, 2), ignore_index=self.ignore_index)

    def prepare_dataset(self) -> list[str]:
        """One-off preparation (caches, patches...); idempotent; returns what it did."""
        return []

    group_name = "image"  # what the split keeps together (a car, a scene), for messages
    fixed_in_channels = False  # the format allows one channel count only: data.in_channels is no remedy

    def has_validation(self) -> bool:
        """Whether the settings ask for a validation split (``data.val_fraction=0`` does not)."""
        return self.val_fraction > 0

    def empty_val_hint(self) -> str:
        """How to get a validation split, for the error that says it is empty."""
        n = len({i.group for i in self._scan.items}) if self._scan is not None else 0
        g = self.group_name
        if n < 2:
            return (f"Validation takes whole {g}s and all the data is one {g}: add the images of another {g}, "
                    "or train without validation with data.val_fraction=0")
        return (f"Validation takes whole {g}s ({n} now): raise data.val_fraction (now {self.val_fraction}), add more "
                f"{g}s, or train without validation with data.val_fraction=0")

    def empty_epoch_hint(self) -> str:
        """Why a training epoch can draw nothing, for the error that says so."""
        return "check the split settings"

    def train_sampler(self, items: list[Item]) -> Sampler:
        """The training sampler; by default every item once per epoch, shuffled by (seed, epoch)."""
        return EpochShuffleSampler(len(items), seed=self.seed)

    # --------------------------------------------------------------- locations
    @property
    def class_names(self) -> list[str]:
        if self.default_class_names is not None and len(self.default_class_names) == max(self.num_classes, 2):
            return list(self.default_class_names)
        return default_class_names(self.num_classes)

    @property
    def work_dir(self) -> Path:
        """Where derived files go: ``cache_dir`` or a per-root folder of the segkit cache."""
        if self.cache_dir:
            return Path(self.cache_dir)
        self.require_root()
        return default_cache_dir(self.kind, str(self.root.resolve()))

    @property
    def class_stats_path(self) -> Path:
        """The ``class_stats.json`` that ``segkit-prepare`` writes for this dataset."""
        return self.work_dir / CLASS_STATS_FILE

    def require_root(self) -> Path:
        if self.root is None:
            raise ValueError(f"data.root is not set: point it at the {self.kind} folder ({self.layout_help()})")
        if self.root.is_file():
            raise NotADirectoryError(f"data.root={self.root} is a file: point it at the {self.kind} folder ({self.layout_help()})")
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.kind} data root {self.root} does not exist ({self.layout_help()})")
        return self.root

    def require_paths(self, *paths: Path) -> None:
        """Raise naming every missing file or folder of the expected layout."""
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise FileNotFoundError(
                f"{self.kind} data at {self.root} is incomplete: missing {', '.join(missing)} ({self.layout_help()})"
            )

    def items(self) -> list[Item]:
        """The scanned items; raises with every problem found, each on its own line."""
        if self._scan is None:
            self.require_root()
            self._scan = self.scan()
            if self.missing == "skip":
                self.handle_missing(self._scan.missing, len(self._scan.items))
        if self._scan.problems:
            raise ValueError(format_problems(
                self._scan.problems, f"{len(self._scan.problems)} problem(s) in {self.kind} data at {self.root}:",
                tail=f"(segkit-prepare dataset={self.kind} data.root={self.root} check=true lists every problem)"))
        self.handle_missing(self._scan.missing, len(self._scan.items), log_skipped=False)
        if not self._scan.items:
            raise ValueError(f"no {self.kind} images found at {self.root} ({self.layout_help()})")
        return self._scan.items

    def handle_missing(self, missing: Sequence[str], complete: int, log_skipped: bool = True) -> None:
        """``data.missing``: raise listing the first files without counterpart (``error``), or
        say how many were left out (``skip``)."""
        if not missing:
            return
        if self.missing == "error":
            raise ValueError(format_problems(
                missing, f"{len(missing)} file(s) in {self.kind} data at {self.root} have no counterpart "
                f"({complete} complete item(s)):", limit=5,
                tail="A partial download? data.missing=skip trains on the complete items and says how many it left out; "
                     "otherwise add the missing files."))
        if log_skipped:
            log.warning("%s", format_problems(
                missing, f"data.missing=skip: left out {len(missing)} file(s) whose counterpart is absent; "
                f"using the {complete} complete item(s):", limit=3))

    def fingerprint(self) -> str:
        """Changes when any file of the dataset changes (names, sizes, modification times)."""
        sha = hashlib.sha1()
        for item in self.items():
            for path in (item.image, item.mask):
                if path is not None:
                    stat = os.stat(path)
                    sha.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        return sha.hexdigest()

    # ------------------------------------------------------------------ stages
    def require_work_dir(self) -> Path:
        """The work folder, created and proven writable before any preparation starts."""
        return require_writable(
            self.work_dir, "set data.cache_dir=<folder> (or the SEGKIT_CACHE environment variable) "
            "to keep segkit's derived files (caches, patches, statistics) elsewhere")

    def prepare_data(self) -> None:
        self.require_work_dir()
        for message in self.prepare_dataset():
            log.info("%s: %s", self.kind, message)

    def resolved_normalize(self) -> Mapping[str, Any] | None:
        """``normalize`` with ``"dataset"`` mean/std replaced by the prepared statistics."""
        if self.normalize is None or "dataset" not in (self.normalize.get("mean"), self.normalize.get("std")):
            return self.normalize
        from segkit.data.class_stats import read_image_stats

        stats = read_image_stats(self.work_dir, self.in_channels)
        out = dict(self.normalize)
        for key in ("mean", "std"):
            if out.get(key) == "dataset":
                out[key] = stats[key]
        return out

    def preprocessing(self) -> dict[str, Any]:
        """What a model trained on this data needs to be applied to a new image: stored in
        every checkpoint (``segkit.checkpoint``), so prediction does not need this module."""
        size = self.image_size
        if isinstance(size, int):
            size = [size, size]
        normalize = self.resolved_normalize()
        return {
            "dataset": self.kind,
            "in_channels": self.in_channels,
            "image_dtype": self.image_dtype,
            "image_size": None if size is None else [int(size[0]), int(size[1])],
            "pad_multiple": self.pad_multiple,
            "normalize": None if normalize is None else dict(normalize),
            "class_names": self.class_names,
        }

    def data_config(self) -> dict[str, Any]:
        """This module's class and arguments (Hydra ``_target_`` form): rebuilds it for ``segkit-eval``."""
        return {"_target_": f"{type(self).__module__}.{type(self).__qualname__}", **dict(self.hparams)}

    def make_dataset(self, items: Sequence[Item], augment: Mapping[str, Any] | None) -> ImageMaskDataset:
        fill = self.ignore_index if self.ignore_index is not None else 0
        return ImageMaskDataset(
            names=[i.name for i in items],
            image_paths=[i.image for i in items],
            mask_paths=[i.mask for i in items],
            transform=build_pipeline(self.image_size, augment, self.pad_multiple, fill),
            image_spec=self.image_spec(),
            mask_values=self.mask_values(),
            on_bad_file=self.on_bad_file,
        )

    def image_spec(self) -> ImageSpec:
        return ImageSpec(self.in_channels, self.image_dtype, self.max_image_pixels, self.channel_fix())

    def channel_fix(self) -> str:
        """What to do about an image whose channels cannot be converted losslessly (error messages)."""
        return f"convert the file, or set data.in_channels to the images' channel count (now {self.in_channels})"

    def raw_dataset(self, items: Sequence[Item]) -> ImageMaskDataset:
        """The items as stored (no resizing or normalisation): ``load(i)`` gives the raw
        image and the mapped mask (checks, ``segkit-eval`` at the images' own resolution)."""
        return ImageMaskDataset(
            [i.name for i in items], [i.image for i in items], [i.mask for i in items],
            transform=None, image_spec=self.image_spec(), mask_values=self.mask_values(),
            mask_decoder=self.source_mask_decoder(),
        )

    def source_mask_decoder(self) -> Callable[[str, tuple[int, int]], np.ndarray] | None:
        """``decoder(name, shape) -> mask`` straight from the dataset's own files, for datasets
        whose training masks are a derived cache (Airbus and Carvana RLE rows): checks and
        evaluation then read the sources, never a cache that may not be built yet. ``None``:
        the items' mask files are the sources."""
        return None

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        items = self.items()
        train_idx, val_idx = self.split(items)
        if not train_idx:
            raise ValueError(f"{self.kind} data at {self.root}: no training images left after the split")
        if not val_idx and not self.has_validation():
            log.warning("data.val_fraction=0: no validation split, so no validation metrics and no best checkpoint")
        elif not val_idx:
            raise ValueError(
                f"{self.kind} data at {self.root}: the validation split is empty — {len(train_idx)} training image(s), "
                f"none held out, so there would be no validation metrics and no best checkpoint. {self.empty_val_hint()}"
            )
        train = [items[i] for i in train_idx]
        self.check_sample(items)
        by_group = f" (split by {self.group_name}: each {self.group_name} on one side)" if self.group_name != "image" else ""
        log.info("%s: %d training and %d validation images%s", self.kind, len(train_idx), len(val_idx), by_group)
        self._normalizer = Normalizer(self.resolved_normalize())
        self.train_dataset = self.make_dataset(train, self.augment)
        self.val_dataset = self.make_dataset([items[i] for i in val_idx], None)
        self._train_sampler = self.train_sampler(train)
        if len(self._train_sampler) == 0:
            raise ValueError(
                f"{self.kind} data at {self.root}: the training epoch is empty — {len(train)} training image(s), "
                f"none drawn ({self.empty_epoch_hint()})"
            )

    setup_sample_size = 8

    def check_sample(self, items: Sequence[Item]) -> None:
        """Decode a spread sample of ``setup_sample_size`` items (image, mask, pairing, dtype,
        channels, sizes, mask values) and raise with every problem found — seconds at setup
        instead of a crash hours into training. ``segkit-prepare check=true`` reads them all."""
        if not items:
            return
        count = min(self.setup_sample_size, len(items))
        picks = sorted({round(i * (len(items) - 1) / max(count - 1, 1)) for i in range(count)})
        self._note_gray_images([items[i].image for i in picks])
        problems = self._load_problems([items[i] for i in picks])
        if not problems:
            return
        head = f"{len(problems)} of {len(picks)} sampled {self.kind} images at {self.root} cannot be used:"
        listing = f"segkit-prepare dataset={self.kind} data.root={self.root} check=true lists every problem of every file"
        if self.on_bad_file == "skip" and len(problems) < len(picks):
            log.warning("%s", format_problems(problems, head, tail=f"data.on_bad_file=skip: such files are skipped ({listing})"))
            return
        raise ValueError(format_problems(problems, head, tail=(
            f"Fix or remove them; data.on_bad_file=skip trains without such files. ({listing})"
            if len(problems) < len(picks) else f"({listing})")))

    def _note_gray_images(self, paths: Sequence[Path]) -> None:
        """Say so when every sampled image is grayscale but the model is to take RGB: each is
        copied into three channels (lossless, but three times the input for one band's worth)."""
        if self.in_channels != 3 or self.fixed_in_channels:
            return
        from PIL import Image

        try:
            modes = set()
            for path in paths:
                with Image.open(path) as im:
                    modes.add(im.mode)
        except Exception:  # noqa: BLE001 — unreadable files are reported by the checks
            return
        if modes and modes <= {"L", "I", "I;16", "I;16B", "I;16L", "F"}:
            log.warning("the sampled images are grayscale but data.in_channels=3: each is copied into 3 channels; "
                        "data.in_channels=1 trains a model on the one channel they have")

    def check(self) -> list[str]:
        """Every problem of every file (pairing, decoding, size, dtype, mask values), none raised."""
        try:
            self.require_root()
            scan = self._scan or self.scan()
        except (ValueError, FileNotFoundError) as err:
            return [str(err)]
        self._scan = scan
        self.checked_missing = list(scan.missing)
        missing = scan.missing if self.missing == "error" else []
        return list(scan.problems) + list(missing) + self._load_problems(scan.items, progress=True)

    def _load_problems(self, items: Sequence[Item], progress: bool = False) -> list[str]:
        """Decode every item as stored (image, mask, their checks); the message of each failure."""
        dataset = self.raw_dataset(items)
        indices = range(len(dataset))
        if progress:
            from tqdm.auto import tqdm

            indices = tqdm(indices, desc=f"checking {self.kind}", unit="img")
        problems = []
        for index in indices:
            try:
                dataset.load(index)
            except (ValueError, OSError) as err:
                problems.append(str(err))
        return problems

    # ------------------------------------------------------------- dataloaders
    def prepare_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """A loader's batch → model input: images ``(B, H, W, C)`` as decoded → normalised
        ``(B, C, H, W)`` float32 (channels-last strides), masks → int64; on the batch's device.

        The Trainer calls it after moving each batch (:meth:`on_after_batch_transfer`); call
        it yourself when iterating the loaders by hand.
        """
        if self._normalizer is None:
            self._normalizer = Normalizer(self.resolved_normalize())
        out = dict(batch)
        out["image"] = self._normalizer(batch["image"])
        if "mask" in out:
            out["mask"] = batch["mask"].long()
        return out

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        for report in batch.pop("skipped", None) or ():
            for line in filter(None, report.split("\n")):
                file = line.split(": ", 1)[0]
                if file not in self.skipped_files:
                    self.skipped_files[file] = line
                    log.warning("data.on_bad_file=skip: skipped %s", line)
        return self.prepare_batch(batch)

    def _loader(self, dataset: ImageMaskDataset, **kwargs: Any) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            # worker seeds come from this generator, not the global RNG, so creating an
            # iterator never shifts the global random stream (dropout) of a resumed run
            generator=torch.Generator().manual_seed(self.seed),
            **kwargs,
        )

    def _rank(self) -> tuple[int, int]:
        """``(global rank, world size)`` of the attached Trainer; ``(0, 1)`` without one."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def train_dataloader(self) -> DataLoader:
        assert self.train_dataset is not None and self._train_sampler is not None, "call setup() first"
        rank, world_size = self._rank()
        if hasattr(self._train_sampler, "shard"):
            self._train_sampler.shard(rank, world_size)
        elif world_size > 1:
            raise TypeError(f"{type(self._train_sampler).__name__} cannot split its samples between DDP ranks (no shard())")
        n = len(self._train_sampler)
        # a last batch of one image breaks BatchNorm: drop it when there are more batches
        drop_last = n > self.batch_size and n % self.batch_size == 1
        return self._loader(self.train_dataset, sampler=self._train_sampler, drop_last=drop_last)

    def val_dataloader(self) -> DataLoader:
        assert self.val_dataset is not None, "call setup() first"
        rank, world_size = self._rank()
        return self._loader(self.val_dataset, sampler=ShardSampler(len(self.val_dataset), rank, world_size))

    def evaluation_dataset(self, items: Sequence[Item]) -> ImageMaskDataset:
        """What ``segkit-eval`` scores for ``items`` (a split): one entry per image, as stored,
        at its own resolution. By default the items themselves (:meth:`raw_dataset`); a
        dataset that trains on pieces cut from larger images (DOTA's overlapping patches)
        returns the source images instead, so every pixel is scored once."""
        return self.raw_dataset(items)
