"""The training entry point behind ``segkit-train``: config in, trained run directory out."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf, open_dict

from segkit.data.class_stats import read_class_weights, write_json_atomic
from segkit.models import count_parameters
from segkit.module import SegmentationModule
from segkit.runtime import resolve_accelerator, resolve_precision

__all__ = ["MetricsHistory", "build_module", "run_training"]


class MetricsHistory(Callback):
    """Keeps every validation epoch's metrics (sanity checks excluded)."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        row.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})
        self.epochs.append(row)


def _container(cfg: DictConfig | None) -> Any:
    return None if cfg is None else OmegaConf.to_container(cfg, resolve=True)


def _best_epoch(history: list[dict[str, float]], monitor: str, mode: str) -> dict[str, float] | None:
    scored = [row for row in history if monitor in row and not math.isnan(row[monitor])]
    if not scored:
        return None
    pick = max if mode == "max" else min
    return pick(scored, key=lambda row: row[monitor])


def _expand_fast_dev_run(trainer_cfg: dict[str, Any]) -> dict[str, Any]:
    """Lightning's ``fast_dev_run`` switches checkpoints and loggers off; segkit's runs
    ``n`` train and val batches for one epoch through the full output path instead, so a
    quick check also proves the run directory gets written."""
    n = trainer_cfg.pop("fast_dev_run", False)
    if not n:
        return trainer_cfg
    n = 1 if n is True else int(n)
    trainer_cfg.update(
        max_epochs=1, max_steps=-1, limit_train_batches=n, limit_val_batches=n,
        num_sanity_val_steps=0, val_check_interval=1.0, log_every_n_steps=1,
    )
    return trainer_cfg


def resolve_loss_config(loss: dict[str, Any], num_classes: int, datamodule: Any = None) -> dict[str, Any]:
    """Replace ``weights: auto`` by the numbers in the dataset's ``class_stats.json``.

    The checkpoint then records the weights actually used, not a path that may move.
    """
    if loss.get("weights") != "auto":
        return loss
    loss = dict(loss)
    path = loss.pop("class_stats", None) or getattr(datamodule, "class_stats_path", None)
    loss["weights"] = read_class_weights(path, max(num_classes, 2))
    return loss


def build_module(cfg: DictConfig, datamodule: Any = None) -> SegmentationModule:
    return SegmentationModule(
        model=_container(cfg.model),
        loss=resolve_loss_config(_container(cfg.loss), cfg.module.num_classes, datamodule),
        optimizer=_container(cfg.optimizer),
        scheduler=_container(cfg.get("scheduler")),
        **_container(cfg.module),
    )


def run_training(cfg: DictConfig) -> dict[str, Any]:
    """Train as ``cfg`` says; write config.yaml, checkpoints/, logs and metrics.json into the run dir.

    Returns the content of ``metrics.json``.
    """
    started = time.perf_counter()
    run_dir = Path(cfg.paths.run_dir)
    checkpoint_dir = run_dir / "checkpoints"
    if checkpoint_dir.exists() and any(checkpoint_dir.iterdir()):
        raise FileExistsError(
            f"{checkpoint_dir} already holds checkpoints: choose a new run directory "
            "(hydra.run.dir=...) rather than overwrite an earlier run"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True)

    accelerator = resolve_accelerator(cfg.trainer.accelerator)
    precision = resolve_precision(cfg.trainer.precision, accelerator)
    with open_dict(cfg):
        cfg.trainer.accelerator = accelerator
        cfg.trainer.precision = precision

    datamodule = instantiate(cfg.data, _convert_="all")
    module = build_module(cfg, datamodule)
    history = MetricsHistory()
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    trainer = L.Trainer(
        **_expand_fast_dev_run(_container(cfg.trainer)),
        callbacks=[*callbacks, history],
        logger=loggers or False,
        default_root_dir=str(run_dir),
    )
    if trainer.is_global_zero:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    trainer.fit(module, datamodule=datamodule)

    checkpoint = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
    monitor, mode = cfg.monitor.metric, cfg.monitor.mode
    summary = {
        "monitor": monitor,
        "mode": mode,
        "best": _best_epoch(history.epochs, monitor, mode),
        "final": history.epochs[-1] if history.epochs else None,
        "history": history.epochs,
        "best_checkpoint": checkpoint.best_model_path if checkpoint else None,
        "last_checkpoint": checkpoint.last_model_path if checkpoint else None,
        "precision": precision,
        "accelerator": accelerator,
        "model_parameters": count_parameters(module.net),
        "epochs_run": trainer.current_epoch,
        "wall_time_s": round(time.perf_counter() - started, 1),
        "run_dir": str(run_dir),
    }
    if trainer.is_global_zero:
        write_json_atomic(run_dir / "metrics.json", summary)
        print(format_summary(summary))
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """A short plain-text table of the best and final validation metrics, and the paths."""
    best, final = summary["best"] or {}, summary["final"] or {}
    keys = [k for k in final if k.startswith("val/") and "/" not in k[4:]]
    keys += sorted(k for k in final if k.startswith("val/") and "/" in k[4:])
    width = max([len(k) for k in keys] + [len("metric")])
    lines = [f"{'metric':<{width}}  {'best':>8}  {'final':>8}", "-" * (width + 20)]
    for key in keys:
        lines.append(f"{key:<{width}}  {best.get(key, float('nan')):>8.4f}  {final.get(key, float('nan')):>8.4f}")
    lines.append(f"{'epoch':<{width}}  {best.get('epoch', -1):>8}  {final.get('epoch', -1):>8}")
    lines += [
        "",
        f"best by {summary['monitor']} ({summary['mode']}); precision {summary['precision']}; "
        f"{summary['wall_time_s']} s",
        f"run dir:         {summary['run_dir']}",
        f"best checkpoint: {summary['best_checkpoint']}",
        f"last checkpoint: {summary['last_checkpoint']}",
        f"metrics:         {Path(summary['run_dir']) / 'metrics.json'}",
    ]
    return "\n".join(lines)
