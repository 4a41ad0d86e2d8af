"""One stage of training: the module a config describes, fitted in a directory.

``fit_stage`` is what ``segkit-train`` runs for a plain run and what
:mod:`segkit.recipes` runs for each stage of a staged one; the LR finder, the class-name
agreement between module and datamodule and the input-size check live beside it. Library
code: it imports no console app.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf, open_dict

from segkit.callbacks import AtomicCheckpointIO, EpochLog, EpochSeeder, MetricsHistory, console_is_terminal
from segkit.checkpoint import read_checkpoint
from segkit.data.class_stats import read_class_weights
from segkit.data.datasets import label_count
from segkit.models import INPUT_OPTIONS, count_parameters, pretraining_statistics
from segkit.module import SegmentationModule

__all__ = ["LR_FIND_DEFAULTS", "agree_class_names", "build_module", "check_input_size", "fit_stage", "pretrained_normalize",
           "resolve_loss_config"]

log = logging.getLogger(__name__)


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
    """The loss config with ``weights: auto`` replaced by the numbers in the dataset's
    ``class_stats.json`` and the set-up key ``class_stats`` dropped.

    The one place ``weights: auto`` is resolved: losses take numbers only and read no file
    (:mod:`segkit.losses`). ``class_stats`` names the file (default: the datamodule's
    ``class_stats_path``); a missing or unknown file is an error naming it and saying to
    run ``segkit-prepare``. The checkpoint then records the weights actually used, not a
    path that may move.
    """
    loss = dict(loss)
    path = loss.pop("class_stats", None)
    if loss.get("weights") == "auto":
        path = path or getattr(datamodule, "class_stats_path", None)
        loss["weights"] = read_class_weights(path, label_count(num_classes))
    if loss.get("terms"):  # loss=compound: each term resolved the same way
        loss["terms"] = [resolve_loss_config(dict(term), num_classes, datamodule) for term in loss["terms"]]
    return loss


def agree_class_names(cfg: DictConfig) -> dict[str, Any]:
    """Data overrides that give the module and the datamodule one list of class names.

    Lightning logs the module's and the datamodule's hyperparameters together and refuses
    a key the two hold with different values: a datamodule that takes ``class_names``
    (``dataset=folder``) and leaves them unset gets ``module.class_names``; two different
    lists are an error.
    """
    names = cfg.module.get("class_names")
    if names is None or "class_names" not in cfg.data:
        return {}
    data_names = cfg.data.get("class_names")
    if data_names is None:
        return {"class_names": list(names)}
    if list(data_names) != list(names):
        raise ValueError(
            f"module.class_names {list(names)} and data.class_names {list(data_names)} disagree: set only one of them"
        )
    return {}


def pretrained_normalize(cfg: DictConfig) -> dict[str, Any]:
    """``{"normalize": ...}`` with the encoder's pretraining mean/std when the model starts from
    named pretrained weights (and ``model.normalize_from_weights`` is not false); else ``{}``.
    ``max_pixel_value`` stays the data's (its images' range: 65535 for 16-bit SAR), or the
    image dtype's peak where the data normalised per image."""
    model = _container(cfg.model)
    if not model.get("normalize_from_weights", INPUT_OPTIONS["normalize_from_weights"]):
        return {}
    stats = pretraining_statistics(model, int(cfg.data.in_channels))
    if stats is None:
        return {}
    data_normalize = _container(cfg.data.get("normalize")) or {}
    standard = data_normalize.get("normalization", "standard") == "standard" and data_normalize
    # normalization: standard, stated: instantiate merges this into the data's own dict, where a
    # per-image mode (dataset=folder) would otherwise stay and ignore mean and std
    normalize = {"normalization": "standard", "mean": stats["mean"], "std": stats["std"],
                 "max_pixel_value": data_normalize.get("max_pixel_value", 255.0) if standard else None}
    if normalize != {k: data_normalize.get(k, "standard" if k == "normalization" else None) for k in normalize}:
        fmt = lambda values: "[" + ", ".join(f"{v:.3f}" for v in values) + "]"
        log.info("normalize: mean %s, std %s of the pretrained encoder (%s) in place of data.normalize %s; "
                 "model.normalize_from_weights=false keeps data.normalize", fmt(stats["mean"]), fmt(stats["std"]),
                 stats["source"], data_normalize or "null")
    return {"normalize": normalize}


def build_module(cfg: DictConfig, datamodule: Any = None, **overrides: Any) -> SegmentationModule:
    """The module ``cfg`` describes; class names default to the dataset's (``dice/ship``)."""
    module_cfg = _container(cfg.module)
    if module_cfg.get("class_names") is None and getattr(datamodule, "class_names", None) is not None:
        module_cfg["class_names"] = list(datamodule.class_names)
    return SegmentationModule(
        model=_container(cfg.model),
        loss=resolve_loss_config(_container(cfg.loss), cfg.module.num_classes, datamodule),
        optimizer=_container(cfg.optimizer),
        scheduler=_container(cfg.get("scheduler")),
        **{**module_cfg, **overrides},
    )


def fit_stage(
    cfg: DictConfig,
    stage_dir: Path,
    stage_index: int = 0,
    data_overrides: dict[str, Any] | None = None,
    module_overrides: dict[str, Any] | None = None,
    init_checkpoint: str | None = None,
    lr_find: bool | dict[str, Any] = False,
    resume: bool = False,
) -> dict[str, Any]:
    """Fit one model in ``stage_dir`` (checkpoints/, logs); return its summary.

    ``init_checkpoint``: start from that checkpoint's network weights (a previous stage).
    ``lr_find``: run Lightning's LR finder first (``True`` or its arguments) and train with
    the LR it suggests; its plot goes to ``stage_dir/lr_find.png``.
    ``resume``: continue from ``stage_dir/checkpoints/last.ckpt`` (optimizer, scheduler,
    epoch, metric history; randomness replays per epoch, see :class:`EpochSeeder`).
    """
    started = time.perf_counter()
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.paths.run_dir = str(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    data_overrides = {**pretrained_normalize(cfg), **(data_overrides or {})}
    datamodule = instantiate(cfg.data, **{**agree_class_names(cfg), **data_overrides}, _convert_="all")
    module = build_module(cfg, datamodule, **(module_overrides or {}))
    check_input_size(datamodule, module)
    check_monitor(cfg.monitor.metric, module)
    if init_checkpoint:
        state = read_checkpoint(init_checkpoint)["state_dict"]
        module.net.load_state_dict({k[len("net."):]: v for k, v in state.items() if k.startswith("net.")})
    history = MetricsHistory()
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    trainer_cfg = _expand_fast_dev_run(_container(cfg.trainer))
    if hasattr(datamodule, "has_validation") and not datamodule.has_validation():
        # data.val_fraction=0: train without validation, and without what needs it (a best
        # checkpoint, early stopping): last.ckpt holds the weights
        trainer_cfg.update(limit_val_batches=0, num_sanity_val_steps=0)
        callbacks = [c for c in callbacks if getattr(c, "monitor", None) is None]
    # the progress bar on a terminal only: piped to a file (SLURM, nohup) its redraws are noise, and
    # EpochLog's one line per epoch says the same
    trainer_cfg.setdefault("enable_progress_bar", console_is_terminal())
    stage_label = f"{stage_dir.name}: " if stage_dir.parent.name == "stages" else ""
    epoch_log = EpochLog(cfg.monitor.metric, cfg.monitor.mode, stage_label)
    trainer = L.Trainer(
        **trainer_cfg,
        callbacks=[*callbacks, history, EpochSeeder(cfg.seed, stage_index), epoch_log],
        logger=loggers or False,
        default_root_dir=str(stage_dir),
        plugins=[AtomicCheckpointIO()],
    )
    last = stage_dir / "checkpoints" / "last.ckpt"
    ckpt_path = str(last) if resume and last.is_file() else None
    if ckpt_path is not None:
        read_checkpoint(ckpt_path)  # refuses a tampered checkpoint with a clear error before Lightning reads it
    lr = cfg.optimizer.get("lr")
    if lr_find and ckpt_path is None:
        lr = _find_lr(trainer, module, datamodule, stage_dir, {} if lr_find is True else dict(lr_find))
        history.epochs = []
    # resume loads tensors and plain data only (torch.load weights_only): a checkpoint carrying
    # pickled code is refused before anything of it runs
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SystemExit:
        if trainer.interrupted:  # Lightning shuts down on Ctrl-C, then exits: say what the user can do now
            run_dir = stage_dir.parents[1] if stage_dir.parent.name == "stages" else stage_dir
            if last.is_file():
                raise KeyboardInterrupt(f"resume={run_dir} continues from the last finished epoch") from None
            raise KeyboardInterrupt("No epoch had finished: nothing to resume") from None
        raise

    checkpoints = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]
    best_checkpoint = next((c.best_model_path for c in checkpoints if c.monitor), None)
    last_checkpoint = str(last) if last.is_file() else None
    monitor, mode = cfg.monitor.metric, cfg.monitor.mode
    return {
        "monitor": monitor,
        "mode": mode,
        "best": _best_epoch(history.epochs, monitor, mode),
        "final": history.epochs[-1] if history.epochs else None,
        "history": history.epochs,
        "best_checkpoint": best_checkpoint,
        "last_checkpoint": last_checkpoint,
        "lr": lr,
        "precision": cfg.trainer.precision,
        "accelerator": cfg.trainer.accelerator,
        "model_parameters": count_parameters(module.net),
        "epochs_run": trainer.current_epoch,
        # data.on_bad_file=skip: every file passed over, with why
        "skipped_files": list(getattr(datamodule, "skipped_files", {}).values()),
        "wall_time_s": round(time.perf_counter() - started, 1),
        "run_dir": str(stage_dir),
        "trackers": tracker_places(loggers),
    }


def tracker_places(loggers: list[Any]) -> list[tuple[str, str]]:
    """Where the MLflow and W&B loggers put this run, for the closing summary."""
    places = []
    for logger in loggers:
        kind = type(logger).__name__
        if kind == "MLFlowLogger":
            places.append(("mlflow", f"run {logger.run_id} of experiment {logger._experiment_name} in {logger._tracking_uri}"))
        elif kind == "WandbLogger":
            folder = Path(logger.save_dir or ".") / "wandb"
            places.append(("wandb", f"{folder}" + (f" (offline: upload with `wandb sync {folder}/offline-run-*`)"
                                                  if logger._offline else "")))
    return places


def check_monitor(metric: str, module: SegmentationModule) -> None:
    """``ValueError`` before training when ``monitor.metric`` names a per-class score of a class
    the model does not have (Lightning would find out after the first epoch, with a traceback)."""
    prefix, _, name = metric.rpartition("/")
    if module.task != "segmentation" or prefix not in ("val/dice", "val/iou"):
        return
    names = module.val_metrics.class_names
    if name not in names:
        raise ValueError(
            f"monitor.metric={metric}: the model's classes are {', '.join(names)}, so it logs "
            f"{', '.join(f'{prefix}/{n}' for n in names)}: name one of them, or the classes (data.class_names=[...])"
        )


def check_input_size(datamodule: Any, module: SegmentationModule) -> None:
    """Refuse, before any training step, an ``image_size`` the network cannot take (unpadded
    sides that are not multiples of its size multiple); native sizes are padded as needed."""
    size, pad = getattr(datamodule, "image_size", None), getattr(datamodule, "pad_multiple", None)
    multiple = module.net.size_multiple
    if size is None or (pad and pad % multiple == 0):
        return
    height, width = (size, size) if isinstance(size, int) else size
    if height % multiple or width % multiple:
        up_h, up_w = -(-height // multiple) * multiple, -(-width // multiple) * multiple
        fit = f"{up_h}" if height == width else f"[{up_h},{up_w}]"
        raise ValueError(
            f"model {module.net.name!r} needs input height and width that are multiples of {multiple}, but "
            f"data.image_size is {height}x{width}: set data.image_size={fit} (or data.pad_multiple={multiple})"
        )


LR_FIND_DEFAULTS = {"min_lr": 1e-6, "max_lr": 1.0, "num_training": 100}


def _find_lr(trainer: L.Trainer, module: SegmentationModule, datamodule: Any, stage_dir: Path, options: dict[str, Any]) -> float:
    """Lightning's LR finder; sets and returns the suggested LR, saves its plot.

    The sweep starts at 1e-6 rather than Lightning's 1e-8: on small or noisy data the
    smoothed loss rises over the first steps and the steepest-descent suggestion then
    lands in that start-up artefact (seen here: 5e-7 for a classification stage).
    """
    options = {**LR_FIND_DEFAULTS, **options}
    import matplotlib

    matplotlib.use("Agg")
    from lightning.pytorch.tuner import Tuner

    # the finder runs num_training steps; let it cross epochs even when the stage has one epoch
    max_epochs = trainer.fit_loop.max_epochs
    trainer.fit_loop.max_epochs = 10_000
    try:
        with module.nonfinite_checks_paused():
            finder = Tuner(trainer).lr_find(module, datamodule=datamodule, update_attr=False, **options)
    finally:
        trainer.fit_loop.max_epochs = max_epochs
    # under DDP Lightning broadcasts rank 0's curve, so every rank gets the same suggestion;
    # rank 0 alone draws the plot (ranks writing one file at once could leave it torn)
    suggestion = finder.suggestion() if finder is not None else None
    if finder is not None and trainer.is_global_zero:
        figure = finder.plot(suggest=suggestion is not None)
        figure.savefig(stage_dir / "lr_find.png", dpi=100)
        import matplotlib.pyplot as plt

        plt.close(figure)
    if suggestion is None or not math.isfinite(suggestion):
        lr = module.hparams.optimizer["lr"]
        log.warning("LR finder found no suggestion; keeping lr=%g", lr)
        return lr
    module.hparams.optimizer["lr"] = float(suggestion)
    log.info("LR finder suggests lr=%g (plot: %s)", suggestion, stage_dir / "lr_find.png")
    return float(suggestion)
