"""Building footprints from aerial images (Massachusetts-style 256x256 TIFF tiles).

::

    <root>/train/images/img_N.tif     256x256 RGB uint8 (LZW-compressed in some sources)
    <root>/train/masks/mask_N.tif     256x256 uint8, {0, 255} (some sources store {0, 1})
    <root>/test/test_image_N.tif      images to predict

Images and masks pair by what follows the prefixes (``img_`` / ``mask_``; empty prefixes
pair identical names). The validation split is a JSON list of image names
(``split_file``); without one, ``segkit-prepare`` writes a deterministic one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from segkit.data.datamodule import Item, Scan, SegmentationDataModule
from segkit.data.datasets import MaskValues
from segkit.data.io import list_files, write_json_atomic
from segkit.data.normalize import IMAGENET
from segkit.data.pairing import files_by_key, pair_by_key
from segkit.data.splits import group_split, read_name_list

TIFF = (".tif", ".tiff")

__all__ = ["BuildingsDataModule"]

SPLIT_FILE = "split.json"


class BuildingsDataModule(SegmentationDataModule):
    """Binary building masks; masks {0, 255} or {0, 1} both read as {0, 1}.

    Args:
        root: the dataset folder.
        images_dir, masks_dir: folders below ``root``.
        image_prefix, mask_prefix: file-name prefixes that are not part of the pairing key.
        test_dir, test_prefix: where the images to predict are.
        split_file: JSON list of validation image names (stems or file names); ``None`` =
            the one ``segkit-prepare`` wrote, else a deterministic ``val_fraction`` split.
        **kwargs: everything :class:`SegmentationDataModule` takes.
    """

    imagery = "overhead"  # satellite / aerial scenes: no up or down

    kind = "buildings"
    image_dtype = "uint8"
    default_class_names = ("background", "building")

    binary_masks = "building/background"
    defaults = {
        "batch_size": 16, "normalize": IMAGENET,
        "augment": {"hflip": {"type": "HorizontalFlip", "p": 0.5}, "vflip": {"type": "VerticalFlip", "p": 0.5},
                    "rotate90": {"type": "RandomRotate90", "p": 0.5}},
    }

    def __init__(
        self,
        root: str | None = None,
        images_dir: str = "train/images",
        masks_dir: str = "train/masks",
        image_prefix: str = "img_",
        mask_prefix: str = "mask_",
        test_dir: str = "test",
        test_prefix: str = "test_image_",
        split_file: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, **kwargs)
        self.images_dir = images_dir
        self.masks_dir = masks_dir
        self.image_prefix = image_prefix
        self.mask_prefix = mask_prefix
        self.test_dir = test_dir
        self.test_prefix = test_prefix
        self.split_file = split_file

    def layout_help(self) -> str:
        return (
            f"expected {self.images_dir}/{self.image_prefix}N.tif and {self.masks_dir}/{self.mask_prefix}N.tif "
            f"(and {self.test_dir}/{self.test_prefix}N.tif to predict)"
        )

    @staticmethod
    def _after(prefix: str):
        """The key of ``<prefix>N.tif``: ``N``; ``None`` for a name without the prefix."""
        return lambda path: path.stem[len(prefix):] if path.stem.startswith(prefix) else None

    def scan(self) -> Scan:
        image_dir, mask_dir = self.root / self.images_dir, self.root / self.masks_dir
        self.require_paths(image_dir, mask_dir)
        problems: list[str] = []
        images, masks = (
            files_by_key(folder, TIFF, self._after(prefix), problems=problems,
                         bad_name=f"file name does not start with {prefix!r}", what=what)
            for folder, prefix, what in ((image_dir, self.image_prefix, "image"), (mask_dir, self.mask_prefix, "mask"))
        )
        pairs, missing = pair_by_key(images, masks, mask_for=lambda k: mask_dir / f"{self.mask_prefix}{k}.tif",
                                     image_for=lambda k: image_dir / f"{self.image_prefix}{k}.tif")
        return Scan([Item(image.stem, image, mask, group=image.stem) for _, image, mask in pairs], problems, missing)

    def mask_values(self) -> MaskValues:
        return MaskValues(n_labels=2, ignore_index=self.ignore_index, scale_255=True)

    @property
    def test_images(self) -> list[Path]:
        """The images of ``test_dir`` (for prediction)."""
        return [p for p in list_files(self.root / self.test_dir, TIFF) if p.name.startswith(self.test_prefix)]

    # ------------------------------------------------------------------ split
    @property
    def prepared_split(self) -> Path:
        return self.work_dir / SPLIT_FILE

    def _default_val_names(self, items: list[Item]) -> list[str]:
        _, val = group_split([i.name for i in items], [i.group for i in items], self.val_fraction, self.seed)
        return [items[i].name for i in val]

    def split(self, items: list[Item]) -> tuple[list[int], list[int]]:
        if self.folds:
            if self.split_file:
                raise ValueError(f"data.split_file={self.split_file} and data.folds={self.folds} both choose the "
                                 "validation images: set one of them (data.split_file=null for folds)")
            return super().split(items)
        source = Path(self.split_file) if self.split_file else self.prepared_split
        if source.is_file():
            val_names = read_name_list(source)
            by_name = {i.name: n for n, i in enumerate(items)} | {i.image.name: n for n, i in enumerate(items)}
            unknown = [n for n in val_names if n not in by_name]
            if unknown:
                raise ValueError(f"{source}: {len(unknown)} name(s) match no training image, e.g. {unknown[:3]}")
            val = sorted({by_name[n] for n in val_names})
        elif self.split_file:
            raise FileNotFoundError(f"data.split_file {source} does not exist (a JSON list of validation image names)")
        else:
            val_set = set(self._default_val_names(items))
            val = [n for n, i in enumerate(items) if i.name in val_set]
        chosen = set(val)
        return [n for n in range(len(items)) if n not in chosen], val

    def has_validation(self) -> bool:
        return bool(self.split_file) or self.prepared_split.is_file() or super().has_validation()

    def prepare_dataset(self) -> list[str]:
        if self.folds:
            return [f"validation: fold {self.fold} of {self.folds}"]
        if self.split_file:
            return [f"validation split from {self.split_file}"]
        if self.prepared_split.is_file():
            return [f"validation split {self.prepared_split} exists"]
        names = self._default_val_names(self.items())
        write_json_atomic(self.prepared_split, names)
        return [f"wrote a deterministic validation split of {len(names)} images to {self.prepared_split}"]

