"""Your own data: a folder of images and a folder of masks, matched by file name.

::

    <root>/images/<stem>.<jpg|png|tif|...>      any of JPEG / PNG / BMP / 8- or 16-bit TIFF,
                                                  single- or multi-channel
    <root>/masks/<mask_pattern>.<png|tif|...>    e.g. mask_pattern "{stem}_mask"

or, with ``split: folders``, ``<root>/train/{images,masks}`` and ``<root>/val/{images,masks}``.

Mask encodings (``mask_encoding``):

- ``index``: pixel values are class indices ``0..num_classes-1`` (binary: 0/1);
- ``binary``: 0 = background, 255 (or 1) = foreground;
- ``rgb``: colour-coded, ``palette[k]`` is the ``[r, g, b]`` of class ``k``.

Splits (``split``): ``ratio`` (a deterministic ``val_fraction`` of the images, by
``seed``), ``list`` (``val_list``: the validation stems inline, or a file of them — JSON
list or one per line), ``folders`` (``train/`` and ``val/`` subfolders).
Everything else — readers, transforms, caching of nothing, checks — is the shared
:class:`~segkit.data.datamodule.SegmentationDataModule`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segkit.data.class_stats import count_pixels
from segkit.data.datamodule import Item, Scan, SegmentationDataModule, default_class_names
from segkit.data.datasets import MaskValues, label_count
from segkit.data.pairing import files_by_key, pair_by_key, stem
from segkit.data.splits import read_name_list

__all__ = ["FolderDataModule"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".gif", ".bmp")
ENCODINGS = ("index", "binary", "rgb")
SPLITS = ("ratio", "list", "folders")


class FolderDataModule(SegmentationDataModule):
    """Images and masks from two folders, paired by stem.

    Args:
        root: the dataset folder.
        images_dir, masks_dir: folders below ``root`` (below ``root/train`` and ``root/val``
            with ``split: folders``).
        mask_pattern: the mask's file stem, ``{stem}`` standing for the image's stem.
        mask_encoding: ``index`` | ``binary`` | ``rgb`` (see the module docstring).
        palette: ``rgb``: the ``[r, g, b]`` of each class, in class order.
        class_names: names of the classes (two for binary: ``[background, thing]``), for
            metric keys and reports.
        image_dtype: ``uint8`` / ``uint16`` every image must have, or ``None`` for any.
        split: ``ratio`` | ``list`` | ``folders``.
        val_list: ``split: list``: validation image stems, or the path of a file holding them.
        train_dir, val_dir: ``split: folders``: the two subfolders of ``root``.
        **kwargs: everything :class:`SegmentationDataModule` takes (``num_classes``,
            ``in_channels``, ``image_size``, ``augment``, ``normalize``, ...).
    """

    kind = "folder"
    defaults = {
        "pad_multiple": 32, "normalize": {"normalization": "image"},  # per image: any bit depth, any channel count
        "augment": {"hflip": {"type": "HorizontalFlip", "p": 0.5}, "vflip": {"type": "VerticalFlip", "p": 0.5},
                    "rotate90": {"type": "RandomRotate90", "p": 0.5}},
    }

    def __init__(
        self,
        root: str | None = None,
        images_dir: str = "images",
        masks_dir: str = "masks",
        mask_pattern: str = "{stem}",
        mask_encoding: str = "index",
        palette: Sequence[Sequence[int]] | None = None,
        class_names: Sequence[str] | None = None,
        image_dtype: str | None = None,
        split: str = "ratio",
        val_list: str | Sequence[str] | None = None,
        train_dir: str = "train",
        val_dir: str = "val",
        num_classes: int = 1,
        **kwargs: Any,
    ) -> None:
        if mask_encoding not in ENCODINGS:
            raise ValueError(f"data.mask_encoding must be one of {', '.join(ENCODINGS)}, got {mask_encoding!r}")
        if split not in SPLITS:
            raise ValueError(f"data.split must be one of {', '.join(SPLITS)}, got {split!r}")
        if "{stem}" not in mask_pattern:
            raise ValueError(f"data.mask_pattern must contain {{stem}} (e.g. '{{stem}}_mask'), got {mask_pattern!r}")
        n_labels = label_count(num_classes)
        if mask_encoding == "rgb":
            if not palette or any(len(colour) != 3 for colour in palette):
                raise ValueError("data.mask_encoding=rgb needs data.palette: one [r, g, b] per class, in class order")
            if len(palette) != n_labels:
                raise ValueError(f"data.palette has {len(palette)} colours but there are {n_labels} classes (data.num_classes)")
            if len({tuple(c) for c in palette}) != len(palette):
                raise ValueError("data.palette: two classes have the same colour")
        if mask_encoding == "binary" and num_classes > 2:
            raise ValueError(f"data.mask_encoding=binary has two classes, but data.num_classes={num_classes}")
        if class_names is not None and len(class_names) != n_labels:
            raise ValueError(f"data.class_names has {len(class_names)} names but there are {n_labels} classes")
        # resolved before the base class saves the arguments as hyperparameters: the module is
        # given the same names, and Lightning refuses a key the two hold with different values
        class_names = list(class_names) if class_names is not None else default_class_names(num_classes)
        if split == "list" and not val_list:
            raise ValueError("data.split=list needs data.val_list: validation image stems, or a file listing them")
        if image_dtype not in (None, "uint8", "uint16"):
            raise ValueError(f"data.image_dtype must be uint8, uint16 or null, got {image_dtype!r}")
        super().__init__(root=root, num_classes=num_classes, **kwargs)
        self.images_dir = images_dir
        self.masks_dir = masks_dir
        self.mask_pattern = mask_pattern
        self.mask_encoding = mask_encoding
        self.palette = None if palette is None else tuple(tuple(int(v) for v in colour) for colour in palette)
        self.default_class_names = tuple(class_names)
        self.image_dtype = image_dtype
        self.split_mode = split
        self.val_list = val_list
        self.train_dir = train_dir
        self.val_dir = val_dir

    def layout_help(self) -> str:
        mask = self.mask_pattern.replace("{stem}", "<stem>")
        if self.split_mode == "folders":
            return (f"expected {self.train_dir}/{self.images_dir}/<stem>.<ext> with {self.train_dir}/{self.masks_dir}/{mask}.<ext>, "
                    f"and the same under {self.val_dir}/")
        return (f"expected {self.images_dir}/<stem>.<jpg|png|tif|...> and {self.masks_dir}/{mask}.<png|tif|...>; "
                "other folder names: data.images_dir=... data.masks_dir=...")

    # ----------------------------------------------------------------- pairing
    def _mask_stem_regex(self) -> re.Pattern:
        return re.compile("^" + re.escape(self.mask_pattern).replace(re.escape("{stem}"), "(?P<stem>.+)") + "$")

    def _pair(self, image_dir: Path, mask_dir: Path, group: str, problems: list[str], missing: list[str]) -> list[Item]:
        self.require_paths(image_dir, mask_dir)
        images = files_by_key(image_dir, IMAGE_SUFFIXES, stem, problems=problems, what="image", key_word="stem")
        pattern = self._mask_stem_regex()
        masks = files_by_key(mask_dir, MASK_SUFFIXES, lambda p: (m := pattern.match(p.stem)) and m.group("stem"),
                             problems=problems, what="mask", key_word="image stem",
                             bad_name=f"mask name does not follow data.mask_pattern {self.mask_pattern!r}")
        expected = self.mask_pattern.replace("{stem}", "{}")
        pairs, unpaired = pair_by_key(
            images, masks, mask_for=lambda k: f"{mask_dir / expected.format(k)}.<{'|'.join(x[1:] for x in MASK_SUFFIXES)}>",
            image_for=lambda k: f"{image_dir / k}.<{'|'.join(x[1:] for x in IMAGE_SUFFIXES)}>")
        missing += unpaired
        prefix = f"{group}/" if self.split_mode == "folders" else ""
        # the split group: the folder (train/, val/) with split=folders, else each image itself
        return [Item(prefix + k, image, mask, group=group or prefix + k) for k, image, mask in pairs]

    def scan(self) -> Scan:
        problems: list[str] = []
        missing: list[str] = []
        if self.split_mode == "folders":
            items = []
            for part in (self.train_dir, self.val_dir):
                items += self._pair(self.root / part / self.images_dir, self.root / part / self.masks_dir, part, problems, missing)
        else:
            items = self._pair(self.root / self.images_dir, self.root / self.masks_dir, "", problems, missing)
        return Scan(items, problems, missing)

    def has_validation(self) -> bool:
        return self.split_mode != "ratio" or super().has_validation()

    def empty_val_hint(self) -> str:
        if self.split_mode == "folders":
            return f"add images and masks under {self.root / self.val_dir}"
        return (f"raise data.val_fraction (now {self.val_fraction}), or name the validation images: "
                "data.split=list data.val_list=[stem, ...] (or a file listing them)")

    def mask_values(self) -> MaskValues:
        return MaskValues(
            n_labels=label_count(self.num_classes), ignore_index=self.ignore_index,
            scale_255=self.mask_encoding == "binary", palette=self.palette if self.mask_encoding == "rgb" else None,
            binary_hint="binary masks stored as 0 / 255 are read with data.mask_encoding=binary",
        )

    # ------------------------------------------------------------------- split
    def split(self, items: list[Item]) -> tuple[list[int], list[int]]:
        if self.folds and self.split_mode != "ratio":
            raise ValueError(f"data.folds={self.folds} splits the images itself: use it with data.split=ratio, "
                             f"not data.split={self.split_mode}")
        if self.split_mode == "folders":
            return ([n for n, i in enumerate(items) if i.group == self.train_dir],
                    [n for n, i in enumerate(items) if i.group == self.val_dir])
        if self.split_mode == "ratio":
            return super().split(items)
        source = "data.val_list"
        if isinstance(self.val_list, str):
            source = self.val_list
            names = read_name_list(self.val_list)
        else:
            names = [str(n) for n in self.val_list]
        by_name = {i.name: n for n, i in enumerate(items)} | {i.image.name: n for n, i in enumerate(items)}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise ValueError(f"{source}: {len(unknown)} name(s) match no image in {self.root / self.images_dir}, e.g. {unknown[:3]}")
        val = {by_name[n] for n in names}
        return [n for n in range(len(items)) if n not in val], sorted(val)

    # ----------------------------------------------------------------- reports
    def class_report(self) -> list[str]:
        """Pixels per class over every mask (``segkit-prepare dataset=folder check=true``),
        with a warning when the classes found disagree with ``num_classes``."""
        scan = self._scan or self.scan()
        dataset = self.raw_dataset(scan.items)
        n_labels = label_count(self.num_classes)
        counts = np.zeros(n_labels, dtype=np.int64)
        ignored = unreadable = 0
        for index in range(len(dataset)):
            try:
                mask = dataset.load_mask(index)
            except (ValueError, FileNotFoundError):
                unreadable += 1  # listed among the problems
                continue
            if self.ignore_index is not None:
                ignored += int((mask == self.ignore_index).sum())
            counts += count_pixels(mask, n_labels, self.ignore_index)
        names = self.class_names
        total = max(int(counts.sum()), 1)
        lines = [f"classes in {len(dataset)} masks ({self.mask_encoding} encoding):"]
        lines += [f"  {k} {names[k]:<16} {int(c):>14,} px  {100 * c / total:6.2f}%" for k, c in enumerate(counts)]
        if ignored:
            lines.append(f"  ignore_index {self.ignore_index}: {ignored:,} px")
        if unreadable:
            lines.append(f"  ({unreadable} of {len(dataset)} masks could not be read, see the problems below: "
                         "the counts above leave them out)")
        absent = [k for k, c in enumerate(counts) if c == 0]
        if absent and not unreadable:
            lines.append(
                f"warning: data.num_classes={self.num_classes} but class(es) {absent} never occur in the masks — "
                "is num_classes (or the palette) right?"
            )
        return lines
