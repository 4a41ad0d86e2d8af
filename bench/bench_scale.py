"""Cost per item against dataset size: does setup, preparation and loading stay linear, and
does memory stay bounded, from a thousand images to the full download?

For each dataset and size N, a fresh child process (its own peak memory) builds the
datamodule as ``segkit-train`` does and times, per stage:

- ``list``: reading the index (Airbus CSV) and listing the files (``dm.items()``; the best
  of 3), beside the bare listing of the same folders (``os.listdir``, a ``Path`` per file, a
  dict by stem), whose cost per item grows with N as well;
- ``prepare``: ``dm.prepare_data()`` (Airbus: the mask cache, where one is built);
- ``setup``: the split, the samplers and the datasets (``dm.setup()``);
- ``first batch``: the first training batch through loader workers;
- loading: images per second over ``--batches`` training batches, in each of 3 epochs
  (persistent workers, as training runs them).

Memory: the main process's peak (``VmHWM``) after setup, and each loader worker's private
memory (``Private_Clean + Private_Dirty`` of ``/proc/<pid>/smaps_rollup``: the pages it
copied from the parent, the copy-on-write growth that per-item Python objects cause) after
each epoch's batches. The work folder's size on disk is the cache.

Data, generated once into ``~/.cache/segkit-bench/scale`` (``SEGKIT_BENCH_DATA``) and reused:

- ``airbus``: the real layout and proportions (22.1% of the images with ships, 1.92 ship
  rows per ship image, as in the 192,556-image ``train_v2``), RLE rows of real ship shapes
  (a pool encoded once, shifted per image), and 768x768 JPEGs: eight distinct real-content
  files, every image a hard link to one of them (real headers and decode, no disk per image);
- ``carvana``: the real layout at 1008 images and the full 5,088 (16 views per car,
  ``train/<car>_<view>.jpg``, ``train_masks/<car>_<view>_mask.gif`` and ``train_masks.csv``),
  1918x1280 JPEGs and GIF masks, hard links to four distinct files likewise;
- ``folder``: 256x256 PNG tiles and masks, hard links likewise;
- ``dota``: one scene of 10,000² and one of 20,000² px (N is the side) with 3,000 oriented
  boxes, cut into 1024 px patches: the peak memory the cut adds, against the decoded scene;
- ``predict``: ``segkit-predict`` of a small checkpoint over the folder layout's N tiles:
  time per image and the peak memory it adds, at 1,000 and 10,000 images.

The baseline of every ratio is the same measurement at the smallest N: cost per item at N
over cost per item at the smallest (1.00 = linear), worker memory after epoch 3 over after
epoch 1.

    python -m bench.bench_scale [--quick] [--datasets airbus folder] [--sizes 1000 10000 ...]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import ROOT, Report, peak_rss_mb

AIRBUS_FULL = 192_556
SHIP_SHARE = 42_556 / AIRBUS_FULL
ROWS_PER_SHIP_IMAGE = (231_723 - (AIRBUS_FULL - 42_556)) / 42_556  # 1.92
CARVANA_FULL = 5_088  # 318 cars x 16 views
SIZES = {"airbus": [1_000, 10_000, 100_000, AIRBUS_FULL], "carvana": [1_008, CARVANA_FULL],
         "folder": [1_000, 10_000, 100_000], "dota": [10_000, 20_000], "predict": [1_000, 10_000]}
QUICK_SIZES = {"airbus": [200, 2_000], "carvana": [160, 480], "folder": [200, 2_000], "dota": [1_200], "predict": [20, 100]}
DATA = Path(os.environ.get("SEGKIT_BENCH_DATA") or Path.home() / ".cache" / "segkit-bench" / "scale")


# ----------------------------------------------------------------- generated layouts
def _generated_once(name: str):
    """A layout writer ``write(root, n)`` made into ``layout(n) -> root``: written once into
    ``DATA/<name>-<n>`` (a partial earlier attempt removed first), marked done, then reused."""

    def wrap(write):
        @functools.wraps(write)
        def layout(n: int) -> Path:
            root = DATA / f"{name}-{n}"
            if not (root / ".done").exists():
                shutil.rmtree(root, ignore_errors=True)
                write(root, n)
                (root / ".done").write_text("")
            return root

        return layout

    return wrap


def _distinct_jpegs(directory: Path, size: int, count: int = 8) -> list[Path]:
    import cv2

    from datamodules.synthetic import _sea

    rng = np.random.default_rng(0)
    paths = []
    for k in range(count):
        path = directory / f"_source{k}.jpg"
        if not path.exists():
            cv2.imwrite(str(path), np.clip(_sea(rng, size), 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 92])
        paths.append(path)
    return paths


def _ship_pool(count: int = 400, size: int = 768) -> list[tuple[np.ndarray, int, int]]:
    """Real-looking ships: (runs as a flat F-order start/length array, first and last column)."""
    import cv2

    from datamodules.synthetic import _ship_polygon
    from segkit.data.rle import rle_encode

    rng = np.random.default_rng(1)
    pool = []
    while len(pool) < count:
        mask = np.zeros((size, size), np.uint8)
        cv2.fillPoly(mask, [_ship_polygon(rng, size) // 4 + size // 3], 1)  # ships of 5-60 px, as in Airbus
        if mask.sum() < 6:
            continue
        columns = np.flatnonzero(mask.any(axis=0))
        runs = np.array(rle_encode(mask, order="F").split(), dtype=np.int64)
        pool.append((runs, int(columns[0]), int(columns[-1])))
    return pool


@_generated_once("airbus")
def airbus_layout(root: Path, n: int) -> None:
    images = root / "train_v2"
    images.mkdir(parents=True)
    sources = _distinct_jpegs(root, 768)
    pool = _ship_pool()
    rng = np.random.default_rng(n)
    rows = ["ImageId,EncodedPixels"]
    for i in range(n):
        image_id = f"{i:09x}.jpg"
        os.link(sources[i % len(sources)], images / image_id)
        if rng.random() >= SHIP_SHARE:
            rows.append(f"{image_id},")
            continue
        ships = 1 + rng.poisson(ROWS_PER_SHIP_IMAGE - 1)
        for s in rng.choice(len(pool), size=ships, replace=False):
            runs, first_column, last_column = pool[s]
            shift = int(rng.integers(-first_column, 768 - last_column)) * 768  # whole columns: stays in the image
            runs = runs.copy()
            runs[0::2] += shift
            rows.append(f"{image_id},{' '.join(map(str, runs))}")
    (root / "train_ship_segmentations_v2.csv").write_text("\n".join(rows) + "\n")


@_generated_once("carvana")
def carvana_layout(root: Path, n: int) -> None:
    """``n`` images (a multiple of 16 views per car) in the Carvana download's layout."""
    import cv2
    from PIL import Image

    from segkit.data.rle import rle_encode

    (root / "train").mkdir(parents=True)
    (root / "train_masks").mkdir()
    rng = np.random.default_rng(3)
    sources, rows = [], ["img,rle_mask"]
    height, width = 1280, 1918
    for k in range(4):  # a studio background and a car-shaped ellipse, as the real photos
        image = np.full((height, width, 3), 235, np.uint8) + rng.integers(0, 12, (height, width, 3), dtype=np.uint8)
        mask = np.zeros((height, width), np.uint8)
        cv2.ellipse(mask, (width // 2 + 40 * k, height // 2), (700 - 30 * k, 330), 0, 0, 360, 1, -1)
        image[mask > 0] = rng.integers(20, 200, 3, dtype=np.uint8)
        jpeg, gif = root / f"_car{k}.jpg", root / f"_car{k}_mask.gif"
        cv2.imwrite(str(jpeg), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        gif_image = Image.fromarray(mask, mode="P")  # index 0 black, 1 white: as Kaggle ships them
        gif_image.putpalette([0, 0, 0, 255, 255, 255] + [0, 0, 0] * 254)
        gif_image.save(gif)
        sources.append((jpeg, gif, rle_encode(mask, order="C")))  # the CSV's runs are row-major
    for i in range(n):
        name = f"{i // 16:012x}_{i % 16 + 1:02d}"
        jpeg, gif, rle = sources[i % len(sources)]
        os.link(jpeg, root / "train" / f"{name}.jpg")
        os.link(gif, root / "train_masks" / f"{name}_mask.gif")
        rows.append(f"{name}.jpg,{rle}")
    (root / "train_masks.csv").write_text("\n".join(rows) + "\n")


@_generated_once("folder")
def folder_layout(root: Path, n: int) -> None:
    import cv2

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(2)
    sources = []
    for k in range(8):
        image, mask = root / f"_image{k}.png", root / f"_mask{k}.png"
        cv2.imwrite(str(image), rng.integers(0, 255, (256, 256, 3), dtype=np.uint8))
        cv2.imwrite(str(mask), (rng.random((256, 256)) < 0.2).astype(np.uint8))
        sources.append((image, mask))
    for i in range(n):
        image, mask = sources[i % len(sources)]
        os.link(image, root / "images" / f"tile{i:06d}.png")
        os.link(mask, root / "masks" / f"tile{i:06d}.png")


@_generated_once("dota")
def dota_layout(root: Path, side: int) -> None:
    """One DOTA scene of ``side`` x ``side`` px with 3,000 oriented boxes (N is the side here)."""
    from bench.bench_dota_prepare import write_scene

    write_scene(root, side, objects=3000)


LAYOUTS = {"airbus": airbus_layout, "carvana": carvana_layout, "folder": folder_layout, "dota": dota_layout, "predict": folder_layout}


# --------------------------------------------------------------------- one child
def _private_mb(pid: int) -> float:
    total = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1])
    return total / 1024


def _datamodule(kind: str, root: Path, cache: Path, workers: int):
    common = {"root": str(root), "cache_dir": str(cache), "num_workers": workers, "batch_size": 8,
              "image_size": 256, "pin_memory": False}
    if kind == "airbus":
        from datamodules.airbus import AirbusDataModule

        return AirbusDataModule(**common, background_ratio=1.0)
    if kind == "carvana":
        from datamodules.carvana import CarvanaDataModule

        return CarvanaDataModule(**common)
    from datamodules.folder import FolderDataModule

    return FolderDataModule(**common)


def measure_dota(side: int) -> dict:
    """Cutting one ``side``² scene: seconds and the peak memory it added, against the decoded scene."""
    from datamodules.dota import DotaDataModule

    root = LAYOUTS["dota"](side)
    cache = DATA / "work" / f"dota-{side}"
    shutil.rmtree(cache, ignore_errors=True)
    dm = DotaDataModule(root=str(root), cache_dir=str(cache), num_workers=0, max_image_pixels=None)
    before = peak_rss_mb()
    started = time.perf_counter()
    dm.prepare_dataset()
    seconds = time.perf_counter() - started
    scene_mb = side * side * 3 / 2**20
    shutil.rmtree(cache, ignore_errors=True)
    return {"n": side, "prepare_s": seconds, "scene_mb": scene_mb, "added_peak_mb": peak_rss_mb() - before}


def _checkpoint() -> Path:
    """A small segkit checkpoint (one epoch of the tiny synthetic demo), trained once and kept."""
    run = DATA / "checkpoint"
    ckpt = run / "checkpoints" / "last.ckpt"
    if ckpt.is_file():
        return ckpt
    from hydra import compose, initialize_config_module

    from segkit.train import run_training

    shutil.rmtree(run, ignore_errors=True)
    with initialize_config_module(config_module="segkit.conf", version_base="1.3"):
        cfg = compose("train", overrides=["data.num_images=16", "data.size=64", "data.image_size=64", "data.batch_size=4",
                                          "data.num_workers=0", "trainer.max_epochs=1", "logger=csv",
                                          f"paths.run_dir={run}", f"data.cache_dir={DATA / 'work' / 'synthetic'}"])
    run_training(cfg)
    return ckpt


def measure_predict(n: int) -> dict:
    """``segkit-predict`` over the ``n`` tiles of the folder layout: seconds and the peak memory it added."""
    from hydra import compose, initialize_config_module

    from segkit.predict import run_predict

    ckpt = DATA / "checkpoint" / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():  # trained in a process of its own: every size starts from the same memory
        subprocess.run([sys.executable, "-m", "bench.bench_scale", "--child", "checkpoint", "0"], cwd=ROOT, check=True,
                       capture_output=True)
    images = LAYOUTS["folder"](n) / "images"
    out = DATA / "work" / f"predict-{n}"
    shutil.rmtree(out, ignore_errors=True)
    with initialize_config_module(config_module="segkit.conf", version_base="1.3"):
        cfg = compose("predict", overrides=[f"ckpt={ckpt}", f"input={images}", f"output={out}", "readers=2"])
    before = peak_rss_mb()
    started = time.perf_counter()
    summary = run_predict(cfg)
    seconds = time.perf_counter() - started
    assert summary["images"] == n
    shutil.rmtree(out, ignore_errors=True)
    return {"n": n, "predict_s": seconds, "added_peak_mb": peak_rss_mb() - before}


#: the folders a dataset's listing reads, for the bare baseline
BARE_DIRS = {"airbus": ("train_v2",), "carvana": ("train", "train_masks"), "folder": ("images", "masks")}


def _bare_listing(root: Path, folders: tuple[str, ...]) -> float:
    """Seconds (best of 3) for the least a listing does in Python: ``os.listdir``, sorted, a
    ``pathlib.Path`` per file and a dict by stem. Its cost per item grows with N too (the
    memory of N objects, not the algorithm): the baseline segkit's listing ratio is read against."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        tables = [{path.stem: path for path in (root / folder / name for name in sorted(os.listdir(root / folder)))}
                  for folder in folders]
        best = min(best, time.perf_counter() - started)
        del tables
    return best


def measure(kind: str, n: int, batches: int, workers: int) -> dict:
    """One dataset size, in this process (run it in a fresh one)."""
    if kind == "dota":
        return measure_dota(n)
    if kind == "predict":
        return measure_predict(n)
    if kind == "checkpoint":
        _checkpoint()
        return {"n": 0}
    root = LAYOUTS[kind](n)
    cache = DATA / "work" / f"{kind}-{n}"
    shutil.rmtree(cache, ignore_errors=True)
    out: dict = {"n": n}
    # a first listing, untimed: the directory entries and the CSV come from the disk once, so the
    # timed one measures segkit's own cost per item rather than how much of the layout the
    # operating system still had cached (cold, the first of several sizes looked 2-3x dearer)
    started = time.perf_counter()
    _datamodule(kind, root, DATA / "work" / "untimed", workers).items()
    out["cold_list_s"] = time.perf_counter() - started
    dm = _datamodule(kind, root, cache, workers)
    started = time.perf_counter()
    items = dm.items()
    out["list_s"] = time.perf_counter() - started
    for _ in range(2):  # the best of 3 listings, each by a fresh datamodule
        again = _datamodule(kind, root, cache, workers)
        started = time.perf_counter()
        again.items()
        out["list_s"] = min(out["list_s"], time.perf_counter() - started)
    del again
    out["bare_list_s"] = _bare_listing(root, BARE_DIRS[kind])
    out["items"] = len(items)
    started = time.perf_counter()
    dm.prepare_data()
    out["prepare_s"] = time.perf_counter() - started
    started = time.perf_counter()
    dm.setup("fit")
    out["setup_s"] = time.perf_counter() - started
    out["main_peak_mb"] = peak_rss_mb()
    out["cache_mb"] = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) / 2**20
    loader = dm.train_dataloader()
    batches = min(batches, len(loader))  # a small layout's epoch can be shorter
    out["worker_mb"], out["images_per_s"] = [], []
    for epoch in range(3):
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        started = time.perf_counter()
        iterator = iter(loader)
        first = None
        for b in range(batches):
            next(iterator)
            if b == 0:
                first = time.perf_counter() - started
                started = time.perf_counter()
        out["images_per_s"].append((batches - 1) * dm.batch_size / (time.perf_counter() - started))
        if epoch == 0:
            out["first_batch_s"] = first
        workers_ = getattr(iterator, "_workers", [])
        out["worker_mb"].append(max((_private_mb(w.pid) for w in workers_), default=0.0))
    return out


# ---------------------------------------------------------------------- the report
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two small sizes per dataset (the test suite)")
    parser.add_argument("--datasets", nargs="+", default=["airbus", "carvana", "folder", "dota", "predict"], choices=sorted(LAYOUTS))
    parser.add_argument("--sizes", nargs="+", type=int, help="dataset sizes (default: 1k, 10k, 100k, full)")
    parser.add_argument("--batches", type=int, default=40, help="training batches timed per epoch")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--child", nargs=2, metavar=("DATASET", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--plot", type=Path, default=Path(__file__).with_name("scale.png"))
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(measure(args.child[0], int(args.child[1]), args.batches, args.workers)), flush=True)
        return
    report = Report("Scale: cost per item against dataset size")
    results: dict[str, list[dict]] = {}
    predictions: list[dict] = []
    for kind in args.datasets:
        sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)[kind]
        for n in sizes:
            started = time.perf_counter()
            LAYOUTS[kind](n)
            made = time.perf_counter() - started
            child = subprocess.run([sys.executable, "-m", "bench.bench_scale", "--child", kind, str(n),
                                    "--batches", str(args.batches), "--workers", str(args.workers)],
                                   cwd=ROOT, capture_output=True, text=True)
            line = [x for x in child.stdout.splitlines() if x.startswith("RESULT ")]
            if child.returncode or not line:
                sys.exit(f"{kind} N={n} failed:\n{child.stderr[-3000:]}")
            result = json.loads(line[0][7:])
            r = result
            if kind == "dota":
                report.line(f"dota: cutting a {n:,}² scene (3,000 boxes) took {r['prepare_s']:.1f} s and added "
                            f"{r['added_peak_mb']:,.0f} MiB at its peak, the decoded scene {r['scene_mb']:,.0f} MiB: "
                            f"ratio {r['added_peak_mb'] / r['scene_mb']:.2f} (target <= 1.5)")
                continue
            if kind == "predict":
                predictions.append(r)
                continue
            results.setdefault(kind, []).append(result)
            report.note(f"{kind} N={n}: layout ready in {made:.1f} s; list {r['list_s']:.2f} s (the first listing, "
                        f"imports and a cold disk cache included: {r['cold_list_s']:.2f} s), prepare "
                        f"{r['prepare_s']:.2f} s, setup {r['setup_s']:.2f} s, main peak {r['main_peak_mb']:.0f} MiB, "
                        f"cache {r['cache_mb']:.1f} MiB, first batch {r['first_batch_s']:.2f} s, "
                        f"{'/'.join(f'{v:.0f}' for v in r['images_per_s'])} images/s (epochs 1-3), worker private "
                        f"{'/'.join(f'{v:.0f}' for v in r['worker_mb'])} MiB")
    for kind, rows in results.items():
        base = rows[0]
        for r in rows[1:]:
            for stage in ("list", "prepare", "setup"):
                per, per_base = r[f"{stage}_s"] / r["n"] * 1e6, base[f"{stage}_s"] / base["n"] * 1e6
                report.line(f"{kind} {stage}: {per:.1f} µs per item at N={r['n']:,}, {per_base:.1f} at N={base['n']:,}: "
                            f"ratio {per / per_base:.2f} (target <= 1.2)")
                if stage == "list":
                    bare, bare_base = r["bare_list_s"] / r["n"] * 1e6, base["bare_list_s"] / base["n"] * 1e6
                    report.line(f"  {kind} bare listing (os.listdir, a Path per file, a dict by stem): {bare:.1f} µs per "
                                f"item at N={r['n']:,}, {bare_base:.1f} at N={base['n']:,}: ratio {bare / bare_base:.2f}")
            per, per_base = 1e3 / max(r["images_per_s"]), 1e3 / max(base["images_per_s"])
            report.line(f"{kind} loading (best of 3 epochs): {per:.2f} ms per image at N={r['n']:,}, {per_base:.2f} at "
                        f"N={base['n']:,}: ratio {per / per_base:.2f} (target <= 1.2)")
        for r in rows:
            if r["worker_mb"][0] > 0:
                report.line(f"{kind} N={r['n']:,}: worker private memory {r['worker_mb'][2]:.1f} MiB after epoch 3, "
                            f"{r['worker_mb'][0]:.1f} after epoch 1: ratio {r['worker_mb'][2] / r['worker_mb'][0]:.2f} "
                            "(target <= 1.1)")
    for r in predictions[1:]:
        base = predictions[0]
        per, per_base = r["predict_s"] / r["n"] * 1e3, base["predict_s"] / base["n"] * 1e3
        report.line(f"predict: {per:.1f} ms per image at N={r['n']:,}, {per_base:.1f} at N={base['n']:,}: ratio "
                    f"{per / per_base:.2f} (target <= 1.2); peak memory it added {r['added_peak_mb']:.0f} MiB at "
                    f"N={r['n']:,}, {base['added_peak_mb']:.0f} at N={base['n']:,}")
    _plot(results, args.plot)
    report.note(f"plot: {args.plot.name}")
    report.save()


def _plot(results: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for kind, rows in results.items():
        n = [r["n"] for r in rows]
        for stage, style in (("list", "o-"), ("prepare", "s--"), ("setup", "^:")):
            axes[0].plot(n, [r[f"{stage}_s"] / r["n"] * 1e6 for r in rows], style, label=f"{kind} {stage}")
        axes[1].plot(n, [1e3 / max(r["images_per_s"]) for r in rows], "o-", label=f"{kind} loading")
    for axis, label in ((axes[0], "µs per item"), (axes[1], "ms per image (best of 3 epochs)")):
        axis.set_xscale("log")
        axis.set_xlabel("images (N)")
        axis.set_ylabel(label)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


if __name__ == "__main__":
    main()
