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

    python -m bench.quality [--experiments membrane_unet membrane_planned oilseep_unet_cv ...] [--set trainer.max_epochs=200]

Experiments with ``folds`` are K-fold cross-validations by group, scored on the pooled
out-of-fold predictions (``segkit-eval ckpt=<sweep>``); those with ``plan`` are planned by
``segkit-plan`` first (into the run folder) and trained from the plan. Every evaluation also
fits the per-class post-processing (``postprocess=fit``), reported separately.
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
from segkit.checkpoint import checkpoint_paths
from segkit.data.datasets import label_count

__all__ = ["EXPERIMENTS", "Experiment", "baseline_scores", "main", "run_experiment"]


@dataclass(frozen=True)
class Experiment:
    """A quality run: the recipe (an experiment config, or a segkit-plan of the data), its real
    data, the overrides the data needs, and how it is validated (a split, or K folds).

    ``plan``: segkit-plan arguments (``dataset=...``, ``data.*``, ``imagery=``...): the recipe is
    planned into the run folder and trained from there. ``folds``: K-fold cross-validation by
    group, scored on the out-of-fold predictions pooled (``segkit-eval ckpt=<sweep>``)."""

    name: str
    data: str  # folder under ../shared/realdata
    overrides: tuple[str, ...] = ()
    notes: str = ""
    experiment: str | None = None  # conf/experiment/<experiment>.yaml (default: name)
    plan: tuple[str, ...] | None = None
    folds: int | None = None

    @property
    def recipe(self) -> str:
        return self.experiment or self.name


_OILSEEP_DATA = ("data.images_dir=images", "data.masks_dir=masks")
_MEMBRANE_DATA = ("data.images_dir=image", "data.masks_dir=label", "data.mask_encoding=binary",
                  "data.class_names=[membrane,cell]", "data.num_classes=1", "data.in_channels=1", "data.split=list",
                  'data.val_list=["26","27","28","29"]')
_OILSEEP_CV = ("SAR oil seeps, 138 real 256x256 uint16 tiles of 17 scenes, 8 classes; 5-fold cross-validation by "
               "scene (seed 42), scored on the out-of-fold predictions pooled (every tile once, by the fold that "
               "did not train on it)")

EXPERIMENTS = {
    "membrane_unet": Experiment(
        "membrane_unet", "membrane",
        notes="ISBI 2012 EM slices, 24 train / 4 validation (26-29), 512x512 grayscale; trained on 256 px crops",
    ),
    "membrane_planned": Experiment(
        "membrane_planned", "membrane", ("monitor.metric=val/dice/membrane",),
        notes="the same slices and split, the recipe planned by segkit-plan (15 min budget, imagery=microscopy); "
              "best checkpoint by the membrane Dice, as the README says for label 0 = the class that matters",
        plan=("dataset=folder", *_MEMBRANE_DATA, "imagery=microscopy", "name=membrane", "budget=15min"),
    ),
    "oilseep_unet": Experiment(
        "oilseep_unet", "oilseep", (*_OILSEEP_DATA, "trainer.max_epochs=50"),
        notes="SAR oil seeps, 138 real 256x256 uint16 tiles of 17 scenes, 8 classes; 3 whole scenes (28 tiles) "
              "held out for validation (seed 42); 50 epochs to fit 15 CPU minutes (the recipe's 60 with "
              "--set trainer.max_epochs=60)",
    ),
    "oilseep_unet_cv": Experiment(
        "oilseep_unet_cv", "oilseep", (*_OILSEEP_DATA, "trainer.max_epochs=50"), experiment="oilseep_unet", folds=5,
        notes=f"{_OILSEEP_CV}; the shipped Focal Tversky recipe, 50 epochs",
    ),
    "oilseep_dice_ce_cv": Experiment(
        "oilseep_dice_ce_cv", "oilseep", _OILSEEP_DATA, experiment="oilseep_dice_ce", folds=5,
        notes=f"{_OILSEEP_CV}; nnU-Net's defaults (Dice + CE, repeat-factor sampling, z-score, poly LR, EMA), 50 epochs",
    ),
    "oilseep_planned_cv": Experiment(
        "oilseep_planned_cv", "oilseep", (), folds=5,
        notes=f"{_OILSEEP_CV}; the recipe planned by segkit-plan (15 min budget)",
        plan=("dataset=oilseep", *_OILSEEP_DATA, "name=oilseep", "budget=15min"),
    ),
}


#: what ``make quality`` runs: each dataset's hand-written and planned recipes (and, for the oil
#: seeps, the shipped recipe they must beat), validated on groups held out
DEFAULT = ("membrane_unet", "membrane_planned", "oilseep_unet_cv", "oilseep_dice_ce_cv", "oilseep_planned_cv")


@dataclass
class QualityResult:
    experiment: str
    command: str
    wall_s: float
    run_dir: Path
    eval_dir: Path
    scores: dict[str, Any]
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)
    folds: int | None = None


def _console(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _run(command: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, text=True, capture_output=True)
    if result.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return time.perf_counter() - started


def baseline_scores(ckpts: Path | list[Path]) -> dict[str, dict[str, Any]]:
    """``{"all class 0": summary, "per-pixel prior": summary}`` on each checkpoint's validation
    split, pooled over the checkpoints (the folds of a cross-validation: each fold's prior is
    taken from its own training masks)."""
    from hydra.utils import instantiate

    from segkit.checkpoint import load_checkpoint
    from segkit.evaluate import EvalScores

    ckpts = [ckpts] if isinstance(ckpts, Path) else list(ckpts)
    scores: dict[str, Any] = {}
    for ckpt in ckpts:
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
        for name, predict in (("all class 0", lambda m: np.zeros_like(m)), ("per-pixel prior", lambda m, p=prior: p)):
            if name not in scores:
                scores[name] = EvalScores(loaded.class_names, hp.ignore_index,
                                          bool(hp.include_background) and loaded.num_classes > 1)
            for index in range(len(val)):
                mask = val.load_mask(index)
                scores[name].add(val.names[index], mask, predict(mask))
    return {name: s.summary() for name, s in scores.items()}


def _plan(experiment: Experiment, root: Path, run_dir: Path) -> tuple[list[str], str]:
    """Run segkit-plan into ``run_dir/plans/experiment/``; the segkit-train arguments that use it."""
    plans = run_dir / "plans"
    args = [*experiment.plan, f"data.root={root}", f"output={plans / 'experiment'}/"]
    _run([_console("segkit-plan"), *args])
    name = next(a.split("=", 1)[1] for a in experiment.plan if a.startswith("name="))
    shown = "segkit-plan " + " ".join(args)
    return ["--config-dir", str(plans), f"experiment={name}_planned"], shown


def run_experiment(experiment: Experiment, root: Path, output: Path, extra: list[str] | tuple[str, ...] = (),
                   worst: int = 4) -> QualityResult:
    """Train (every fold), evaluate and score the baselines of one experiment; nothing is overwritten."""
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    run_dir = output / f"{experiment.name}_{stamp}"
    shown_plan = ""
    if experiment.plan is not None:
        recipe, shown_plan = _plan(experiment, root, run_dir)
    else:
        recipe = [f"experiment={experiment.recipe}"]
    overrides = [*recipe, f"data.root={root}", *experiment.overrides, *extra]
    if experiment.folds:
        folds = ",".join(map(str, range(experiment.folds)))
        overrides += [f"data.folds={experiment.folds}", f"data.fold={folds}"]
        command = [_console("segkit-train"), "-m", *overrides, f"hydra.sweep.dir={run_dir / 'folds'}"]
    else:
        command = [_console("segkit-train"), *overrides, f"hydra.run.dir={run_dir}"]
    wall = _run(command)
    if experiment.folds:
        ckpt_arg = run_dir / "folds"
        eval_dir = run_dir / "eval_oof"
        ckpts = checkpoint_paths(str(ckpt_arg))
    else:
        ckpt_arg = run_dir / "checkpoints" / "best.ckpt"
        if not ckpt_arg.is_file():
            ckpt_arg = run_dir / "checkpoints" / "last.ckpt"
        eval_dir = run_dir / "eval_val"
        ckpts = [ckpt_arg]
    _run([_console("segkit-eval"), f"ckpt={ckpt_arg}", f"output={eval_dir}", f"worst={worst}", "postprocess=fit"])
    scores = json.loads((eval_dir / "scores.json").read_text())
    shown = " ".join(["segkit-train", *(["-m"] if experiment.folds else []), *overrides])
    if shown_plan:
        shown = f"{shown_plan} && {shown}"
    return QualityResult(experiment.name, shown, wall, run_dir, eval_dir, scores, baseline_scores(ckpts), experiment.folds)


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
    after = result.scores.get("postprocessing")
    if after:
        lines += ["", "Post-processing fitted on these same predictions (per-class minimum component size; optimistic):", "",
                  "| class | min size (px) | Dice before | Dice after | IoU after |", "|---|---:|---:|---:|---:|"]
        for name, fitted in after["classes"].items():
            lines.append(f"| {name} | {fitted['min_size']} | {cell(result.scores, name, 'dice')} | "
                         f"{cell(after['scores_after'], name, 'dice')} | {cell(after['scores_after'], name, 'iou')} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--experiments", nargs="+", default=list(DEFAULT), choices=list(EXPERIMENTS))
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
        per_fold = f" ({result.wall_s / 60 / result.folds:.1f} min per fold)" if result.folds else ""
        report.line(f"wall time: {result.wall_s / 60:.1f} min training{per_fold}; evaluation {result.scores.get('seconds', 0):.1f} s; "
                    f"run dir {result.run_dir.relative_to(ROOT) if result.run_dir.is_relative_to(ROOT) else result.run_dir}")
        report.line(f"validation: {len(json.loads((result.eval_dir / 'scores.json').read_text()).get('worst', []))} worst panels in "
                    f"{result.eval_dir / 'worst'}")
        table = format_table(result)
        print("\n".join(table), flush=True)
        scope = ("Out-of-fold predictions of all folds, pooled over all pixels" if result.folds else
                 "Validation, pooled over all pixels")
        report.markdown += ["", f"{scope} (mean over {', '.join(result.scores['mean_over'])}):", "", *table]
        report.save()


if __name__ == "__main__":
    main()
