"""The embedded demo dataset: synthetic "ships at sea" written in the Airbus format.

Images are JPEGs of a textured sea with drifting cloud blobs; ships are bright rotated
rectangles of varied size, some images have none. The files (``train_v2/<ImageId>.jpg``
and ``train_ship_segmentations_v2.csv`` with one column-major RLE row per ship) are written
once per parameter set into the segkit cache and then read by :class:`AirbusDataModule`,
so the demo exercises the real reader end to end. Same seed, same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from datamodules.airbus import AirbusDataModule
from segkit.data.cache import default_cache_dir
from segkit.data.rle import rle_encode

__all__ = ["SyntheticDataModule", "write_synthetic_airbus"]

DONE_MARKER = ".complete"


def _sea(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth sea colour field with fine wave noise, float32 RGB in [0, 255]."""
    base = rng.uniform([10, 40, 50], [40, 90, 110])
    coarse = cv2.resize(rng.normal(0, 1, (6, 6, 3)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    waves = cv2.GaussianBlur(rng.normal(0, 1, (size, size, 3)).astype(np.float32), (0, 0), 1.2)
    sea = base + 10 * coarse + 6 * waves
    n_clouds = rng.integers(0, 3)
    for _ in range(n_clouds):  # soft bright blobs: distractors that are not ships
        cloud = np.zeros((size, size), np.float32)
        centre = tuple(int(c) for c in rng.integers(0, size, 2))
        axes = tuple(int(a) for a in rng.integers(size // 10, size // 4, 2))
        cv2.ellipse(cloud, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
        cloud = cv2.GaussianBlur(cloud, (0, 0), size / 20)
        sea += cloud[..., None] * rng.uniform(40, 90)
    return sea


def _ship_polygon(rng: np.random.Generator, size: int) -> np.ndarray:
    length = rng.uniform(0.08, 0.3) * size
    width = length * rng.uniform(0.2, 0.35)
    centre = rng.uniform(0.1 * size, 0.9 * size, 2)
    angle = rng.uniform(0, np.pi)
    axis = np.array([np.cos(angle), np.sin(angle)])
    normal = np.array([-axis[1], axis[0]])
    corners = [centre + sa * axis * length / 2 + sb * normal * width / 2 for sa, sb in ((1, 1), (1, -1), (-1, -1), (-1, 1))]
    bow = centre + axis * length * 0.62  # a pointed bow, as on real ships
    return np.array([corners[0], bow, corners[1], corners[2], corners[3]], dtype=np.int32)


def write_synthetic_airbus(
    root: str | os.PathLike,
    num_images: int = 320,
    size: int = 128,
    ship_fraction: float = 0.7,
    max_ships: int = 4,
    seed: int = 0,
) -> Path:
    """Write a synthetic dataset in the Airbus layout into ``root`` (atomically) and return it."""
    root = Path(root)
    if (root / DONE_MARKER).exists():
        return root
    tmp = root.with_name(f"{root.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "train_v2").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    rows: list[str] = ["ImageId,EncodedPixels"]
    for i in range(num_images):
        image_id = hashlib.sha1(f"{seed}-{i}".encode()).hexdigest()[:9] + ".jpg"
        image = _sea(rng, size)
        occupied = np.zeros((size, size), np.uint8)
        n_ships = int(rng.integers(1, max_ships + 1)) if rng.random() < ship_fraction else 0
        ship_rles: list[str] = []
        for _ in range(n_ships):
            ship = np.zeros((size, size), np.uint8)
            cv2.fillPoly(ship, [_ship_polygon(rng, size)], 1)
            ship &= 1 - occupied  # ships never overlap, as in the real CSV
            if ship.sum() < 4:
                continue
            occupied |= ship
            colour = rng.uniform([150, 150, 150], [250, 250, 250])
            image[ship.astype(bool)] = colour + rng.normal(0, 8, (int(ship.sum()), 3))
            ship_rles.append(rle_encode(ship, order="F"))
        bgr = np.clip(image, 0, 255).astype(np.uint8)[:, :, ::-1]
        cv2.imwrite(str(tmp / "train_v2" / image_id), bgr, [cv2.IMWRITE_JPEG_QUALITY, 92])
        rows.extend(f"{image_id},{rle}" for rle in ship_rles or [""])
    (tmp / "train_ship_segmentations_v2.csv").write_text("\n".join(rows) + "\n")
    (tmp / DONE_MARKER).write_text("")
    if root.exists():  # an earlier interrupted attempt: replace it
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, root)
    return root


class SyntheticDataModule(AirbusDataModule):
    """The default dataset: synthetic ships in the Airbus format, read by the Airbus reader.

    Args:
        root: where to write the dataset; ``None`` = the segkit cache, keyed by the
            generator parameters.
        num_images, size, ship_fraction, max_ships, generator_seed: generator parameters
            (``size`` is the side of the written JPEGs).
        **kwargs: everything :class:`AirbusDataModule` takes.
    """

    kind = "synthetic"
    defaults = {**AirbusDataModule.defaults, "image_size": 128, "batch_size": 16, "num_workers": 0, "val_fraction": 0.2}

    def __init__(
        self,
        root: str | None = None,
        num_images: int = 320,
        size: int = 128,
        ship_fraction: float = 0.7,
        max_ships: int = 4,
        generator_seed: int = 0,
        background_ratio: float = 0.3,
        val_background_ratio: float = 1.0,
        **kwargs: Any,
    ) -> None:
        self.generator = {
            "num_images": num_images,
            "size": size,
            "ship_fraction": ship_fraction,
            "max_ships": max_ships,
            "seed": generator_seed,
        }
        if root is None:
            root = str(default_cache_dir("synthetic-data", json.dumps(self.generator, sort_keys=True)))
        super().__init__(root=root, background_ratio=background_ratio, val_background_ratio=val_background_ratio, **kwargs)

    def require_root(self) -> Path:
        write_synthetic_airbus(self.root, **self.generator)  # once; later calls return at once
        return super().require_root()
