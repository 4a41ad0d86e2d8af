"""The check to run first on a lent GPU: the CUDA paths, measured side by side, in under
8 minutes, each line appended to ``bench/RESULTS.md`` the moment it is measured (a run cut
off keeps what it measured).

1. The machine: ``nvidia-smi``, torch and its CUDA, the driver. Stops, saying why, when CUDA
   is not usable.
2. Precisions, per model (mobilenet_unet, unet) and size (256, 768 px): a plain training
   loop (forward, bce_dice, backward, AdamW; in-memory tensors) in 32-true with TF32 off —
   the baseline of every line — against 32-true with TF32 on, 16-mixed (gradient scaler) and
   bf16-mixed with channels-last (``--all-modes``: each also without); then the same steps through the
   Lightning **Trainer** (segkit's module, ``precision=auto``'s choice) against the plain loop.
3. The real Airbus-format loader (JPEGs and the RLE CSV, the dataset's augmentations,
   pinned memory, workers) feeding that step, against the same batches held on the device.
4. Sliding-window prediction of a 4000x4000 scene (``segkit.predictor.Predictor``: host
   windows, device blending, labels) against the bare forward of the same windows.
5. A 30-second ``segkit-train`` of the demo, against the plain loop's rate for its model.
6. Peak memory at 768 px, and the largest batch that trains a step there (bisection, capped
   at 64 unless ``--batch-search``).

No line starts after ``--budget-s`` (420 s), and no precision line after 60% of it when
other sections follow: each says so instead. Every comparison is in the steady state: each
side runs once untimed on the same shapes first (``cudnn.benchmark`` autotunes a shape's
first batch), and the Trainer is timed from its first measured batch to its last, without
the epoch's end.

    python -m bench.gpu_check                        # on the GPU box (README: "On a lent GPU")
    python -m bench.gpu_check --device cpu --quick   # the same paths on a CPU at tiny sizes (the test suite runs it)

``--compile`` adds torch.compile lines; ``--batch-search`` lifts the batch cap; ``--results``
writes elsewhere than bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from bench.common import RESULTS, ROOT, Report


@dataclass(frozen=True)
class Sizes:
    """What one check measures: full on a GPU, ``--quick`` tiny for a CPU."""

    models: tuple[str, ...]
    modes: tuple[str, ...]  # labels of MODES measured (the first, the baseline, always)
    sides: dict[int, int]  # image side -> batch
    steps: int
    warmup: int
    loader_side: int
    loader_batch: int
    scene: int
    tile: int
    overlap: int
    demo_seconds: int
    demo_size: int


#: the modes that decide (fp32 baseline, the best of TF32, and both mixed precisions, all
#: channels-last, which is what ``channels_last`` defaults to); ``--all-modes`` measures all 8
KEY_MODES = ("32-true, TF32 on + channels-last", "16-mixed + channels-last", "bf16-mixed + channels-last")
FULL = Sizes(("mobilenet_unet", "unet"), KEY_MODES, {256: 32, 768: 8}, steps=10, warmup=3, loader_side=768, loader_batch=8,
             scene=4000, tile=1024, overlap=256, demo_seconds=30, demo_size=256)
QUICK = Sizes(("mobilenet_unet",), ("32-true, TF32 off + channels-last", "16-mixed", "16-mixed + channels-last", "bf16-mixed",
                                    "bf16-mixed + channels-last"), {64: 2},
              steps=2, warmup=1, loader_side=64, loader_batch=2,
              scene=192, tile=128, overlap=32, demo_seconds=10, demo_size=64)
#: the precision lines stop at this share of --budget-s when other sections follow, so the
#: loader, window, demo and memory lines still get their turn
PRECISIONS_SHARE = 0.6
MIN_DEMO_STEPS = 20  # a demo rate from fewer steps measures its set-up, not its training
#: (label, precision, TF32, channels-last); the first is every line's baseline
MODES = [("32-true, TF32 off", "32-true", False, False), ("32-true, TF32 off + channels-last", "32-true", False, True),
         ("32-true, TF32 on", "32-true", True, False), ("32-true, TF32 on + channels-last", "32-true", True, True),
         ("16-mixed", "16-mixed", True, False), ("16-mixed + channels-last", "16-mixed", True, True),
         ("bf16-mixed", "bf16-mixed", True, False), ("bf16-mixed + channels-last", "bf16-mixed", True, True)]


def label(text: str, device: torch.device) -> str:
    """A mode's label as it applies: TF32 is a CUDA setting, so off CUDA it is not named."""
    return text if device.type == "cuda" else text.replace(", TF32 off", "")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def set_tf32(on: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def make_module(model: str, channels_last: bool, device: torch.device):
    from segkit.module import SegmentationModule

    torch.manual_seed(0)
    return SegmentationModule(model={"name": model}, loss={"name": "bce_dice"},
                              optimizer={"_target_": "torch.optim.AdamW", "lr": 1e-3}, num_classes=1,
                              channels_last=channels_last).to(device).train()


def make_step(module, precision: str, device: torch.device, compiled: bool = False):
    """One plain training step (no Lightning) in ``precision``."""
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    dtype = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}.get(precision)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed" and device.type == "cuda")
    forward = torch.compile(module) if compiled else module

    def step(images: torch.Tensor, masks: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        context = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        with context:
            loss = module.loss_fn(forward(images), masks)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def batch_on(device: torch.device, batch: int, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, side, side, generator=generator).to(device)
    masks = (torch.rand(batch, side, side, generator=generator) > 0.9).long().to(device)
    return images, masks


def plain_rate(model: str, side: int, batch: int, precision: str, channels_last: bool, device: torch.device,
               sizes: Sizes, compiled: bool = False) -> tuple[float, float | None]:
    """(images/s, peak GiB) of the plain loop on tensors held on the device."""
    reset_peak(device)
    module = make_module(model, channels_last, device)
    step = make_step(module, precision, device, compiled)
    images, masks = batch_on(device, batch, side)
    for _ in range(sizes.warmup + (3 if compiled else 0)):  # compiled: the compilation happens here, untimed
        step(images, masks)
    sync(device)
    started = time.perf_counter()
    for _ in range(sizes.steps):
        step(images, masks)
    sync(device)
    rate = batch * sizes.steps / (time.perf_counter() - started)
    peak = peak_gib(device)
    del module, step, images, masks
    reset_peak(device)
    return rate, peak


class _Repeat(torch.utils.data.IterableDataset):
    """The same ready batch, ``count`` times (the Trainer's loop without a loader's cost)."""

    def __init__(self, batch: dict[str, torch.Tensor], count: int) -> None:
        self.batch, self.count = batch, count

    def __iter__(self):
        return iter([self.batch] * self.count)


def trainer_rate(model: str, side: int, batch: int, precision: str, device: torch.device, sizes: Sizes) -> float:
    """images/s of the same steps run by ``lightning.Trainer.fit`` on segkit's module, in the
    steady state: from the start of the first batch after the warm-up to the end of the last
    batch (the epoch's end, its metrics and logging, is a once-per-epoch cost, not a step's)."""
    import lightning as L

    last = sizes.warmup + sizes.steps - 1

    class Clock(L.Callback):
        started = ended = 0.0

        def on_train_batch_start(self, trainer, module, data, index):
            if index == sizes.warmup:
                sync(device)
                self.started = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, data, index):
            if index == last:
                sync(device)
                self.ended = time.perf_counter()

    module = make_module(model, True, device)
    images, masks = batch_on(device, batch, side)
    loader = torch.utils.data.DataLoader(_Repeat({"image": images, "mask": masks}, sizes.warmup + sizes.steps), batch_size=None)
    clock = Clock()
    # Lightning's start and stop lines are about this measurement's own set-up
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.pytorch.utilities.rank_zero",
                                                     "lightning.fabric.utilities.rank_zero")]
    levels = [each.level for each in loggers]
    for each in loggers:
        each.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*validation_step.*val_dataloader")  # none, on purpose
            trainer = L.Trainer(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, precision=precision,
                                max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=[clock])
            trainer.fit(module, train_dataloaders=loader)
    finally:
        for each, level in zip(loggers, levels):
            each.setLevel(level)
    del module, trainer, loader
    reset_peak(device)
    return batch * sizes.steps / (clock.ended - clock.started)


def check_machine(report: Report, device: torch.device) -> bool:
    """Print the GPU, driver and torch's CUDA; ``False`` (with the reason) when CUDA is not usable."""
    smi = shutil.which("nvidia-smi")
    if smi:
        result = subprocess.run([smi], capture_output=True, text=True, timeout=60)
        print(result.stdout or result.stderr, flush=True)
        query = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=60)
        report.line(f"nvidia-smi: {query.stdout.strip() or query.stderr.strip() or 'no answer'}")
    else:
        report.line("nvidia-smi: not found on PATH")
    report.line(f"torch {torch.__version__}, built for CUDA {torch.version.cuda}, cuDNN "
                f"{torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}; "
                f"torch.cuda.is_available() {torch.cuda.is_available()}")
    if device.type != "cuda":
        report.line(f"device {device}: the CUDA-only lines (TF32, peak memory, largest batch) are skipped")
        return True
    if not torch.cuda.is_available():
        why = ("this torch has no CUDA (a CPU build: install a CUDA build of torch)" if torch.version.cuda is None else
               "no GPU is visible to it (check nvidia-smi above, the driver, and CUDA_VISIBLE_DEVICES)")
        report.line(f"CUDA is not usable: {why}. Nothing was measured; --device cpu runs the same paths on the CPU.")
        return False
    props = torch.cuda.get_device_properties(device)
    report.line(f"device: {props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability {props.major}.{props.minor}, "
                f"bf16 {'native' if props.major >= 8 else 'emulated'}")
    return True


def precisions(report: Report, device: torch.device, sizes: Sizes, compiled: bool, deadline: float) -> dict[tuple[str, int], float]:
    """The precision table; returns the plain loop's rate of ``precision=auto``'s choice per (model, side)."""
    from segkit.runtime import resolve_precision

    auto = resolve_precision("auto", "gpu" if device.type == "cuda" else "cpu")
    chosen: dict[tuple[str, int], float] = {}
    for model in sizes.models:
        for side, batch in sizes.sides.items():
            if time.perf_counter() > deadline:
                report.line(f"{model} {side} px: skipped, the time budget (--budget-s) is spent")
                continue
            set_tf32(False)
            base, base_peak = plain_rate(model, side, batch, "32-true", False, device, sizes)
            peak = f", peak {base_peak:.2f} GiB" if base_peak is not None else ""
            report.line(f"{model} {side} px, batch {batch}, plain loop, {label(MODES[0][0], device)}: {base:.1f} images/s{peak}")
            for name, precision, tf32, channels_last in MODES[1:]:
                if (device.type != "cuda" and "TF32 on" in name) or (sizes.modes and name not in sizes.modes):
                    continue  # TF32 is a CUDA setting; the default and --quick measure fewer modes
                if time.perf_counter() > deadline:  # each line can take ~25 s on a GPU (autotuning): checked per line
                    report.line(f"  {label(name, device)}: skipped, the time budget (--budget-s) is spent")
                    continue
                set_tf32(tf32)
                try:
                    rate, peak_mode = plain_rate(model, side, batch, precision, channels_last, device, sizes)
                except Exception as err:  # noqa: BLE001 — a mode this machine lacks: say so, go on
                    report.line(f"  {label(name, device)}: failed ({type(err).__name__}: {err})"[:300])
                    continue
                peak = f" (peak {peak_mode:.2f} GiB)" if peak_mode is not None else ""
                report.compare(f"  {model} {side} px {label(name, device)}{peak} vs {label(MODES[0][0], device)}",
                               rate, base, "images/s")
                if precision == auto and channels_last:
                    chosen[(model, side)] = rate
            if compiled and (model, side) in chosen:
                set_tf32(True)
                try:
                    rate, _ = plain_rate(model, side, batch, auto, True, device, sizes, compiled=True)
                    report.compare(f"  {model} {side} px {auto} + channels-last + torch.compile vs without compile",
                                   rate, chosen[(model, side)], "images/s")
                except Exception as err:  # noqa: BLE001 — no compiler on the box: report, go on
                    report.line(f"  torch.compile: failed ({type(err).__name__}: {err})"[:300])
                finally:
                    torch._dynamo.reset()  # the compiled graphs and their caches go before the next lines
            set_tf32(True)
            if (model, side) not in chosen or time.perf_counter() > deadline:
                spent = time.perf_counter() > deadline
                report.line(f"  {model} {side} px Lightning Trainer: skipped, "
                            + ("the time budget (--budget-s) is spent" if spent else f"{auto} + channels-last failed"))
                continue
            rate = trainer_rate(model, side, batch, auto, device, sizes)
            report.compare(f"  {model} {side} px {auto} + channels-last: Lightning Trainer vs the plain loop",
                           rate, chosen[(model, side)], "images/s", ">= 0.95")
    return chosen


def loader(report: Report, device: torch.device, sizes: Sizes, workers: int) -> None:
    """The Airbus datamodule (JPEG decode, RLE masks, augmentations, pinned memory) feeding the
    step, against the same number of batches already on the device."""
    from datamodules.airbus import AirbusDataModule
    from datamodules.synthetic import write_synthetic_airbus
    from segkit.runtime import resolve_precision

    auto = resolve_precision("auto", "gpu" if device.type == "cuda" else "cpu")
    batch, side = sizes.loader_batch, sizes.loader_side
    with tempfile.TemporaryDirectory() as tmp:
        root = write_synthetic_airbus(Path(tmp) / "airbus", num_images=batch * (sizes.steps + 2) + 4, size=side,
                                      ship_fraction=1.0)
        datamodule = AirbusDataModule(root=str(root), image_size=None, batch_size=batch, num_workers=workers,
                                      pin_memory=device.type == "cuda", val_fraction=0.02, background_ratio=1.0,
                                      cache_dir=str(Path(tmp) / "cache"))
        datamodule.prepare_data()
        datamodule.setup()
        module = make_module("mobilenet_unet", True, device)
        step = make_step(module, auto, device)
        batches = iter(datamodule.train_dataloader())
        first = next(batches)  # starts the workers
        moved = datamodule.prepare_batch({k: first[k].to(device, non_blocking=True) for k in ("image", "mask")})
        step(moved["image"], moved["mask"])
        sync(device)
        started, seen = time.perf_counter(), 0
        for data in batches:  # as the Trainer does: move (pinned, non-blocking), then normalise on the device
            moved = datamodule.prepare_batch({k: data[k].to(device, non_blocking=True) for k in ("image", "mask")})
            step(moved["image"], moved["mask"])
            seen += len(moved["image"])
            if seen >= batch * sizes.steps:
                break
        sync(device)
        real = seen / (time.perf_counter() - started)
        held = [moved["image"], moved["mask"]]
        started = time.perf_counter()
        for _ in range(seen // batch):
            step(*held)
        sync(device)
        memory = seen // batch * batch / (time.perf_counter() - started)
    report.compare(f"mobilenet_unet {side} px {auto}: Airbus datamodule ({workers} workers, augmentations) "
                   f"vs the same batches on the device", real, memory, "images/s", ">= 0.9")


def memory(report: Report, device: torch.device, sizes: Sizes, search: bool) -> None:
    """Peak memory at the check's batch, and the largest batch that trains at 768 px."""
    if device.type != "cuda":
        report.line("largest batch: skipped off CUDA (the bisection looks for CUDA out-of-memory)")
        return
    from segkit.runtime import resolve_precision

    auto = resolve_precision("auto", "gpu")
    side, cap = 768, 4096 if search else 64

    def fits(batch: int) -> bool:
        try:
            plain_rate("unet", side, batch, auto, True, device, Sizes(**{**sizes.__dict__, "steps": 1, "warmup": 0}))
            return True
        except torch.OutOfMemoryError:
            reset_peak(device)
            return False

    started = time.perf_counter()
    low, high = 0, 1
    while high <= cap and fits(high):
        low, high = high, high * 2
    high = min(high, cap + 1)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    _, peak = plain_rate("unet", side, sizes.sides.get(768, 8), auto, True, device, sizes)
    capped = " (the cap; --batch-search lifts it)" if low == cap else ""
    report.line(f"unet 768 px {auto} + channels-last: peak {peak:.2f} GiB at batch {sizes.sides.get(768, 8)}; "
                f"largest batch that trains {low}{capped}; found in {time.perf_counter() - started:.0f} s")


def sliding_window(report: Report, device: torch.device, sizes: Sizes) -> None:
    """segkit's Predictor on a uint8 scene against the bare forward of the same windows."""
    import numpy as np

    from segkit.inference import window_layout
    from segkit.predictor import Predictor, Preprocessing, autocast_dtype
    from segkit.runtime import resolve_precision

    auto = resolve_precision("auto", "gpu" if device.type == "cuda" else "cpu")
    module = make_module("mobilenet_unet", True, device).eval()
    scene = np.random.default_rng(0).integers(0, 256, size=(sizes.scene, sizes.scene, 3), dtype=np.uint8)
    prep = Preprocessing(3, "uint8", None, None, 32, {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]})
    predictor = Predictor(module, prep, device=device, precision=auto, tile=sizes.tile, overlap=sizes.overlap, batch_size=4)
    layout = window_layout(sizes.scene, sizes.scene, sizes.tile, sizes.overlap, 32)
    corners = [(y, x) for y in layout.ys for x in layout.xs]
    dtype = autocast_dtype(auto, device)
    def bare_forward() -> None:
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            for i in range(0, len(corners), 4):
                windows = np.stack([scene[y : y + sizes.tile, x : x + sizes.tile] for y, x in corners[i : i + 4]])
                module(torch.from_numpy(windows).to(device).permute(0, 3, 1, 2).float())

    def best_of(run, times: int = 2) -> float:
        """Seconds of the fastest of ``times`` runs, after one untimed run on the same shapes
        (with cudnn.benchmark, the first batch of each shape autotunes: a one-off cost)."""
        run()
        spans = []
        for _ in range(times):
            sync(device)
            started = time.perf_counter()
            run()
            sync(device)
            spans.append(time.perf_counter() - started)
        return min(spans)

    reset_peak(device)
    predicted = []
    ours = best_of(lambda: predicted.append(predictor.predict(scene).labels))
    labels = predicted[-1]
    peak = peak_gib(device)
    bare = best_of(bare_forward)
    assert labels.shape == (sizes.scene, sizes.scene)
    shown = f", peak {peak:.2f} GiB" if peak is not None else ""
    report.compare(f"sliding window {sizes.scene}x{sizes.scene}, tile {sizes.tile}, overlap {sizes.overlap}, "
                   f"{len(corners)} windows, {auto}{shown}: Predictor vs the bare forward of the same windows",
                   len(corners) / ours, len(corners) / bare, "windows/s", ">= 0.8")


def demo(report: Report, device: torch.device, sizes: Sizes, chosen: dict[tuple[str, int], float]) -> None:
    """``segkit-train`` of the demo for a fixed time; its training rate against the plain loop."""
    from omegaconf import OmegaConf

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "demo"
        script = "import sys; from segkit.cli import train; sys.argv[0] = 'segkit-train'; train()"
        command = [sys.executable, "-c", script, f"hydra.run.dir={run_dir}", "model=mobilenet_unet",
                   f"data.image_size={sizes.demo_size}", f"data.size={sizes.demo_size}", "trainer.max_epochs=1000",
                   f"data.batch_size={sizes.sides.get(sizes.demo_size, 8)}",
                   f"trainer.max_time=00:00:00:{sizes.demo_seconds:02d}",
                   f"trainer.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}"]
        started = time.perf_counter()
        result = subprocess.run(command, cwd=tmp, capture_output=True, text=True, timeout=sizes.demo_seconds + 240,
                                env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(
                                    filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))})
        wall = time.perf_counter() - started
        if result.returncode != 0:
            report.line(f"demo segkit-train failed ({result.returncode}): {result.stderr.strip()[-600:]}")
            return
        metrics = json.loads((run_dir / "metrics.json").read_text())
        steps = int((metrics.get("history") or [{}])[-1].get("step") or 0)
        batch = int(OmegaConf.load(run_dir / "config.yaml").data.batch_size)
    epochs = int(metrics["epochs_run"])
    report.line(f"demo: segkit-train model=mobilenet_unet at {sizes.demo_size} px for {sizes.demo_seconds} s "
                f"({metrics['precision']}): {epochs} epoch{'s' * (epochs != 1)}, {steps} steps of batch {batch}, "
                f"best val/dice {metrics['best'].get('val/dice', float('nan')):.3f}; {wall:.0f} s with the process start")
    key = ("mobilenet_unet", sizes.demo_size)
    if steps < MIN_DEMO_STEPS:
        report.line(f"  demo rate: not compared, {steps} steps are too few (fewer than {MIN_DEMO_STEPS}: the data set-up "
                    "and validation took the time, or the machine is busy)")
    elif key in chosen:
        report.compare(f"  demo training images/s over the whole run (data set-up, loader, validation, checkpoints) "
                       f"vs the plain loop at {sizes.demo_size} px", steps * batch / float(metrics["wall_time_s"]),
                       chosen[key], "images/s")


SECTIONS = ("precisions", "loader", "window", "demo", "memory")


def _device(text: str) -> torch.device:
    if text != "cpu" and not (text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit())):
        raise argparse.ArgumentTypeError(f"{text!r}: give cuda, cuda:N or cpu")
    return torch.device(text)


def _budget(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text}: the budget must be a positive number of seconds (e.g. 300)")
    return value


def _workers(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of loader workers, 0 or more")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu_check", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n")[0].replace("\n", " "),
        epilog="Every line: ours = the setting named first, baseline = the one after 'vs', ratio = ours / baseline "
               "(rates: > 1 means the first is faster). A section that finished ends with 'gpu_check done'; "
               "a file without that line was cut off.")
    parser.add_argument("--device", type=_device, default=torch.device("cuda"), help="cuda (default), cuda:N or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (what the test suite runs on a CPU)")
    parser.add_argument("--models", nargs="+", choices=FULL.models, default=None,
                        help=f"models of the precision lines (default: {' '.join(FULL.models)})")
    parser.add_argument("--all-modes", action="store_true",
                        help="all 8 precision modes (default: the fp32 baseline, TF32 + channels-last and both mixed "
                             "precisions with channels-last; each mode costs ~25 s of autotuning on a GPU)")
    parser.add_argument("--compile", action="store_true", help="add torch.compile lines (compilation untimed)")
    parser.add_argument("--batch-search", action="store_true", help="search the largest batch beyond the cap of 64")
    parser.add_argument("--workers", type=_workers, default=min(8, os.cpu_count() or 1),
                        help="loader workers of the loader section (default: the cores, at most 8)")
    parser.add_argument("--skip", nargs="+", default=[], choices=SECTIONS, metavar="SECTION",
                        help=f"sections to leave out: {', '.join(SECTIONS)}")
    parser.add_argument("--budget-s", type=_budget, default=420.0,
                        help="no new section starts after this many seconds (default 420; the one running finishes)")
    parser.add_argument("--results", type=Path, default=None,
                        help="the markdown file the lines are appended to as they are measured (default: "
                             "bench/RESULTS.md on CUDA; on a CPU nothing is written unless given). On a lent GPU "
                             "give a file under $OUT, so a run cut off brings back what it measured")
    args = parser.parse_args(argv)
    device = args.device
    results = args.results if args.results is not None else (RESULTS if device.type == "cuda" else None)
    if results is not None:
        try:
            results.parent.mkdir(parents=True, exist_ok=True)
            with results.open("a"):
                pass
        except OSError as err:
            parser.error(f"--results {results}: cannot write there ({err.strerror or type(err).__name__}); "
                         "give a file in a writable folder, e.g. --results $OUT/gpu_check.md")
    from segkit.quiet import silence_known_noise

    silence_known_noise()
    sizes = QUICK if args.quick else FULL
    if args.all_modes:
        sizes = replace(sizes, modes=())
    report = Report(f"GPU check (bench/gpu_check.py, {device.type}{', quick' if args.quick else ''})", live=True,
                    results=results)
    started = time.perf_counter()
    if not check_machine(report, device):
        return 2
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    others = [name for name in SECTIONS if name != "precisions" and name not in args.skip]
    share = PRECISIONS_SHARE if others else 1.0
    report.line(f"time budget {args.budget_s:g} s (--budget-s): no line starts after it, nor a precision line after "
                f"{share:.0%} of it; each line is ours vs the baseline after 'vs', ratio = ours / baseline "
                "(> 1: ours faster)")
    deadline = started + args.budget_s
    if args.models:
        sizes = replace(sizes, models=tuple(args.models))
    if "precisions" not in args.skip:
        chosen = precisions(report, device, sizes, args.compile, started + share * args.budget_s)
    else:
        chosen = {}
    sections = [("loader", lambda: loader(report, device, sizes, args.workers)),
                ("window", lambda: sliding_window(report, device, sizes)),
                ("demo", lambda: demo(report, device, sizes, chosen)),
                ("memory", lambda: memory(report, device, sizes, args.batch_search))]
    for name, section in sections:
        if name in args.skip:
            continue
        if time.perf_counter() > deadline:
            report.line(f"{name}: skipped, the time budget (--budget-s) is spent")
            continue
        section()
    report.line(f"gpu_check done in {time.perf_counter() - started:.0f} s")
    report.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
