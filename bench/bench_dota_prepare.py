"""DOTA preparation: patches/s and peak RSS while cutting one 4000x4000 scene.

A synthetic scene in the DOTA v1.0 layout (``images/P9999.png`` 4000x4000 RGB, textured,
and ``labelTxt/P9999.txt`` with 400 oriented boxes of the 15 categories) is cut into
1024 px patches overlapping by 200 px (25 patches) by ``DotaDataModule.prepare_dataset``
(label parsing with validation, area-ordered rasterisation, streaming patch writes,
index and manifest). Baseline: a bare script doing the same work with OpenCV —
``cv2.imread``, ``cv2.fillPoly`` of every box, ``cv2.imwrite`` of every image and mask
patch. Each side runs in a fresh process so its peak RSS is its own.

    python -m bench.bench_dota_prepare [--size 4000] [--objects 400]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from bench.common import ROOT, Report, peak_rss_mb

CATEGORIES = ["plane", "ship", "storage-tank", "baseball-diamond", "tennis-court", "basketball-court",
              "ground-track-field", "harbor", "bridge", "large-vehicle", "small-vehicle", "helicopter",
              "roundabout", "soccer-ball-field", "swimming-pool"]


def write_scene(root: Path, size: int, objects: int) -> None:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "labelTxt").mkdir()
    small = rng.integers(0, 256, size=(size // 16, size // 16, 3), dtype=np.uint8)
    image = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
    image = cv2.add(image, rng.integers(0, 24, size=image.shape, dtype=np.uint8))
    cv2.imwrite(str(root / "images" / "P9999.png"), image)
    lines = ["imagesource:GoogleEarth", "gsd:0.146"]
    for _ in range(objects):
        cx, cy = rng.uniform(50, size - 50, 2)
        w, h, angle = rng.uniform(10, 120), rng.uniform(10, 60), rng.uniform(0, np.pi)
        box = cv2.boxPoints(((cx, cy), (w, h), np.degrees(angle)))
        coords = " ".join(f"{v:.1f}" for v in box.reshape(-1))
        lines.append(f"{coords} {CATEGORIES[rng.integers(0, 15)]} {int(rng.integers(0, 2))}")
    (root / "labelTxt" / "P9999.txt").write_text("\n".join(lines) + "\n")


def ours(root: Path, out: Path) -> int:
    from datamodules.dota import DotaDataModule

    datamodule = DotaDataModule(root=str(root), cache_dir=str(out), num_workers=0)
    datamodule.prepare_dataset()
    return json.loads((datamodule.patch_dir / "manifest.json").read_text())["patches"]


def bare(root: Path, out: Path, patch: int = 1024, overlap: int = 200) -> int:
    from segkit.data.tiling import patch_grid

    image = cv2.imread(str(root / "images" / "P9999.png"), cv2.IMREAD_COLOR)
    mask = np.zeros(image.shape[:2], np.uint8)
    for line in (root / "labelTxt" / "P9999.txt").read_text().splitlines()[2:]:
        parts = line.split()
        polygon = np.array(parts[:8], dtype=np.float32).reshape(4, 2).round().astype(np.int32)
        cv2.fillPoly(mask, [polygon], CATEGORIES.index(parts[8]) + 1)
    out.mkdir(parents=True, exist_ok=True)
    count = 0
    for y, x in patch_grid(*mask.shape, patch, overlap):
        cv2.imwrite(str(out / f"{y}_{x}.png"), image[y : y + patch, x : x + patch])
        cv2.imwrite(str(out / f"{y}_{x}_mask.png"), mask[y : y + patch, x : x + patch])
        count += 1
    return count


def child(mode: str, root: Path, out: Path) -> dict:
    import datamodules.dota  # noqa: F401  (both sides pay the imports of torch and Lightning before the clock)

    setup = peak_rss_mb()
    started = time.perf_counter()
    patches = ours(root, out) if mode == "ours" else bare(root, out)
    return {"patches": patches, "seconds": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb(), "setup_rss_mb": setup}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=4000)
    parser.add_argument("--objects", type=int, default=400)
    parser.add_argument("--child", default=None)
    parser.add_argument("--root", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, Path(args.root), Path(args.out))))
        return
    report = Report("DOTA preparation (bench/bench_dota_prepare.py)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "dota"
        write_scene(root, args.size, args.objects)
        results = {}
        for mode in ("bare", "ours"):
            command = [sys.executable, "-m", "bench.bench_dota_prepare", "--child", mode, "--root", str(root),
                       "--out", str(Path(tmp) / mode)]
            out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=True).stdout
            results[mode] = json.loads(out.strip().splitlines()[-1])
    o, b = results["ours"], results["bare"]
    image_mb = args.size * args.size * 3 / 2**20
    report.line(f"one {args.size}x{args.size} scene, {args.objects} objects -> {o['patches']} patches of 1024 px (overlap 200)")
    report.compare("cutting patches vs a bare OpenCV script", o["patches"] / o["seconds"], b["patches"] / b["seconds"], "patches/s")
    extra, extra_bare = o["peak_rss_mb"] - o["setup_rss_mb"], b["peak_rss_mb"] - b["setup_rss_mb"]
    report.line(f"peak RSS above the process's start: ours {extra:.0f} MiB = {extra / image_mb:.2f}x the decoded image "
                f"({image_mb:.0f} MiB; target <= 3x), bare script {extra_bare:.0f} MiB = {extra_bare / image_mb:.2f}x")
    report.save()


if __name__ == "__main__":
    main()
