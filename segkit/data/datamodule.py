"""The LightningDataModule plumbing every dataset shares.

A dataset's module subclasses :class:`SegmentationDataModule` and says only what is
specific to its format: where the files are (:meth:`scan`), how to split them
(:meth:`split`), what its masks hold (:meth:`mask_values`) and its one-off preparation
(:meth:`prepare_dataset`). The base class builds the datasets, pipelines and loaders,
finds every problem of the files for ``segkit-prepare check=true``, and keeps derived
files (caches, patches, statistics) in a work folder outside the user's data.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from segkit.data.cache import default_cache_dir, stat_fingerprint
from segkit.data.checks import FileChecks
from segkit.data.class_stats import (
    CLASS_PLOT_FILE,
    CLASS_STATS_FILE,
    IMAGE_STATS_FILE,
    count_pixels,
    image_stats,
    plot_class_distribution,
    read_class_presence,
    write_class_stats,
)
from segkit.data.datasets import BAD_FILE_POLICIES, ImageMaskDataset, ImageSpec, MaskValues, label_count
from segkit.data.io import DEFAULT_MAX_IMAGE_PIXELS, require_writable, write_json_atomic
from segkit.data.normalize import Normalizer
from segkit.data.sampling import EpochShuffleSampler, RepeatFactorSampler, ShardSampler, repeat_factors
from segkit.data.splits import group_kfold, group_split
from segkit.data.table import collection_paused, freeze_before_fork, init_loader_worker
from segkit.data.transforms import build_pipeline, wants_class_frequencies
from segkit.errors import format_problems

__all__ = ["BASE_DEFAULTS", "DEFAULT", "MISSING_POLICIES", "Item", "Scan", "SegmentationDataModule", "default_class_names"]

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
SPLIT_BY = ("group", "item")
SAMPLINGS = ("uniform", "repeat_factor")


class _Default:
    """Marks an argument left out: the dataset's own default applies (``defaults``)."""

    def __repr__(self) -> str:
        return "<dataset default>"


DEFAULT: Any = _Default()

#: the base arguments' defaults; a dataset changes its own in ``defaults``, and its
#: ``conf/dataset/<name>.yaml`` (from ``conf/dataset/_base.yaml``) says the same
BASE_DEFAULTS: dict[str, Any] = {
    "num_classes": 1, "in_channels": 3, "image_size": None, "pad_multiple": None, "batch_size": 8,
    "num_workers": 2, "pin_memory": None, "val_fraction": 0.2, "seed": 42, "cache_dir": None,
    "augment": None, "normalize": None, "ignore_index": None, "max_image_pixels": DEFAULT_MAX_IMAGE_PIXELS,
    "missing": "error", "on_bad_file": "error", "split_by": "group", "folds": None, "fold": 0,
    "sampling": "uniform", "repeat_threshold": 0.3,
}


def default_class_names(num_classes: int) -> list[str]:
    """``[background, foreground]`` for a binary dataset, ``class0 .. class<K-1>`` otherwise."""
    return ["background", "foreground"] if num_classes == 1 else [f"class{i}" for i in range(num_classes)]


class SegmentationDataModule(FileChecks, L.LightningDataModule):
    """Base of the dataset modules.

    Every argument but ``root`` left out takes the dataset's own default (its class
    attribute ``defaults``), else the shared one (:data:`BASE_DEFAULTS`).

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
        split_by: ``group`` (default): the split keeps each item's group (a car, a scene) on
            one side; ``item``: every item on its own.
        folds, fold: ``folds=K`` splits the groups into K balanced folds (deterministic by
            ``seed``) and validates on fold ``fold`` (0..K-1); ``None``: ``val_fraction``.
        sampling: ``uniform`` (default): every training image once per epoch;
            ``repeat_factor``: images containing rare classes repeated (needs the class
            statistics of ``segkit-prepare``), see ``repeat_threshold``.
        repeat_threshold: the images of a class found in a share ``f`` below this of the
            training images are drawn about ``sqrt(threshold / f)`` times per epoch.
        on_bad_file: ``error`` (default): a file that cannot be used during training stops the
            run with one line naming it; ``skip``: it is logged, replaced by the next readable
            item, and counted in ``metrics.json`` (``skipped_files``).
    """

    kind = "dataset"
    image_dtype: str | None = None
    default_class_names: Sequence[str] | None = None
    #: this dataset's own defaults of the base arguments (``{"num_classes": 8, ...}``); an
    #: argument left out takes its value from here, else from :data:`BASE_DEFAULTS`
    defaults: ClassVar[Mapping[str, Any]] = {}

    def __init__(
        self,
        root: str | None = None,
        num_classes: int = DEFAULT,
        in_channels: int = DEFAULT,
        image_size: int | list[int] | None = DEFAULT,
        pad_multiple: int | None = DEFAULT,
        batch_size: int = DEFAULT,
        num_workers: int = DEFAULT,
        pin_memory: bool | None = DEFAULT,
        val_fraction: float = DEFAULT,
        seed: int = DEFAULT,
        cache_dir: str | None = DEFAULT,
        augment: Mapping[str, Any] | None = DEFAULT,
        normalize: Mapping[str, Any] | None = DEFAULT,
        ignore_index: int | None = DEFAULT,
        max_image_pixels: int | None = DEFAULT,
        missing: str = DEFAULT,
        on_bad_file: str = DEFAULT,
        split_by: str = DEFAULT,
        folds: int | None = DEFAULT,
        fold: int = DEFAULT,
        sampling: str = DEFAULT,
        repeat_threshold: float = DEFAULT,
    ) -> None:
        given = {key: value for key, value in locals().items() if key in BASE_DEFAULTS}
        settings = {key: copy.deepcopy(self.defaults.get(key, BASE_DEFAULTS[key])) if value is DEFAULT else value
                    for key, value in given.items()}
        if settings["missing"] not in MISSING_POLICIES:
            raise ValueError(f"data.missing must be one of {', '.join(MISSING_POLICIES)}, got {settings['missing']!r}")
        if settings["on_bad_file"] not in BAD_FILE_POLICIES:
            raise ValueError(f"data.on_bad_file must be one of {', '.join(BAD_FILE_POLICIES)}, got {settings['on_bad_file']!r}")
        if self.binary_masks and settings["num_classes"] not in (1, 2):
            raise ValueError(f"{self.kind} masks are {self.binary_masks}: data.num_classes must be 1 or 2 "
                             f"(1: sigmoid, 2: softmax), got {settings['num_classes']}")
        channels = self.defaults.get("in_channels", BASE_DEFAULTS["in_channels"])
        if self.fixed_in_channels and settings["in_channels"] != channels:
            raise ValueError(f"{self.kind} images have {channels} channel(s): data.in_channels must be {channels}, "
                             f"got {settings['in_channels']}")
        if settings["sampling"] not in SAMPLINGS:
            raise ValueError(f"data.sampling must be one of {', '.join(SAMPLINGS)}, got {settings['sampling']!r}")
        if settings["split_by"] not in SPLIT_BY:
            raise ValueError(f"data.split_by must be one of {', '.join(SPLIT_BY)}, got {settings['split_by']!r}")
        folds_, fold_ = settings["folds"], settings["fold"]
        if folds_ is None and fold_ not in (0, None):
            raise ValueError(f"data.fold={fold_} chooses a fold, but data.folds is not set: add data.folds=K "
                             "(K-fold cross-validation), or leave data.fold out")
        if folds_ is not None and int(folds_) < 2:
            raise ValueError(f"data.folds={folds_}: K-fold cross-validation needs data.folds of at least 2 "
                             "(or data.folds=null for one train/validation split)")
        if folds_ is not None and not 0 <= int(fold_) < int(folds_):
            raise ValueError(f"data.folds={folds_} data.fold={fold_}: data.fold must be one of 0..{int(folds_) - 1}")
        super().__init__()
        self.save_hyperparameters()
        self.hparams.update(settings)  # the values in force, not the DEFAULT marker
        # absolute: the checkpoint records these, and segkit-eval / predict / resume read them
        # back from whatever folder they run in
        self.root = Path(root).expanduser().absolute() if root is not None else None
        if root is not None:
            self.hparams["root"] = str(self.root)
        if settings["cache_dir"]:
            settings["cache_dir"] = self.hparams["cache_dir"] = str(Path(settings["cache_dir"]).expanduser().absolute())
        self.num_classes: int = settings["num_classes"]
        self.in_channels: int = settings["in_channels"]
        self.image_size = settings["image_size"]
        self.pad_multiple = settings["pad_multiple"]
        self.batch_size: int = settings["batch_size"]
        self.num_workers: int = settings["num_workers"]
        self.pin_memory = torch.cuda.is_available() if settings["pin_memory"] is None else settings["pin_memory"]
        self.val_fraction: float = settings["val_fraction"]
        self.seed: int = settings["seed"]
        self.cache_dir = settings["cache_dir"]
        self.augment = settings["augment"]
        self.normalize = settings["normalize"]
        self.ignore_index = settings["ignore_index"]
        self.max_image_pixels = settings["max_image_pixels"]
        self.missing: str = settings["missing"]
        self.on_bad_file: str = settings["on_bad_file"]
        self.split_by: str = settings["split_by"]
        self.folds: int | None = None if settings["folds"] is None else int(settings["folds"])
        self.fold: int = int(settings["fold"])
        self.sampling: str = settings["sampling"]
        self.repeat_threshold: float = float(settings["repeat_threshold"])
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

    def split_groups(self, items: Sequence[Item]) -> list[str]:
        """What the split keeps together: each item's group (``data.split_by=group``: its car,
        scene...) or the item alone (``item``)."""
        return [i.group if self.split_by == "group" else i.name for i in items]

    def split(self, items: list[Item]) -> tuple[list[int], list[int]]:
        """Train and validation indices: whole groups, ``val_fraction`` of them, or with
        ``data.folds=K`` the groups of fold ``data.fold`` (:func:`segkit.data.splits.group_kfold`)."""
        keys = [i.name for i in items]
        if self.folds:
            return group_kfold(keys, self.split_groups(items), self.folds, self.fold, self.seed)
        return group_split(keys, self.split_groups(items), self.val_fraction, self.seed)

    def mask_values(self) -> MaskValues:
        return MaskValues(n_labels=label_count(self.num_classes), ignore_index=self.ignore_index)

    def prepare_dataset(self) -> list[str]:
        """One-off preparation (caches, patches...); idempotent; returns what it did."""
        return []

    group_name = "image"  # what the split keeps together (a car, a scene), for messages
    #: what the pictures are, for segkit-plan's augmentations: overhead / microscopy (orientation
    #: carries no meaning: rotations) or ground (photographs with an up: a horizontal flip only)
    imagery = "ground"
    fixed_in_channels = False  # the format allows one channel count only: data.in_channels is no remedy
    binary_masks: str | None = None  # masks of two values ("ship/no ship"): num_classes 1 or 2 only

    def has_validation(self) -> bool:
        """Whether the settings ask for a validation split (``data.val_fraction=0`` does not)."""
        return self.folds is not None or self.val_fraction > 0

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
        """The training sampler: every item once per epoch, shuffled by (seed, epoch); with
        ``data.sampling=repeat_factor`` images with rare classes repeated (:func:`repeat_factors`
        of the per-image classes ``segkit-prepare`` recorded)."""
        if self.sampling == "repeat_factor":
            presence = read_class_presence(self.class_stats_path, [i.name for i in items], self.kind)
            factors = repeat_factors(presence, self.repeat_threshold)
            sampler = RepeatFactorSampler(factors, seed=self.seed)
            log.info("data.sampling=repeat_factor: %d draws per epoch from %d training images (largest factor %.2f)",
                     len(sampler), len(items), float(factors.max()) if len(factors) else 1.0)
            return sampler
        return EpochShuffleSampler(len(items), seed=self.seed)

    # --------------------------------------------------------------- locations
    @property
    def class_names(self) -> list[str]:
        if self.default_class_names is not None and len(self.default_class_names) == label_count(self.num_classes):
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
    def split_suffix(self) -> str:
        """``""``, or ``.fold<k>of<K>`` under cross-validation: statistics of a training split are
        kept per fold, so folds trained at once (a parallel sweep) never read each other's."""
        return "" if self.folds is None else f".fold{self.fold}of{self.folds}"

    @property
    def class_stats_path(self) -> Path:
        """The ``class_stats.json`` that ``segkit-prepare`` writes for this dataset (per fold:
        ``class_stats.fold<k>of<K>.json``)."""
        stem, suffix = CLASS_STATS_FILE.rsplit(".", 1)
        return self.work_dir / f"{stem}{self.split_suffix}.{suffix}"

    @property
    def image_stats_path(self) -> Path:
        """The training split's image mean/std (``image_stats.json``; per fold like the class statistics)."""
        stem, suffix = IMAGE_STATS_FILE.rsplit(".", 1)
        return self.work_dir / f"{stem}{self.split_suffix}.{suffix}"

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
            with collection_paused():  # 100,000 items: the cyclic collector's passes made the cost per item grow
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
        return stat_fingerprint(path for item in self.items() for path in (item.image, item.mask) if path is not None)

    # ------------------------------------------------------------------ stages
    def require_work_dir(self) -> Path:
        """The work folder, created and proven writable before any preparation starts."""
        return require_writable(
            self.work_dir, "set data.cache_dir=<folder> (or the SEGKIT_CACHE environment variable) "
            "to keep segkit's derived files (caches, patches, statistics) elsewhere")

    prepares_image_stats = False  # segkit-prepare writes image_stats.json even when normalize does not ask

    def prepare(self, class_stats: bool = False) -> list[str]:
        """All one-off preparation (``segkit-prepare``, and training's ``prepare_data``): the
        dataset's own (:meth:`prepare_dataset`), then the training images' mean/std where
        ``normalize`` asks for them (``mean: dataset``) or the dataset always keeps them, then
        the class statistics where ``class_stats`` (segkit-prepare) or ``sampling=repeat_factor``
        asks for them."""
        messages = list(self.prepare_dataset())
        wants = self.normalize is not None and "dataset" in (self.normalize.get("mean"), self.normalize.get("std"))
        if self.prepares_image_stats or wants:
            messages.append(self.prepare_image_stats())
        if class_stats or self.sampling == "repeat_factor" or wants_class_frequencies(self.augment):
            messages.append(self.prepare_class_stats()[1])
        return messages

    def prepare_class_stats(self) -> tuple[dict[str, Any], str]:
        """Pixels per class over the training split (for ``weights: auto``) and the classes of
        every image, validation too, so any fold's training split finds its own (for
        ``sampling=repeat_factor``) → ``class_stats.json`` and its plot; idempotent.
        Returns the statistics and what was done."""
        from tqdm.auto import tqdm

        items = self.items()
        train_idx, val_idx = self.split(items)
        train, val = (self.raw_dataset([items[i] for i in idx]) for idx in (train_idx, val_idx))
        n_labels = label_count(self.num_classes)
        fingerprint = hashlib.sha1(
            "\n".join(["presence-1", self.fingerprint(), str(n_labels), str(self.ignore_index), *train.names]).encode()
        ).hexdigest()
        path = self.class_stats_path
        if path.is_file():
            stats = json.loads(path.read_text())
            if stats.get("fingerprint") == fingerprint:
                return {**stats, "path": str(path)}, f"class statistics {path} are up to date: nothing to do"
        counts = np.zeros(n_labels, dtype=np.int64)
        presence: dict[str, list[int]] = {}
        for part, counted, desc in ((train, True, "counting class pixels"), (val, False, "classes of the other images")):
            for index in tqdm(range(len(part)), desc=desc, unit="mask", disable=None):
                image_counts = count_pixels(part.load_mask(index), n_labels, self.ignore_index)
                if counted:
                    counts += image_counts
                presence[part.names[index]] = np.flatnonzero(image_counts).tolist()
        stats = write_class_stats(path, counts, self.class_names, images=len(train),
                                  extra={"fingerprint": fingerprint, "presence": presence})
        stem, suffix = CLASS_PLOT_FILE.rsplit(".", 1)
        plot = path.with_name(f"{stem}{self.split_suffix}.{suffix}")
        plot_class_distribution(stats, plot)
        return ({**stats, "path": str(path)},
                f"class statistics of {len(train)} training images written to {path} (plot: {plot})")

    def prepare_image_stats(self) -> str:
        """Per-channel mean/std of the training split's images (read as training reads them,
        in units of ``normalize.max_pixel_value``) → ``image_stats.json``; idempotent."""
        path = self.image_stats_path
        items = self.items()
        train = [items[i] for i in self.split(items)[0]]
        scale = (self.normalize or {}).get("max_pixel_value", 255.0)
        if scale is None:  # null: the images' dtype range, as the Normalizer reads it
            scale = float(np.iinfo(self.image_dtype).max) if self.image_dtype in ("uint8", "uint16") else 255.0
        scale = float(scale)
        fingerprint = stat_fingerprint((item.image for item in train), salt=f"{scale}|{self.in_channels}")
        if path.is_file() and json.loads(path.read_text()).get("fingerprint") == fingerprint:
            return f"image statistics {path} are up to date"
        dataset = self.raw_dataset(train)
        stats = image_stats((dataset.load_image(i) for i in range(len(dataset))), scale)
        write_json_atomic(path, {**stats, "images": len(train), "fingerprint": fingerprint})
        return f"image statistics of {len(train)} training images written to {path}"

    def prepare_data(self) -> None:
        self.require_work_dir()
        for message in self.prepare():
            log.info("%s: %s", self.kind, message)

    def resolved_normalize(self) -> Mapping[str, Any] | None:
        """``normalize`` with ``"dataset"`` mean/std replaced by the prepared statistics."""
        if self.normalize is None or "dataset" not in (self.normalize.get("mean"), self.normalize.get("std")):
            return self.normalize
        from segkit.data.class_stats import read_image_stats

        stats = read_image_stats(self.image_stats_path, self.in_channels)
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

    def class_frequencies(self, augment: Mapping[str, Any] | None) -> list[float] | None:
        """The training pixels' class shares (``class_stats.json``) when ``augment`` draws crop
        classes by frequency (``ForegroundCrop`` with ``class_draw: inverse_frequency``)."""
        if not wants_class_frequencies(augment):
            return None
        path = self.class_stats_path
        if not path.is_file():
            raise FileNotFoundError(
                f"ForegroundCrop(class_draw=inverse_frequency) reads the class frequencies from {path}, which does not "
                f"exist yet: segkit-train writes it before training; to write it yourself, run `segkit-prepare "
                f"dataset={self.kind} data.root=<your data>` with the same experiment= and data.* arguments")
        return [float(f) for f in json.loads(path.read_text())["frequencies"]]

    def make_dataset(self, items: Sequence[Item], augment: Mapping[str, Any] | None) -> ImageMaskDataset:
        fill = self.ignore_index if self.ignore_index is not None else 0
        return ImageMaskDataset(
            names=[i.name for i in items],
            image_paths=[i.image for i in items],
            mask_paths=[i.mask for i in items],
            transform=build_pipeline(self.image_size, augment, self.pad_multiple, fill, self.class_frequencies(augment)),
            image_spec=self.image_spec(),
            mask_values=self.mask_values(),
            mask_decoder=self.source_mask_decoder(),
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
        """``decoder(name, shape) -> mask`` for datasets whose masks are not files of their own
        (Airbus and Carvana RLE rows, decoded as each image loads): training, checks and
        evaluation all use it. ``None``: the items' mask files are the masks."""
        return None

    def split_problem(self, train_idx: Sequence[int], val_idx: Sequence[int]) -> str | None:
        """What makes a split unusable for training (no training images; no validation images
        while validation is asked for), or None. ``setup`` raises it, ``check=true`` lists it."""
        if not train_idx:
            return f"{self.kind} data at {self.root}: no training images left after the split"
        if not val_idx and self.has_validation():
            return (f"{self.kind} data at {self.root}: the validation split is empty — {len(train_idx)} training "
                    "image(s), none held out, so there would be no validation metrics and no best checkpoint. "
                    f"{self.empty_val_hint()}")
        return None

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        items = self.items()
        train_idx, val_idx = self.split(items)
        problem = self.split_problem(train_idx, val_idx)
        if problem is not None:
            raise ValueError(problem)
        if not val_idx:
            log.warning("data.val_fraction=0: no validation split, so no validation metrics and no best checkpoint")
        train = [items[i] for i in train_idx]
        self.check_sample(items)
        by_group = (f" (split by {self.group_name}: each {self.group_name} on one side)"
                    if self.group_name != "image" and self.split_by == "group" else "")
        fold = f", fold {self.fold} of {self.folds}" if self.folds else ""
        log.info("%s: %d training and %d validation images%s%s", self.kind, len(train_idx), len(val_idx), by_group, fold)
        self._normalizer = Normalizer(self.resolved_normalize())
        self._train_sampler = self.train_sampler(train)  # first: a setup that fails leaves nothing half set
        self.train_dataset = self.make_dataset(train, self.augment)
        self.val_dataset = self.make_dataset([items[i] for i in val_idx], None)
        if len(self._train_sampler) == 0:
            raise ValueError(
                f"{self.kind} data at {self.root}: the training epoch is empty — {len(train)} training image(s), "
                f"none drawn ({self.empty_epoch_hint()})"
            )

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
        if self.num_workers > 0:
            freeze_before_fork()  # what the workers inherit stays shared (segkit.data.table)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            # worker seeds come from this generator, not the global RNG, so creating an
            # iterator never shifts the global random stream (dropout) of a resumed run
            generator=torch.Generator().manual_seed(self.seed),
            worker_init_fn=init_loader_worker if self.num_workers > 0 else None,
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
        if 0 < len(self.val_dataset) < world_size:
            # a rank without a validation batch skips the first validation forward (DDP's buffer
            # broadcast) and the metrics' epoch-end gather that the others wait in: they hang
            raise ValueError(
                f"{self.kind}: the validation split has {len(self.val_dataset)} image(s), fewer than the "
                f"{world_size} processes of this DDP run, so a process would have no validation batch and the "
                f"others would wait for it forever. Validate on at least {world_size} images (data.val_fraction, "
                f"data.val_list, or a larger fold) or train on fewer devices (trainer.devices)"
            )
        return self._loader(self.val_dataset, sampler=ShardSampler(len(self.val_dataset), rank, world_size))

    def evaluation_dataset(self, items: Sequence[Item]) -> ImageMaskDataset:
        """What ``segkit-eval`` scores for ``items`` (a split): one entry per image, as stored,
        at its own resolution. By default the items themselves (:meth:`raw_dataset`); a
        dataset that trains on pieces cut from larger images (DOTA's overlapping patches)
        returns the source images instead, so every pixel is scored once."""
        return self.raw_dataset(items)
