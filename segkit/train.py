"""The training entry point behind ``segkit-train``: config in, trained run directory out.

Wiring only: resolve the machine, find the run to continue (:mod:`segkit.resume`), own the
run directory (:mod:`segkit.rundir`), write the config, then fit one stage
(:mod:`segkit.stage`) or a staged recipe (:mod:`segkit.recipes`) and write ``metrics.json``.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from segkit.data.io import write_json_atomic
from segkit.recipes import run_recipe
from segkit.resume import UNRESOLVED_CONFIG, has_last_checkpoint, locate_resume
from segkit.rundir import claim_run_dir, process_rank, release_run_dir
from segkit.runtime import MACHINE_KEYS, resolve_machine
from segkit.stage import fit_stage

__all__ = ["format_summary", "run_training"]

log = logging.getLogger(__name__)


def run_training(cfg: DictConfig) -> dict[str, Any]:
    """Train as ``cfg`` says; write config.yaml, checkpoints/, logs and metrics.json into the run dir.

    Returns the content of ``metrics.json``.
    """
    started = time.perf_counter()
    found = locate_resume(cfg)  # compared on the settings asked for (accelerator: auto ...), not this machine's
    resuming = found is not None
    if resuming:
        cfg, run_dir = found
        with open_dict(cfg):
            cfg.paths.run_dir = str(run_dir)
        log.info("resuming the run in %s", run_dir)
    else:
        run_dir = Path(cfg.paths.run_dir)
    with open_dict(cfg):
        requested, machine = resolve_machine(cfg.trainer)
    if rank_zero_only.rank == 0:
        log.info(machine)
    if resuming:
        _say_if_machine_changed(run_dir, cfg)
    # one live run per directory (segkit.rundir); also the directory a resume continues in
    claim_run_dir(run_dir, "resume" if resuming else "hydra.run.dir")
    continued_log = _continue_run_log(run_dir) if resuming else None
    try:
        return _train_in(cfg, run_dir, resuming, started, requested)
    finally:
        if continued_log is not None:
            logging.getLogger().removeHandler(continued_log)
            continued_log.close()
        release_run_dir(run_dir)


def _continue_run_log(run_dir: Path) -> logging.Handler | None:
    """A resumed run's log goes on in its own ``train.log`` (after a line saying so), as well
    as in the resume command's Hydra folder; rank 0 only."""
    if process_rank() != 0:
        return None
    root = logging.getLogger()
    own = next((h for h in root.handlers if isinstance(h, logging.FileHandler)), None)
    path = run_dir / "train.log"
    if own is not None and Path(own.baseFilename).resolve() == path.resolve():
        return None  # hydra.run.dir is the run itself: its log already continues
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    if own is not None:
        handler.setFormatter(own.formatter)
    handler.setLevel(logging.INFO)
    root.addHandler(handler)
    where = f" (this command's own log: {own.baseFilename})" if own is not None else ""
    log.info("---- resumed at %s by: %s%s", time.strftime("%Y-%m-%d %H:%M:%S"), " ".join(sys.argv), where)
    return handler


def _say_if_machine_changed(run_dir: Path, cfg: DictConfig) -> None:
    """A run resumed on another machine trains as this one resolves its settings (a CPU run
    continued on a GPU trains on the GPU); say so when that differs from the run's start."""
    try:
        before = OmegaConf.load(run_dir / "config.yaml").trainer
    except (OSError, ValueError, AttributeError):
        return
    changed = [f"{key} {before.get(key)} -> {cfg.trainer[key]}" for key in MACHINE_KEYS
               if str(before.get(key)) != str(cfg.trainer[key])]
    if changed and rank_zero_only.rank == 0:
        log.warning("resume: this machine resolves the run's settings otherwise than where it started (%s); "
                    "training goes on with this machine's",
                    ", ".join(changed))


def _train_in(cfg: DictConfig, run_dir: Path, resuming: bool, started: float,
              requested: dict[str, Any]) -> dict[str, Any]:
    if not resuming:
        if has_last_checkpoint(run_dir) or any((run_dir / "checkpoints").glob("*.ckpt")):
            raise FileExistsError(
                f"{run_dir} already holds checkpoints: choose a new run directory (hydra.run.dir=...) "
                f"rather than overwrite an earlier run, or continue it with resume={run_dir}"
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        if rank_zero_only.rank == 0:
            (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
            unresolved = OmegaConf.to_container(cfg, resolve=False)
            unresolved["paths"] = {"run_dir": str(run_dir)}  # ${hydra:...} cannot be resolved later
            unresolved["trainer"].update(requested)  # resolved again where the run is resumed
            (run_dir / UNRESOLVED_CONFIG).write_text(OmegaConf.to_yaml(OmegaConf.create(unresolved)))
    L.seed_everything(cfg.seed, workers=True)

    if cfg.get("recipe"):
        summary = run_recipe(cfg, run_dir, resume=resuming)
    else:
        summary = fit_stage(cfg, run_dir, resume=resuming)
    summary["run_dir"] = str(run_dir)
    summary["wall_time_s"] = round(time.perf_counter() - started, 1)
    if rank_zero_only.rank == 0:
        write_json_atomic(run_dir / "metrics.json", summary)
        print(format_summary(summary))
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """A short plain-text table of the best and final validation metrics, and the paths."""
    best, final = summary["best"] or {}, summary["final"] or {}
    if not any(k.startswith("val/") for k in final):
        return "\n".join([
            f"no validation metrics (no validation split); {summary.get('epochs_run', 0)} epoch(s), precision "
            f"{summary['precision']}, {summary['wall_time_s']} s",
            f"run dir:         {summary['run_dir']}",
            f"last checkpoint: {summary['last_checkpoint']}",
            f"metrics:         {Path(summary['run_dir']) / 'metrics.json'}",
        ])
    keys = [k for k in final if k.startswith("val/") and "/" not in k[4:]]
    keys += sorted(k for k in final if k.startswith("val/") and "/" in k[4:])
    width = max([len(k) for k in keys] + [len("metric")])
    lines = []
    for stage in summary.get("stages", []):
        lines.append(f"stage {stage['stage']} {stage['name']:<14} {stage['task']:<14} size {stage['size']!s:<10} "
                     f"epochs {stage['epochs']:<3} lr {float(stage['lr']):.3g}  best {stage['monitor']} {float(stage['best']):.4f}")
    if lines:
        lines.append("")
    # "at best": every metric at the epoch that was best by the monitored one (not each metric's
    # own best); epochs counted from 1, as the epoch lines count them
    lines += [f"{'metric':<{width}}  {'at best':>8}  {'final':>8}", "-" * (width + 20)]
    for key in keys:
        lines.append(f"{key:<{width}}  {best.get(key, float('nan')):>8.4f}  {final.get(key, float('nan')):>8.4f}")
    lines.append(f"{'epoch':<{width}}  {int(best.get('epoch', -1)) + 1:>8}  {int(final.get('epoch', -1)) + 1:>8}")
    lines += [
        "",
        f"best by {summary['monitor']} ({summary['mode']}); precision {summary['precision']}; "
        f"{summary['wall_time_s']} s",
        f"run dir:         {summary['run_dir']}",
        f"best checkpoint: {summary['best_checkpoint']}",
        f"last checkpoint: {summary['last_checkpoint']}",
        f"metrics:         {Path(summary['run_dir']) / 'metrics.json'}",
    ]
    lines += [f"{name + ':':<16} {where}" for name, where in summary.get("trackers", [])]
    return "\n".join(lines)
