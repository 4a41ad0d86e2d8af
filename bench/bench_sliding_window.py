"""Sliding-window prediction of a 4000x4000 scene: speed and peak memory against the bare
model forward, and side by side with MONAI's ``sliding_window_inference``.

1. Tensor level, in this process: ``segkit.inference.sliding_window_logits`` and MONAI's
   ``sliding_window_inference`` (Gaussian mode, sigma 0.125, the same tile, overlap, window
   batch and model: mobilenet_unet, random weights, bf16 autocast) on the same normalised
   image; outputs must agree. The bare model forward on the same window batches is the
   speed limit.
2. Whole pipeline, each side in a fresh process so its peak RSS (``ru_maxrss``) is its own:
   ``segkit.predictor.Predictor`` on the uint8 scene (normalisation, probabilities,
   blending, labels) vs the bare forward of the same windows; at 1 and 16 classes.

    python -m bench.bench_sliding_window [--size 4000] [--classes 1 16] [--precision bf16-mixed]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from bench.common import ROOT, Report, peak_rss_mb


def make_module(classes: int):
    import torch

    from segkit.module import SegmentationModule

    torch.manual_seed(0)
    return SegmentationModule(model={"name": "mobilenet_unet"}, loss={"name": "dice"},
                              optimizer={"_target_": "torch.optim.SGD", "lr": 0.1}, num_classes=classes).eval()


def tensor_level(report: Report, size: int, tile: int, overlap: int, batch: int) -> None:
    """segkit vs MONAI vs the bare forward, on one normalised (3, size, size) image."""
    import torch

    from segkit.inference import sliding_window_logits, window_layout

    try:
        from monai.inferers import sliding_window_inference
    except ImportError:
        report.line("MONAI is not installed (pip install 'segkit[bench]'): segkit vs MONAI skipped")
        sliding_window_inference = None
    module = make_module(1)
    image = torch.randn(3, size, size, generator=torch.Generator().manual_seed(0))

    def model(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return module(x).float()

    layout = window_layout(size, size, tile, overlap, 32)
    corners = [(y, x) for y in layout.ys for x in layout.xs]
    with torch.no_grad():
        model(image[None, :, :tile, :tile])  # warm-up
        started = time.perf_counter()
        for i in range(0, len(corners), batch):
            model(torch.stack([image[:, y : y + tile, x : x + tile] for y, x in corners[i : i + batch]]))
        bare = time.perf_counter() - started
        started = time.perf_counter()
        ours = sliding_window_logits(image, model, tile=tile, overlap=overlap, batch_size=batch, size_multiple=32)
        t_ours = time.perf_counter() - started
    n = len(corners)
    report.line(f"tensor level: {size}x{size}, 1 class, tile {tile}, overlap {overlap}, {batch} windows per pass, {n} windows")
    report.compare("sliding window vs the bare forward of the same windows", n / t_ours, n / bare, "windows/s", ">= 0.9")
    if sliding_window_inference is None:
        return
    with torch.no_grad():
        started = time.perf_counter()
        theirs = sliding_window_inference(image[None], (tile, tile), batch, model, overlap=overlap / tile,
                                          mode="gaussian", sigma_scale=0.125)[0]
        t_monai = time.perf_counter() - started
    report.compare("sliding window vs MONAI sliding_window_inference (gaussian)", n / t_ours, n / t_monai, "windows/s", ">= 1.0")
    diff = (ours - theirs).abs()
    agree = ((ours > 0) == (theirs > 0)).float().mean().item()
    report.line(f"  outputs: max |segkit - MONAI| {diff.max().item():.3g} logits (mean {diff.mean().item():.3g}), "
                f"thresholded masks agree on {agree:.5f} of pixels")
    assert agree > 0.999, "segkit and MONAI disagree"


def child(mode: str, size: int, classes: int, precision: str, tile: int, overlap: int, batch: int) -> dict:
    import numpy as np
    import torch

    from segkit.inference import window_layout
    from segkit.predictor import Predictor, Preprocessing, autocast_dtype

    module = make_module(classes)
    image = np.random.default_rng(0).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    prep = Preprocessing(3, "uint8", None, None, 32, {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]})
    setup = peak_rss_mb()
    started = time.perf_counter()
    if mode == "predict":
        predictor = Predictor(module, prep, precision=precision, tile=tile, overlap=overlap, batch_size=batch)
        labels = predictor.predict(image).labels
        windows = predictor.windows_run
        assert labels.shape == (size, size)
    else:  # the bare model on the same window batches
        layout = window_layout(size, size, tile, overlap, 32)
        corners = [(y, x) for y in layout.ys for x in layout.xs]
        dtype = autocast_dtype(precision, torch.device("cpu"))
        windows = 0
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            for i in range(0, len(corners), batch):
                batch_corners = corners[i : i + batch]
                raw = np.stack([image[y : y + tile, x : x + tile] for y, x in batch_corners])
                x = torch.from_numpy(raw).permute(0, 3, 1, 2).float()
                module(x)
                windows += len(batch_corners)
    seconds = time.perf_counter() - started
    return {"mode": mode, "peak_rss_mb": peak_rss_mb(), "setup_rss_mb": setup, "seconds": seconds, "windows": windows,
            "image_mb": size * size * 3 / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4000)
    parser.add_argument("--classes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--overlap", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--child", default=None)
    args = parser.parse_args()
    if args.child:
        result = child(args.child, args.size, args.classes[0], args.precision, args.tile, args.overlap, args.batch)
        print(json.dumps(result))
        return
    report = Report("Sliding-window prediction (bench/bench_sliding_window.py)")
    tensor_level(report, args.size, args.tile, args.overlap, args.batch)
    for classes in args.classes:
        results = {}
        for mode in ("forward", "predict"):
            command = [sys.executable, "-m", "bench.bench_sliding_window", "--child", mode, "--size", str(args.size),
                       "--classes", str(classes),
                       "--precision", args.precision, "--tile", str(args.tile), "--overlap", str(args.overlap),
                       "--batch", str(args.batch)]
            out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=True).stdout
            results[mode] = json.loads(out.strip().splitlines()[-1])
        ours, base = results["predict"], results["forward"]
        image_mb = ours["image_mb"]
        report.line(f"Predictor on the uint8 scene, {classes} class(es), {args.precision}: {ours['windows']} windows, "
                    f"decoded image {image_mb:.0f} MiB, process after set-up {ours['setup_rss_mb']:.0f} MiB")
        report.compare(f"  {classes} class(es): Predictor vs the bare forward", ours["windows"] / ours["seconds"],
                       base["windows"] / base["seconds"], "windows/s", ">= 0.9")
        extra = ours["peak_rss_mb"] - base["peak_rss_mb"]
        report.line(f"  {classes} class(es): peak RSS ours {ours['peak_rss_mb']:.0f} MiB, bare forward {base['peak_rss_mb']:.0f} MiB: "
                    f"extra {extra:.0f} MiB = {extra / image_mb:.2f}x the decoded image (target <= 4x)")
    report.save()

if __name__ == "__main__":
    main()
