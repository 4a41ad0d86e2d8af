"""Staged training: a list of stages, each starting from the previous stage's best checkpoint.

A recipe (``recipe.stages`` in the config, see ``conf/experiment/airbus_staged.yaml``) is a
list of stages with

- ``name``: folder name of the stage (``stages/NN_<name>/`` in the run directory);
- ``task``: ``segmentation`` or ``classification`` (image-level "has foreground?" on the
  encoder's classification head — the Airbus project's ship / no-ship pretraining);
- ``epochs``; ``image_size`` (``null`` = the dataset's); ``background_ratio`` (share of
  foreground-free images drawn per epoch, for datasets that sample them); ``batch_size``;
- ``lr`` (``null`` = the optimizer's) or ``lr_find: true`` (Lightning's LR finder, or a
  mapping of its arguments such as ``num_training``);
- ``monitor``: ``{metric, mode}`` picking the stage's best checkpoint (default: the run's
  ``monitor`` for segmentation, ``val/acc`` max for classification).

Each finished stage adds a row to ``stages.csv`` (stage, name, task, size, epochs, lr,
monitor, best, checkpoint). ``resume=`` skips the finished stages and continues the
current one from its ``last.ckpt``.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from segkit.data.io import write_bytes_atomic
from segkit.stage import fit_stage

__all__ = ["STAGES_FILE", "Stage", "parse_stages", "read_stages_csv", "run_recipe", "stage_config"]

STAGES_FILE = "stages.csv"
COLUMNS = ["stage", "name", "task", "size", "epochs", "lr", "monitor", "best", "checkpoint"]


@dataclass
class Stage:
    name: str
    task: str = "segmentation"
    epochs: int = 1
    image_size: int | list[int] | None = None
    background_ratio: float | None = None
    batch_size: int | None = None
    lr: float | None = None
    lr_find: bool | dict[str, Any] = False
    monitor: dict[str, str] | None = field(default=None)


def parse_stages(recipe: Any) -> list[Stage]:
    """Validate ``recipe.stages`` into :class:`Stage` objects; errors name the stage and key."""
    raw = OmegaConf.to_container(recipe, resolve=True) if isinstance(recipe, DictConfig) else recipe
    stages = raw.get("stages") if isinstance(raw, dict) else None
    if not stages:
        raise ValueError("recipe.stages must be a non-empty list of stages")
    known = {f.name for f in fields(Stage)}
    out = []
    for i, entry in enumerate(stages):
        unknown = sorted(set(entry) - known)
        if unknown:
            raise ValueError(f"recipe stage {i}: unknown key(s) {', '.join(unknown)}; a stage takes {', '.join(sorted(known))}")
        stage = Stage(**{"name": f"stage{i}", **entry})
        if stage.task not in ("segmentation", "classification"):
            raise ValueError(f"recipe stage {i} ({stage.name}): task must be segmentation or classification, got {stage.task!r}")
        if stage.lr is not None and stage.lr_find:
            raise ValueError(f"recipe stage {i} ({stage.name}): give lr or lr_find, not both")
        out.append(stage)
    return out


def stage_config(cfg: DictConfig, stage: Stage) -> tuple[DictConfig, dict[str, Any]]:
    """The run's config with the stage's epochs, lr and monitor, and the datamodule overrides."""
    stage_cfg = cfg.copy()
    with open_dict(stage_cfg):
        stage_cfg.trainer.max_epochs = stage.epochs
        if stage.lr is not None:
            stage_cfg.optimizer.lr = stage.lr
        if stage.monitor is not None:
            stage_cfg.monitor = stage.monitor
        elif stage.task == "classification":
            stage_cfg.monitor = {"metric": "val/acc", "mode": "max"}  # callbacks follow ${monitor.*}
    data: dict[str, Any] = {}
    if stage.image_size is not None:
        data["image_size"] = stage.image_size
    if stage.batch_size is not None:
        data["batch_size"] = stage.batch_size
    if stage.background_ratio is not None:
        if "background_ratio" not in cfg.data:
            raise ValueError(f"recipe stage {stage.name}: dataset {cfg.data._target_} has no background_ratio to set")
        data["background_ratio"] = stage.background_ratio
    return stage_cfg, data


def read_stages_csv(run_dir: Path) -> list[dict[str, str]]:
    path = run_dir / STAGES_FILE
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _write_stages_csv(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows({k: row[k] for k in COLUMNS} for row in rows)
    write_bytes_atomic(run_dir / STAGES_FILE, buffer.getvalue().encode())


def run_recipe(cfg: DictConfig, run_dir: Path, resume: bool = False) -> dict[str, Any]:
    """Run every stage in order; return the last stage's summary with ``stages`` added."""
    stages = parse_stages(cfg.recipe)
    rows: list[dict[str, Any]] = read_stages_csv(run_dir) if resume else []
    previous_best = rows[-1]["checkpoint"] if rows else None
    summary: dict[str, Any] = {}
    for index, stage in enumerate(stages):
        if index < len(rows):
            continue  # finished before the interruption
        stage_dir = run_dir / "stages" / f"{index:02d}_{stage.name}"
        stage_cfg, data = stage_config(cfg, stage)
        continuing = resume and (stage_dir / "checkpoints" / "last.ckpt").is_file()
        summary = fit_stage(
            stage_cfg, stage_dir, stage_index=index, data_overrides=data,
            module_overrides={"task": stage.task},
            init_checkpoint=None if continuing else previous_best,
            lr_find=stage.lr_find, resume=continuing,
        )
        best = summary["best"] or {}
        previous_best = summary["best_checkpoint"] or summary["last_checkpoint"]
        rows.append({
            "stage": index, "name": stage.name, "task": stage.task,
            "size": stage.image_size if stage.image_size is not None else cfg.data.get("image_size"),
            "epochs": stage.epochs, "lr": summary["lr"], "monitor": summary["monitor"],
            "best": best.get(summary["monitor"], float("nan")), "checkpoint": previous_best,
        })
        _write_stages_csv(run_dir, rows)
    if not summary:  # every stage had finished: report the last one from its files
        summary = {"monitor": rows[-1]["monitor"], "mode": cfg.monitor.mode, "best": None, "final": None,
                   "best_checkpoint": rows[-1]["checkpoint"], "last_checkpoint": rows[-1]["checkpoint"],
                   "precision": cfg.trainer.precision}
    summary["stages"] = rows
    return summary
