"""CPU training modes: images/s of a training step in fp32 and bf16 autocast, with and
without channels-last, at 256 and 768 px; checks that the CLI's default is the fastest.

One step = forward, BCE+Dice, backward, AdamW on mobilenet_unet (same weights for all
modes), batches of 8 at 256 px and 2 at 768 px. The baseline of every line is plain fp32
(contiguous NCHW), what a hand-written loop does.

    python -m bench.bench_cpu_precision [--steps 3] [--sizes 256 768]
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from bench.common import Report
from segkit.module import SegmentationModule
from segkit.runtime import resolve_precision

BATCH = {256: 8, 512: 4, 768: 2}


def images_per_s(size: int, precision: str, channels_last: bool, steps: int) -> float:
    torch.manual_seed(0)
    module = SegmentationModule(model={"name": "mobilenet_unet"}, loss={"name": "bce_dice"},
                                optimizer={"_target_": "torch.optim.AdamW", "lr": 1e-3}, num_classes=1,
                                channels_last=channels_last).train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    batch = BATCH.get(size, 2)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=generator)
    masks = (torch.rand(batch, size, size, generator=generator) > 0.9).long()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16-mixed" else contextlib.nullcontext()
    elapsed = 0.0
    for step in range(steps + 1):  # the first step warms up
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = module.loss_fn(module(images), masks)
        loss.backward()
        optimizer.step()
        if step:
            elapsed += time.perf_counter() - started
    return batch * steps / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 768])
    args = parser.parse_args()
    report = Report("CPU training modes (bench/bench_cpu_precision.py)")
    default = (resolve_precision("auto", "cpu"), True)  # module.channels_last defaults to true
    report.line(f"the CLI's default here: precision {default[0]}, channels_last {default[1]}")
    for size in args.sizes:
        rates = {}
        for precision in ("32-true", "bf16-mixed"):
            for channels_last in (False, True):
                rates[(precision, channels_last)] = images_per_s(size, precision, channels_last, args.steps)
        base = rates[("32-true", False)]
        for (precision, channels_last), rate in rates.items():
            if (precision, channels_last) != ("32-true", False):
                report.compare(f"{size} px, batch {BATCH.get(size, 2)}, {precision}{' + channels_last' if channels_last else ''}"
                               " vs fp32", rate, base, "images/s")
        fastest = max(rates, key=rates.get)
        verdict = "is" if fastest == default else f"is NOT (fastest: {fastest[0]}, channels_last {fastest[1]})"
        report.line(f"{size} px: the default {verdict} the fastest mode")
    report.save()


if __name__ == "__main__":
    main()
