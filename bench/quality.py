"""Segmentation quality on real data (``make quality``).

For each experiment: ``segkit-train experiment=<name>`` on the real samples in
``../shared/realdata``, then ``segkit-eval`` of the best checkpoint on the validation split
(per-class Dice / IoU over all validation pixels, and the worst images as panels), next to
two baselines scored on the same images by the same code (``segkit.evaluate.EvalScores``):

- **all class 0**: every pixel predicted as class 0 (background; for the membrane slices
  class 0 is the membrane);
- **per-pixel prior**: every pixel predicted as the class most frequent at that position
  over the training masks (the best a model that ignores the image can do per position).

Results (machine, wall time, the exact command, the table) are appended to
``bench/RESULTS.md``; the run directories stay under ``outputs/quality/``.

    python -m bench.quality [--experiments membrane_unet oilseep_unet] [--set trainer.max_epochs=200]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import REALDATA, ROOT, Report
from segkit.data.datasets import label_count

__all__ = ["EXPERIMENTS", "Experiment", "baseline_scores", "main", "run_experiment"]


@dataclass(frozen=True)
class Experiment:
    """A quality run: the experiment config, its real data and the overrides the data needs."""

    name: str
    data: str  # folder under ../shared/realdata
    overrides: tuple[str, ...] = ()
    notes: str = ""


EXPERIMENTS = {
    "membrane_unet": Experiment(
        "membrane_unet", "membrane",
        notes="ISBI 2012 EM slices, 24 train / 4 validation (26-29), 512x512 grayscale; trained on 256 px crops",
    ),
    "oilseep_unet": Experiment(
        "oilseep_unet", "oilseep", ("data.images_dir=images", "data.masks_dir=masks", "trainer.max_epochs=50"),
        notes="SAR oil seeps, 138 real 256x256 uint16 tiles of 17 scenes, 8 classes; 3 whole scenes (28 tiles) "
              "held out for validation (seed 42); 50 epochs to fit 15 CPU minutes (the recipe's 60 with "
              "--set trainer.max_epochs=60)",
    ),
}


@dataclass
class QualityResult:
    experiment: str
    command: str
    wall_s: float
    run_dir: Path
    eval_dir: Path
    scores: dict[str, Any]
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)


def _console(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _run(command: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, text=True, capture_output=True)
    if result.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return time.perf_counter() - started


def baseline_scores(ckpt: Path) -> dict[str, dict[str, Any]]:
    """``{"all class 0": summary, "per-pixel prior": summary}`` on the checkpoint's validation split."""
    from hydra.utils import instantiate

    from segkit.checkpoint import load_checkpoint
    from segkit.evaluate import EvalScores

    loaded = load_checkpoint(ckpt)
    datamodule = instantiate(loaded.data, _convert_="all")
    datamodule.prepare_data()
    items = datamodule.items()
    train_idx, val_idx = datamodule.split(items)
    train = datamodule.raw_dataset([items[i] for i in train_idx])
    val = datamodule.raw_dataset([items[i] for i in val_idx])
    k = label_count(loaded.num_classes)
    hp = loaded.module.hparams
    counts: np.ndarray | None = None
    for index in range(len(train)):
        mask = train.load_mask(index).astype(np.int64)
        if counts is None:
            counts = np.zeros((k, *mask.shape), np.int64)
        if mask.shape != counts.shape[1:]:
            raise ValueError(f"{train.mask_paths[index]}: the per-pixel prior needs masks of one size, {counts.shape[1:]}")
        np.add.at(counts, (np.clip(mask, 0, k - 1), *np.indices(mask.shape)), 1)
    prior = counts.argmax(0).astype(np.uint8)
    out = {}
    for name, predict in (("all class 0", lambda m: np.zeros_like(m)), ("per-pixel prior", lambda m: prior)):
        scores = EvalScores(loaded.class_names, hp.ignore_index, bool(hp.include_background) and loaded.num_classes > 1)
        for index in range(len(val)):
            mask = val.load_mask(index)
            scores.add(val.names[index], mask, predict(mask))
        out[name] = scores.summary()
    return out


def run_experiment(experiment: Experiment, root: Path, output: Path, extra: list[str] | tuple[str, ...] = (),
                   worst: int = 4) -> QualityResult:
    """Train, evaluate and score the baselines of one experiment; nothing is overwritten."""
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    run_dir = output / f"{experiment.name}_{stamp}"
    overrides = [f"experiment={experiment.name}", f"data.root={root}", *experiment.overrides, *extra]
    command = [_console("segkit-train"), *overrides, f"hydra.run.dir={run_dir}"]
    wall = _run(command)
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    if not ckpt.is_file():
        ckpt = run_dir / "checkpoints" / "last.ckpt"
    eval_dir = run_dir / "eval_val"
    _run([_console("segkit-eval"), f"ckpt={ckpt}", f"output={eval_dir}", f"worst={worst}"])
    scores = json.loads((eval_dir / "scores.json").read_text())
    shown = " ".join(["segkit-train", *overrides])
    return QualityResult(experiment.name, shown, wall, run_dir, eval_dir, scores, baseline_scores(ckpt))


def format_table(result: QualityResult) -> list[str]:
    """A markdown table: per class (and the foreground mean) Dice / IoU of the model and the baselines."""
    columns = {"segkit": result.scores, **result.baselines}
    classes = list(result.scores["classes"])
    header = "| class | " + " | ".join(f"{name} Dice | {name} IoU" for name in columns) + " |"
    lines = [header, "|" + "---|" * (1 + 2 * len(columns))]

    def cell(summary: dict[str, Any], name: str | None, key: str) -> str:
        value = summary["classes"][name][key] if name else summary["mean"][key]
        return "–" if value is None else f"{value:.3f}"

    for name in classes:
        lines.append(f"| {name} | " + " | ".join(f"{cell(s, name, 'dice')} | {cell(s, name, 'iou')}" for s in columns.values()) + " |")
    lines.append("| **mean** | " + " | ".join(f"{cell(s, None, 'dice')} | {cell(s, None, 'iou')}" for s in columns.values()) + " |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--experiments", nargs="+", default=list(EXPERIMENTS), choices=list(EXPERIMENTS))
    parser.add_argument("--set", nargs="*", default=[], help="extra overrides for every run (e.g. trainer.max_epochs=200)")
    parser.add_argument("--output", default=str(ROOT / "outputs" / "quality"))
    args = parser.parse_args(argv)
    if not REALDATA.is_dir():
        raise SystemExit(f"make quality needs the real samples in {REALDATA} (../shared/realdata beside the repository)")
    for name in args.experiments:
        experiment = EXPERIMENTS[name]
        report = Report(f"Quality on real data: {name} (bench/quality.py)")
        print(f"== {name}: training (see {args.output})", flush=True)
        result = run_experiment(experiment, REALDATA / experiment.data, Path(args.output), args.set)
        report.line(f"{experiment.notes}")
        report.line(f"command: {result.command}")
        report.line(f"wall time: {result.wall_s / 60:.1f} min training; evaluation {result.scores.get('seconds', 0):.1f} s; "
                    f"run dir {result.run_dir.relative_to(ROOT) if result.run_dir.is_relative_to(ROOT) else result.run_dir}")
        report.line(f"validation: {len(json.loads((result.eval_dir / 'scores.json').read_text()).get('worst', []))} worst panels in "
                    f"{result.eval_dir / 'worst'}")
        table = format_table(result)
        print("\n".join(table), flush=True)
        report.markdown += ["", f"Validation, pooled over all pixels (mean over {', '.join(result.scores['mean_over'])}):", "", *table]
        report.save()


if __name__ == "__main__":
    main()
