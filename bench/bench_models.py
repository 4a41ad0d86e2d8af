"""Every smp architecture segkit trains (``model=smp model.arch=<arch>``): parameters for
RGB -> 1 class, CPU training speed at 256 px against ``model=unet`` (the baseline, measured
in the same run), and whether its ONNX export passes segkit-export's parity check.

Per architecture, on its default encoder (``resnet34``; Segformer on its own ``mit_b0``; DPT
on timm's ``vit_small_patch16_224``, the smallest ViT it is commonly run with): a plain
training step (forward, bce_dice, backward, AdamW; bf16 autocast and channels-last, as
training on this CPU runs) on in-memory batches of 4 x 3 x 256 x 256, timed after warm-up
steps, right after unet's same steps; ratio = its images/s over unet's (> 1: faster than unet). ONNX: segkit-export's own
export and check (``segkit.export.export_checked``: dynamo exporter, batch/height/width
dynamic, onnxruntime against PyTorch at the export size and another, max |diff| within
1e-4 + 1e-3 x the outputs' scale; where only other sizes fail, exported again at a fixed size).

    python -m bench.bench_models [--archs FPN Segformer] [--steps 4] [--no-onnx | --onnx-only]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch

from bench.common import Report
from segkit.models import ARCHITECTURES, count_parameters
from segkit.module import SegmentationModule

#: the encoder each architecture is measured on (the convenience configs' defaults)
ENCODERS = {arch: "resnet34" for arch in ARCHITECTURES} | {"Segformer": "mit_b0", "DPT": "tu-vit_small_patch16_224"}


def module_for(arch: str | None) -> SegmentationModule:
    torch.manual_seed(0)
    model = {"name": "unet"} if arch is None else {"name": "smp", "arch": arch, "encoder_name": ENCODERS[arch]}
    return SegmentationModule(model=model, loss={"name": "bce_dice"},
                              optimizer={"_target_": "torch.optim.AdamW", "lr": 1e-3}, num_classes=1)


def train_rate(module: SegmentationModule, side: int, batch: int, steps: int, warmup: int) -> float:
    """images/s of the plain training step, bf16 autocast, channels-last inputs."""
    module.train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, side, side, generator=generator).contiguous(memory_format=torch.channels_last)
    masks = (torch.rand(batch, side, side, generator=generator) > 0.9).long()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = module.loss_fn(module(images), masks)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - started)


#: the export size of the ONNX check (PAN's smallest input is 128; DPT's ViT was pretrained at 224)
ONNX_SIDE = {"PAN": 128, "DPT": 224}


def onnx_parity(module: SegmentationModule, side: int) -> str:
    """What segkit-export says of the architecture's ONNX export (its own function, its
    tolerances, its fallback to a fixed size): passes with the size dynamic, passes at a
    fixed size, or why not."""
    from segkit.export import ExportedNet, export_checked

    net = ExportedNet(module.net.net, "logits", binary=True).eval()
    generator = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            checks, dynamic = export_checked("onnx", net, torch.randn(2, 3, side, side, generator=generator),
                                             Path(tmp) / "model.onnx", module.net.name, module.net.size_multiple)
        except Exception as err:  # noqa: BLE001 — what the exporter says is the result
            return f"fails ({type(err).__name__}: {str(err).splitlines()[0][:160]})"
    worst = max(c["max_abs_diff"] / max(c["max_abs_output"], 1e-12) for c in checks)
    where = "any size" if dynamic else f"fixed to {side}x{side}"
    return f"passes, {where} (max \\|diff\\| {worst:.1g} of the output scale)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", nargs="+", default=list(ARCHITECTURES), choices=ARCHITECTURES)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-onnx", action="store_true")
    parser.add_argument("--onnx-only", action="store_true", help="the ONNX column only (no speed measurement)")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    report = Report(f"Architectures (bench/bench_models.py): {args.size} px, batch {args.batch}, CPU")
    unet = module_for(None)
    report.line(f"unet/resnet34 (the baseline, measured again right before each architecture, so that the "
                f"machine's load moves both alike): {count_parameters(unet):,} parameters")
    if not args.onnx_only:
        train_rate(unet, args.size, args.batch, 2, args.warmup)  # the process's first steps (allocator, kernels): untimed
    rows = []
    for arch in args.archs:
        module = module_for(arch)
        onnx = "not checked" if args.no_onnx else onnx_parity(module_for(arch), ONNX_SIDE.get(arch, 64))
        if args.onnx_only:
            rows.append((arch, ENCODERS[arch], count_parameters(module), None, onnx))
            report.line(f"{arch}/{ENCODERS[arch]}: ONNX {onnx}")
            continue
        baseline = train_rate(unet, args.size, args.batch, args.steps, args.warmup)
        rate = train_rate(module, args.size, args.batch, args.steps, args.warmup)
        rows.append((arch, ENCODERS[arch], count_parameters(module), rate / baseline, onnx))
        report.compare(f"{arch}/{ENCODERS[arch]} ({count_parameters(module):,} parameters; ONNX {onnx}) vs unet/resnet34",
                       rate, baseline, "images/s")
    report.note("| architecture (`model.arch`) | encoder | parameters, RGB -> 1 class | CPU training speed at "
                f"{args.size} px vs `unet` | ONNX export parity |")
    report.note("|---|---|---:|---:|---|")
    for arch, encoder, params, ratio, onnx in rows:
        report.note(f"| {arch} | {encoder} | {params:,} | {'-' if ratio is None else f'{ratio:.2f}x'} | {onnx} |")
    report.save()


if __name__ == "__main__":
    main()
