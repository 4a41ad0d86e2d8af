"""SAR oil-seep segmentation: 16-bit single-channel TIFF images, 8-bit class masks.

::

    <root>/<images_dir>/<name>.tif   256x256 uint16 (I;16)
    <root>/<masks_dir>/<name>.tif    256x256 uint8, 0 = background, 1..7 = seep classes

As distributed the folders are ``train_images_256`` and ``train_masks_256``; images and
masks pair by file name. Masks are very sparse (~2% of pixels are seeps).
The split keeps each scene on one side: a name's part before its first dot
(``041869`` of ``041869.000043.tif``) names the SAR scene, whose tiles are neighbours
and would leak across a tile-by-tile split.
Normalisation: a fixed range (``normalize.max_pixel_value: 65535``), per-image min-max
(``normalize.normalization: min_max``), or the training split's mean/std, which
``segkit-prepare`` computes (``normalize.mean: dataset``, ``normalize.std: dataset``).
"""

from __future__ import annotations

from typing import Any

from segkit.data.datamodule import Item, Scan, SegmentationDataModule
from segkit.data.pairing import files_by_key, pair_by_key

__all__ = ["OilSeepDataModule"]

TIFF = (".tif", ".tiff")


class OilSeepDataModule(SegmentationDataModule):
    """SAR oil seeps, 8 classes (background + 7 seep classes) from 16-bit images.

    Args:
        root: folder holding ``images_dir`` and ``masks_dir``.
        images_dir, masks_dir: folders below ``root`` (as distributed: train_images_256 /
            train_masks_256).
        **kwargs: everything :class:`SegmentationDataModule` takes.
    """

    imagery = "overhead"  # satellite / aerial scenes: no up or down

    kind = "oilseep"
    group_name = "scene"
    image_dtype = "uint16"
    default_class_names = ("background", "seep1", "seep2", "seep3", "seep4", "seep5", "seep6", "seep7")
    defaults = {
        "num_classes": 8, "in_channels": 1, "batch_size": 16,
        "normalize": {"mean": [0.0], "std": [1.0], "max_pixel_value": 65535.0},  # the fixed range x / 65535
        # only 180 degree rotation and horizontal flip, as the oil-seep project: random h and v
        # flips at p=0.5 give exactly that group {id, hflip, 180 = h+v, vflip = 180 + hflip}
        "augment": {"hflip": {"type": "HorizontalFlip", "p": 0.5}, "vflip": {"type": "VerticalFlip", "p": 0.5}},
    }
    prepares_image_stats = True  # segkit-prepare always writes the training split's mean/std

    def __init__(self, root: str | None = None, images_dir: str = "train_images_256",
                 masks_dir: str = "train_masks_256", **kwargs: Any) -> None:
        super().__init__(root=root, **kwargs)
        self.images_dir = images_dir
        self.masks_dir = masks_dir

    def layout_help(self) -> str:
        return f"expected {self.images_dir}/<name>.tif (uint16) and {self.masks_dir}/<name>.tif (uint8, 0..7)"

    def scan(self) -> Scan:
        image_dir, mask_dir = self.root / self.images_dir, self.root / self.masks_dir
        self.require_paths(image_dir, mask_dir)
        problems: list[str] = []
        images, masks = (files_by_key(folder, TIFF, problems=problems) for folder in (image_dir, mask_dir))
        pairs, missing = pair_by_key(images, masks, mask_for=lambda n: mask_dir / n, image_for=lambda n: image_dir / n)
        return Scan([Item(n, image, mask, group=n.split(".")[0]) for n, image, mask in pairs], problems, missing)
