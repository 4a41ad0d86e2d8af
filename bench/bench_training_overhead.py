"""Training-loop overhead: SegmentationModule under Lightning's Trainer vs a plain PyTorch loop.

Both train the same mobilenet_unet (same initial weights) with BCE+Dice and AdamW on the
same in-memory batches (8 x 3 x 256 x 256), bf16 autocast and channels-last on CPU (the
CLI's default here). Ours runs with what a real run has on: the progress bar, the CSV
logger, per-step loss logging, the metrics history, the epoch seeder, checkpointing and
LR monitoring. Steps after a warm-up are timed; the ratio is plain / ours (1 = no overhead).

    python -m bench.bench_training_overhead [--steps 30] [--warmup 5] [--size 256] [--batch 8]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from bench.common import Report
from segkit.callbacks import EpochSeeder, MetricsHistory
from segkit.module import SegmentationModule


class InMemory(Dataset):
    """``length`` samples cycling over a few in-memory images: one long epoch, so that
    epoch-end work (checkpointing) stays out of the timed steps, as in a real epoch."""

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, length: int) -> None:
        self.images, self.masks, self.length = images, masks, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i % len(self.images)], "mask": self.masks[i % len(self.masks)]}


class StepTimer(L.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.started, self.steps = warmup, None, 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.started is not None:
            self.steps += 1
            self.elapsed = time.perf_counter() - self.started


def make_module() -> SegmentationModule:
    torch.manual_seed(0)
    return SegmentationModule(model={"name": "mobilenet_unet"}, loss={"name": "bce_dice"},
                              optimizer={"_target_": "torch.optim.AdamW", "lr": 1e-3}, num_classes=1)


def plain_loop(loader: DataLoader, args: argparse.Namespace) -> float:
    """s/step of a hand-written loop: autocast, backward, AdamW."""
    module = make_module().train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    total = args.steps + args.warmup
    step, started = 0, None
    while step < total:
        for batch in loader:
            if step == args.warmup:
                started = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = module.loss_fn(module(batch["image"]), batch["mask"])
            loss.backward()
            optimizer.step()
            step += 1
            if step == total:
                break
    return (time.perf_counter() - started) / args.steps


def segkit_trainer(loader: DataLoader, args: argparse.Namespace) -> float:
    """s/step of SegmentationModule under the Trainer, callbacks and loggers on."""
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    timer = StepTimer(args.warmup)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(
            accelerator="cpu", precision="bf16-mixed", max_steps=args.steps + args.warmup, limit_val_batches=0,
            logger=CSVLogger(tmp), log_every_n_steps=1, default_root_dir=tmp, enable_progress_bar=True,
            callbacks=[timer, MetricsHistory(), EpochSeeder(0), LearningRateMonitor(), ModelCheckpoint(dirpath=tmp)],
        )
        trainer.fit(make_module(), train_dataloaders=loader)
    return timer.elapsed / timer.steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="alternate the sides this often, keep each side's best")
    args = parser.parse_args()
    report = Report("Training-loop overhead (bench/bench_training_overhead.py)")
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch * 4, 3, args.size, args.size, generator=generator)
    masks = (torch.rand(args.batch * 4, args.size, args.size, generator=generator) > 0.9).long()
    dataset = InMemory(images, masks, length=args.batch * (args.steps + args.warmup + 1))
    loader = DataLoader(dataset, batch_size=args.batch, shuffle=False, num_workers=0)

    plain = min(plain_loop(loader, args) for _ in range(args.rounds))
    ours = min(segkit_trainer(loader, args) for _ in range(args.rounds))
    report.compare(f"train step {args.batch}x3x{args.size}x{args.size}, bf16 + channels-last ({args.steps} steps)",
                   ours, plain, "s/step", "<= 1.05x, i.e. ratio >= 0.95", higher_is_better=False)
    report.save()


if __name__ == "__main__":
    main()
