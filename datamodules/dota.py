"""DOTA v1.0 aerial scenes: oriented-box labels rasterised into a semantic mask, cut into patches.

::

    <root>/images/P0000.png       RGB (a few are grayscale), up to ~4000x4000
    <root>/labelTxt/P0000.txt     optional 'imagesource:...' / 'gsd:...' header lines, then one
                                  'x1 y1 x2 y2 x3 y3 x4 y4 category difficult' line per object

The 15 categories become classes 1..15 (0 = background); smaller objects are drawn over
larger ones. Preparation (``segkit-prepare dataset=dota``, or the first training run)
streams one scene at a time into overlapping ``patch_size`` patches (overlap 200 px, the
last patch flush with the border; scenes smaller than a patch are padded and the padding
labelled ``ignore_index``), writes them as PNG with an ``index.csv``, and training reads
the patches. Patches of one scene never straddle the train/validation split.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segkit.data.datamodule import Item, Scan, SegmentationDataModule
from segkit.data.datasets import ImageMaskDataset
from segkit.data.io import image_size, read_image, temporary_path, write_bytes_atomic, write_json_atomic, write_png_atomic
from segkit.data.normalize import IMAGENET
from segkit.data.pairing import files_by_key, pair_by_key, stem
from segkit.data.rasterize import polygon_area, rasterize_bands, rasterize_polygons
from segkit.data.tiling import axis_starts, pad_patch
from segkit.errors import format_problems

__all__ = ["DOTA_CLASSES", "DotaDataModule", "DotaObject", "parse_dota_labels", "rasterize_dota", "read_dota_labels"]

DOTA_CLASSES = (
    "background", "plane", "ship", "storage-tank", "baseball-diamond", "tennis-court", "basketball-court",
    "ground-track-field", "harbor", "bridge", "large-vehicle", "small-vehicle", "helicopter", "roundabout",
    "soccer-ball-field", "swimming-pool",
)
CLASS_INDEX = {name: i for i, name in enumerate(DOTA_CLASSES) if i > 0}
HEADERS = ("imagesource:", "gsd:")
IMAGE_SUFFIXES = (".png", ".jpg", ".tif")


@dataclass(frozen=True)
class DotaObject:
    polygon: np.ndarray  # (4, 2) float (x, y)
    category: str
    difficult: bool
    line: int


def parse_dota_labels(path: str | os.PathLike) -> tuple[list[DotaObject], list[str]]:
    """Objects of a ``labelTxt`` file and every problem found (``file:line: what``)."""
    path = Path(path)
    objects: list[DotaObject] = []
    problems: list[str] = []
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Windows editors) is not part of the text
    except (OSError, UnicodeDecodeError) as err:
        return [], [f"{path}: cannot read label file ({err})"]
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(HEADERS):
            continue
        tokens = line.split()
        where = f"{path}:{number}"
        if len(tokens) not in (9, 10):
            problems.append(
                f"{where}: expected 'x1 y1 x2 y2 x3 y3 x4 y4 category difficult', got {len(tokens)} fields: {line[:80]!r}"
            )
            continue
        try:
            coords = np.array([float(t) for t in tokens[:8]], dtype=np.float64).reshape(4, 2)
        except ValueError:
            problems.append(f"{where}: coordinates are not numbers: {' '.join(tokens[:8])!r}")
            continue
        category = tokens[8]
        if category not in CLASS_INDEX:
            problems.append(f"{where}: unknown category {category!r} (DOTA v1.0: {', '.join(CLASS_INDEX)})")
            continue
        difficult = tokens[9] if len(tokens) == 10 else "0"
        if difficult not in ("0", "1"):
            problems.append(f"{where}: difficult must be 0 or 1, got {difficult!r}")
            continue
        objects.append(DotaObject(coords, category, difficult == "1", number))
    return objects, problems


def read_dota_labels(path: str | os.PathLike) -> list[DotaObject]:
    """The objects of a ``labelTxt`` file; ``ValueError`` listing every problem of the file."""
    objects, problems = parse_dota_labels(path)
    if problems:
        raise ValueError(format_problems(problems, f"{len(problems)} problem(s) in {path}:"))
    return objects


def rasterize_dota(
    objects: list[DotaObject], shape: tuple[int, int], source: str | os.PathLike, skip_difficult: bool = False
) -> np.ndarray:
    """A ``uint8`` class mask of ``shape`` (0 = background, 1..15 = categories).

    Polygons reaching outside the image are clipped (with a warning naming file and line);
    degenerate ones (no area) are skipped with a warning.
    """
    return rasterize_polygons(*dota_polygons(objects, shape, source, skip_difficult), shape)


def dota_polygons(
    objects: list[DotaObject], shape: tuple[int, int], source: str | os.PathLike, skip_difficult: bool = False
) -> tuple[list[np.ndarray], list[int]]:
    """The polygons and class indices :func:`rasterize_dota` draws (warnings as it gives them)."""
    height, width = shape
    polygons, labels = [], []
    for obj in objects:
        if skip_difficult and obj.difficult:
            continue
        if polygon_area(obj.polygon) <= 0:
            warnings.warn(f"{source}:{obj.line}: degenerate polygon (no area), skipped", stacklevel=2)
            continue
        xs, ys = obj.polygon[:, 0], obj.polygon[:, 1]
        if xs.min() < 0 or ys.min() < 0 or xs.max() > width or ys.max() > height:
            warnings.warn(f"{source}:{obj.line}: polygon reaches outside the {width}x{height} image; clipped", stacklevel=2)
        polygons.append(obj.polygon)
        labels.append(CLASS_INDEX[obj.category])
    return polygons, labels


class DotaDataModule(SegmentationDataModule):
    """DOTA v1.0 semantic segmentation on prepared patches, 16 classes.

    Args:
        root: folder holding ``images_dir`` and ``labels_dir``.
        patch_size: side of the square patches (1024).
        overlap: pixels shared by neighbouring patches (200).
        skip_difficult: leave objects marked difficult out of the masks.
        ignore_index: label of the padding of patches that stick out of small scenes (255).
        **kwargs: everything :class:`SegmentationDataModule` takes.
    """

    imagery = "overhead"  # satellite / aerial scenes: no up or down

    kind = "dota"
    group_name = "scene"  # overlapping patches of a scene never straddle the split
    image_dtype = "uint8"
    default_class_names = DOTA_CLASSES
    defaults = {
        "num_classes": len(DOTA_CLASSES), "ignore_index": 255, "val_fraction": 0.1, "batch_size": 4, "normalize": IMAGENET,
        "augment": {
            "rotate90": {"type": "RandomRotate90", "p": 0.5},
            "hflip": {"type": "HorizontalFlip", "p": 0.5},
            "vflip": {"type": "VerticalFlip", "p": 0.5},
            "color": {"type": "ColorJitter", "brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.02, "p": 0.5},
        },
    }

    def __init__(
        self,
        root: str | None = None,
        images_dir: str = "images",
        labels_dir: str = "labelTxt",
        patch_size: int = 1024,
        overlap: int = 200,
        skip_difficult: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, **kwargs)
        if self.num_classes != len(DOTA_CLASSES):
            raise ValueError(f"DOTA v1.0 has {len(DOTA_CLASSES)} classes (background + 15), got num_classes={self.num_classes}")
        if self.ignore_index is not None and self.ignore_index < self.num_classes:
            raise ValueError(f"ignore_index {self.ignore_index} collides with a class (0..{self.num_classes - 1})")
        self.images_dir = images_dir
        self.labels_dir = labels_dir
        self.patch_size = patch_size
        self.overlap = overlap
        self.skip_difficult = skip_difficult

    def layout_help(self) -> str:
        return f"expected {self.images_dir}/<name>.png and {self.labels_dir}/<name>.txt"

    @property
    def patch_dir(self) -> Path:
        return self.work_dir / f"patches-{self.patch_size}-{self.overlap}{'-nodifficult' if self.skip_difficult else ''}"

    # ----------------------------------------------------------------- sources
    def sources(self) -> tuple[list[tuple[str, Path, Path]], list[str]]:
        """``(name, image, label)`` of every scene, and every unpaired file (hidden files left out);
        raises when two images or two label files name one scene."""
        image_dir, label_dir = self.root / self.images_dir, self.root / self.labels_dir
        self.require_paths(image_dir, label_dir)
        problems: list[str] = []
        images = files_by_key(image_dir, IMAGE_SUFFIXES, stem, problems=problems, what="image", key_word="stem")
        labels = files_by_key(label_dir, (".txt",), stem, problems=problems, what="label file", key_word="stem")
        pairs, unpaired = pair_by_key(images, labels, mask_word="label file", mask_for=lambda n: label_dir / f"{n}.txt",
                                      image_for=lambda n: f"in {image_dir} (only part of the images downloaded?)")
        if problems:  # two files for one scene: refused whatever data.missing says
            raise ValueError(format_problems(problems, f"{len(problems)} problem(s) in dota data at {self.root}:"))
        return pairs, unpaired

    def _source_fingerprint(self, pairs: list[tuple[str, Path, Path]]) -> str:
        sha = hashlib.sha1(f"{self.patch_size}|{self.overlap}|{self.skip_difficult}|{self.ignore_index}".encode())
        for _, image, label in pairs:
            for path in (image, label):
                stat = os.stat(path)
                sha.update(f"{path.name}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        return sha.hexdigest()

    # ------------------------------------------------------------- preparation
    def prepare_dataset(self) -> list[str]:
        """Cut every scene into patches, streaming one scene at a time; idempotent."""
        self.require_root()
        pairs, unpaired = self.sources()
        self.handle_missing(unpaired, len(pairs))
        if not pairs:
            raise ValueError(f"no DOTA scenes found at {self.root} ({self.layout_help()})")
        fingerprint = self._source_fingerprint(pairs)
        manifest_path = self.patch_dir / "manifest.json"
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
        if manifest.get("fingerprint") == fingerprint and manifest.get("complete"):
            return [f"patches up to date: {manifest['patches']} patches of {manifest['scenes']} scenes in {self.patch_dir}"]
        scene_dir = self.patch_dir / "scenes"  # one index fragment per finished scene
        resumed = 0
        if manifest.get("fingerprint") == fingerprint:  # an interrupted cut of the same data: continue it
            resumed = sum(1 for name, _, _ in pairs if (scene_dir / f"{name}.csv").is_file())
        else:  # other data or settings: start again
            shutil.rmtree(self.patch_dir, ignore_errors=True)
        for folder in ("images", "masks", "scenes"):
            (self.patch_dir / folder).mkdir(parents=True, exist_ok=True)
        write_json_atomic(manifest_path, {"fingerprint": fingerprint, "complete": False})
        from tqdm.auto import tqdm

        for name, image_path, label_path in tqdm(pairs, desc="cutting DOTA scenes", unit="scene"):
            fragment = scene_dir / f"{name}.csv"
            if fragment.is_file():
                continue  # cut before the interruption: its patches were all in place before this was written
            rows = io.StringIO()
            writer = csv.writer(rows)
            for patch_name, y, x in self._cut_scene(name, image_path, label_path):
                writer.writerow([patch_name, name, y, x])
            write_bytes_atomic(fragment, rows.getvalue().encode())
        index_tmp = temporary_path(self.patch_dir / "index.csv")
        count = 0
        with index_tmp.open("w", newline="") as handle:
            handle.write("patch,source,y,x\r\n")
            for name, _, _ in pairs:
                text = (scene_dir / f"{name}.csv").read_text()
                count += text.count("\n")
                handle.write(text)
        os.replace(index_tmp, self.patch_dir / "index.csv")
        write_json_atomic(manifest_path, {"fingerprint": fingerprint, "complete": True, "patches": count, "scenes": len(pairs),
                                          "patch_size": self.patch_size, "overlap": self.overlap})
        done = f"cut {len(pairs)} scenes into {count} patches of {self.patch_size} px in {self.patch_dir}"
        return [done + (f" (continued an interrupted cut: {resumed} scenes were already done)" if resumed else "")]

    def _cut_scene(self, name: str, image_path: Path, label_path: Path):
        """Patches of one scene, a band of patch rows at a time: the class mask is drawn per
        band (:func:`rasterize_bands`, equal to the whole scene's mask), so the peak memory is
        the decoded scene plus one band, not plus a whole-scene mask."""
        objects = read_dota_labels(label_path)
        image = self.image_spec().conform(read_image(image_path, self.max_image_pixels), image_path)
        height, width = image.shape[:2]
        polygons, labels = dota_polygons(objects, (height, width), label_path, self.skip_difficult)
        pad_label = self.ignore_index if self.ignore_index is not None else 0
        rows = axis_starts(height, self.patch_size, self.overlap)
        bands = rasterize_bands(polygons, labels, height, width, ((y, min(height, y + self.patch_size)) for y in rows))
        for y, band in zip(rows, bands):
            for x in axis_starts(width, self.patch_size, self.overlap):
                image_patch, mask_patch = pad_patch(image[y : y + self.patch_size, x : x + self.patch_size],
                                                    band[:, x : x + self.patch_size], self.patch_size, 0, pad_label)
                yield self._write_patch(name, y, x, image_patch, mask_patch)

    def _write_patch(self, name: str, y: int, x: int, image_patch: np.ndarray, mask_patch: np.ndarray) -> tuple[str, int, int]:
        patch_name = f"{name}__{y}_{x}"
        write_png_atomic(self.patch_dir / "images" / f"{patch_name}.png", np.ascontiguousarray(image_patch[:, :, ::-1]))
        write_png_atomic(self.patch_dir / "masks" / f"{patch_name}.png", mask_patch)
        return patch_name, y, x

    # ------------------------------------------------------------------ items
    def scan(self) -> Scan:
        index = self.patch_dir / "index.csv"
        if not index.is_file():
            raise FileNotFoundError(
                f"{index} does not exist: the DOTA scenes have not been cut into patches yet; run "
                "`segkit-prepare dataset=dota data.root=...` (training does it too, in prepare_data)"
            )
        items = []
        with index.open(newline="") as handle:
            for row in csv.DictReader(handle):
                patch = row["patch"]
                items.append(Item(patch, self.patch_dir / "images" / f"{patch}.png", self.patch_dir / "masks" / f"{patch}.png",
                                  group=row["source"]))
        return Scan(items)

    def check(self) -> list[str]:
        """Pairing, every label line, every image header and its polygons — without cutting patches."""
        try:
            self.require_root()
            pairs, unpaired = self.sources()
        except (ValueError, FileNotFoundError) as err:
            return [str(err)]
        self.checked_missing = list(unpaired)
        problems = list(unpaired) if self.missing == "error" else []
        from tqdm.auto import tqdm

        for _, image_path, label_path in tqdm(pairs, desc="checking dota", unit="scene"):
            problems += parse_dota_labels(label_path)[1]
            try:
                image_size(image_path, self.max_image_pixels)
            except (ValueError, FileNotFoundError) as err:
                problems.append(str(err))
        return problems

    # -------------------------------------------------------------- evaluation
    def evaluation_dataset(self, items: list[Item]) -> ImageMaskDataset:
        """The source scenes of these patches, one item each, in the order they first appear:
        the whole scene at its own resolution (channels conformed by the dataset's policy, so
        grayscale scenes come back RGB) and its labels rasterised at that size. ``segkit-eval``
        thus scores every pixel of a scene once, not the overlapping patches."""
        pairs, _ = self.sources()
        files = {name: (image, label) for name, image, label in pairs}
        scenes = list(dict.fromkeys(item.group for item in items))
        missing = [scene for scene in scenes if scene not in files]
        if missing:
            raise FileNotFoundError(
                f"DOTA scene(s) {', '.join(missing[:5])} of the prepared patches are no longer in {self.root} "
                f"({self.layout_help()}): run segkit-prepare dataset=dota again"
            )
        labels = {scene: files[scene][1] for scene in scenes}
        return ImageMaskDataset(
            scenes, [files[scene][0] for scene in scenes], [labels[scene] for scene in scenes],
            transform=None, image_spec=self.image_spec(), mask_values=self.mask_values(),
            mask_decoder=functools.partial(DotaDataModule._scene_mask, labels, self.skip_difficult),
        )

    @staticmethod
    def _scene_mask(labels: dict[str, Path], skip_difficult: bool, name: str, shape: tuple[int, int]) -> np.ndarray:
        """Scene ``name``'s class mask of ``shape``, rasterised from its label file."""
        return rasterize_dota(read_dota_labels(labels[name]), shape, labels[name], skip_difficult)
