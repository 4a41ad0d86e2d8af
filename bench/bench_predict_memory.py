"""Sliding-window prediction of a large scene: peak memory and speed against the bare model.

A 4000x4000 RGB uint8 scene (48 MB decoded) is predicted by ``segkit.predictor.Predictor``
(mobilenet_unet, random weights, tile 1024, overlap 256, batches of 4 windows, Gaussian
blending). The baseline runs the bare model forward on exactly the same window batches
(no normalisation, blending or stitching). Each side runs in its own fresh process so
its peak RSS (``ru_maxrss``) is its own; both report windows/s.

    python bench/bench_predict_memory.py [--size 4000] [--classes 1 16] [--precision bf16-mixed]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(mode: str, size: int, classes: int, precision: str, tile: int, overlap: int, batch: int) -> dict:
    import numpy as np
    import torch

    from segkit.inference import window_layout
    from segkit.module import SegmentationModule
    from segkit.predictor import Predictor, Preprocessing, autocast_dtype

    torch.manual_seed(0)
    module = SegmentationModule(model={"name": "mobilenet_unet"}, loss={"name": "dice"},
                                optimizer={"_target_": "torch.optim.SGD", "lr": 0.1}, num_classes=classes).eval()
    image = np.random.default_rng(0).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    prep = Preprocessing(3, "uint8", None, None, 32, {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]})
    setup = rss_mb()
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
    return {"mode": mode, "peak_rss_mb": rss_mb(), "setup_rss_mb": setup, "seconds": seconds, "windows": windows,
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
    for classes in args.classes:
        results = {}
        for mode in ("forward", "predict"):
            command = [sys.executable, __file__, "--child", mode, "--size", str(args.size), "--classes", str(classes),
                       "--precision", args.precision, "--tile", str(args.tile), "--overlap", str(args.overlap),
                       "--batch", str(args.batch)]
            out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=True).stdout
            results[mode] = json.loads(out.strip().splitlines()[-1])
        ours, base = results["predict"], results["forward"]
        rate_ours, rate_base = ours["windows"] / ours["seconds"], base["windows"] / base["seconds"]
        print(f"sliding window {args.size}x{args.size}, {classes} class(es), {args.precision}, tile {args.tile}/"
              f"{args.overlap}, batch {args.batch}: {ours['windows']} windows")
        print(f"  speed: ours {rate_ours:.2f} windows/s, bare forward {rate_base:.2f} windows/s, ratio {rate_ours / rate_base:.2f}")
        print(f"  peak RSS: ours {ours['peak_rss_mb']:.0f} MB, bare forward {base['peak_rss_mb']:.0f} MB "
              f"(after setup {ours['setup_rss_mb']:.0f} / {base['setup_rss_mb']:.0f} MB); "
              f"extra over the bare forward {ours['peak_rss_mb'] - base['peak_rss_mb']:.0f} MB = "
              f"{(ours['peak_rss_mb'] - base['peak_rss_mb']) / ours['image_mb']:.2f}x the decoded image ({ours['image_mb']:.0f} MB)")


if __name__ == "__main__":
    main()
