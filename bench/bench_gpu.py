"""GPU training throughput: precisions, channels-last, torch.compile, the real loader vs
in-memory tensors, peak memory and the largest batch that fits. Says so and stops when
no GPU is present.

Training step = forward, BCE+Dice, backward, AdamW, timed with CUDA synchronisation after
warm-up steps. Baseline of every precision line: 32-true (contiguous NCHW) of the same
model and size. The loader line compares the Airbus datamodule (synthetic 768 px JPEGs,
``--workers`` workers, pinned memory) feeding the same step with in-memory GPU tensors.

    python -m bench.bench_gpu [--models mobilenet_unet unet] [--sizes 384 512 768] [--steps 20]
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import torch

from bench.common import Report

BATCH = {384: 32, 512: 16, 768: 8}
MODES = [("32-true", False, False), ("16-mixed", False, False), ("16-mixed", True, False), ("bf16-mixed", True, False),
         ("16-mixed", True, True)]


def make_module(model: str, channels_last: bool):
    from segkit.module import SegmentationModule

    torch.manual_seed(0)
    return SegmentationModule(model={"name": model}, loss={"name": "bce_dice"},
                              optimizer={"_target_": "torch.optim.AdamW", "lr": 1e-3}, num_classes=1,
                              channels_last=channels_last).cuda().train()


def step_fn(module, precision: str, compiled: bool):
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    dtype = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}.get(precision)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "16-mixed")
    forward = torch.compile(module) if compiled else module

    def step(images, masks):
        optimizer.zero_grad(set_to_none=True)
        context = torch.autocast("cuda", dtype=dtype) if dtype else contextlib.nullcontext()
        with context:
            loss = module.loss_fn(forward(images), masks)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def throughput(model: str, size: int, batch: int, precision: str, channels_last: bool, compiled: bool, steps: int) -> tuple[float, float]:
    """(images/s, peak GiB) of training steps on in-memory GPU tensors."""
    module = make_module(model, channels_last)
    step = step_fn(module, precision, compiled)
    images = torch.randn(batch, 3, size, size, device="cuda")
    masks = (torch.rand(batch, size, size, device="cuda") > 0.9).long()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(5 if compiled else 3):
        step(images, masks)
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step(images, masks)
    torch.cuda.synchronize()
    rate = batch * steps / (time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated() / 2**30
    del module, step, images, masks
    torch.cuda.empty_cache()
    return rate, peak


def largest_batch(model: str, size: int, precision: str) -> int:
    """Largest batch (doubling, then bisecting) that trains one step without running out of memory."""
    def fits(batch: int) -> bool:
        try:
            throughput(model, size, batch, precision, True, False, 1)
            return True
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            return False

    low, high = 1, 2
    while fits(high) and high < 4096:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def loader_vs_memory(report: Report, steps: int, workers: int) -> None:
    from datamodules.airbus import AirbusDataModule
    from datamodules.synthetic import write_synthetic_airbus

    batch, size = BATCH[768], 768
    with tempfile.TemporaryDirectory() as tmp:
        root = write_synthetic_airbus(Path(tmp) / "airbus", num_images=batch * (steps + 4), size=size, ship_fraction=1.0)
        datamodule = AirbusDataModule(root=str(root), image_size=None, batch_size=batch, num_workers=workers, pin_memory=True,
                                      val_fraction=0.02, background_ratio=1.0, cache_dir=str(Path(tmp) / "cache"),
                                      normalize={"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]})
        datamodule.prepare_data()
        datamodule.setup()
        module = make_module("mobilenet_unet", True)
        step = step_fn(module, "16-mixed", False)
        loader = datamodule.train_dataloader()
        for _ in loader:  # start the workers
            break
        torch.cuda.synchronize()
        started, seen = time.perf_counter(), 0
        for batch_data in loader:  # as the Trainer does: move, then normalise on the GPU
            moved = {key: batch_data[key].cuda(non_blocking=True) for key in ("image", "mask")}
            moved = datamodule.prepare_batch(moved)
            step(moved["image"], moved["mask"])
            seen += len(moved["image"])
        torch.cuda.synchronize()
        real = seen / (time.perf_counter() - started)
    memory, _ = throughput("mobilenet_unet", size, batch, "16-mixed", True, False, steps)
    report.compare(f"mobilenet_unet 768 px 16-mixed: Airbus datamodule ({workers} workers) vs in-memory tensors",
                   real, memory, "images/s", ">= 0.9")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["mobilenet_unet", "unet"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[384, 512, 768])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    report = Report("GPU training (bench/bench_gpu.py)")
    if not torch.cuda.is_available():
        report.line("no GPU present (torch.cuda.is_available() is False): GPU benchmarks skipped")
        report.save()
        return
    torch.backends.cudnn.benchmark = True
    report.line(f"device: {torch.cuda.get_device_name(0)}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
    for model in args.models:
        for size in args.sizes:
            batch = BATCH.get(size, 8)
            base, base_peak = throughput(model, size, batch, "32-true", False, False, args.steps)
            report.line(f"{model} {size} px batch {batch}: 32-true {base:.1f} images/s, peak {base_peak:.2f} GiB")
            for precision, channels_last, compiled in MODES[1:]:
                try:
                    rate, peak = throughput(model, size, batch, precision, channels_last, compiled, args.steps)
                except Exception as err:  # noqa: BLE001 — e.g. torch.compile without a compiler: report, go on
                    report.line(f"  {precision} cl={channels_last} compile={compiled}: failed ({type(err).__name__}: {err})"[:300])
                    continue
                name = f"  {model} {size} px {precision}{' + channels_last' if channels_last else ''}{' + compile' if compiled else ''}"
                report.compare(f"{name} (peak {peak:.2f} GiB) vs 32-true", rate, base, "images/s",
                               ">= 1.8" if (size == 768 and precision == "16-mixed" and not compiled) else "")
        report.line(f"{model}: largest batch at 768 px, 16-mixed + channels_last: {largest_batch(model, 768, '16-mixed')}")
    loader_vs_memory(report, args.steps, args.workers)
    report.save()


if __name__ == "__main__":
    main()
