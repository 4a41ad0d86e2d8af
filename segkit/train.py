"""The training entry point behind ``segkit-train``: config in, trained run directory out."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf, open_dict

from segkit.callbacks import AtomicCheckpointIO, EpochSeeder, MetricsHistory
from segkit.checkpoint import read_checkpoint
from segkit.data.class_stats import read_class_weights
from segkit.data.io import write_json_atomic
from segkit.models import count_parameters
from segkit.module import SegmentationModule
from segkit.rundir import claim_run_dir, release_run_dir
from segkit.runtime import resolve_accelerator, resolve_precision

__all__ = ["build_module", "fit_stage", "format_summary", "resolve_loss_config", "run_training"]

log = logging.getLogger(__name__)
# the config with its interpolations kept (stage settings such as a scheduler's T_max
# follow ${trainer.max_epochs} per stage): what resume= reloads; config.yaml is resolved
UNRESOLVED_CONFIG = "config.unresolved.yaml"


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


# ------------------------------------------------------------------- resume
def _has_last_checkpoint(run_dir: Path) -> bool:
    return (run_dir / "checkpoints" / "last.ckpt").is_file() or any(run_dir.glob("stages/*/checkpoints/last.ckpt"))


def _comparable(cfg: DictConfig) -> dict[str, Any]:
    """The config as a plain dict, the run directory and ``resume`` blanked out."""
    data = OmegaConf.to_container(cfg, resolve=False)
    data["paths"] = {"run_dir": "<run dir>"}
    data["resume"] = None
    return OmegaConf.to_container(OmegaConf.create(data), resolve=True)


def locate_resume(cfg: DictConfig) -> tuple[DictConfig, Path] | None:
    """The saved config and directory of the run ``cfg.resume`` names, or ``None`` for a fresh start.

    ``resume=<run dir>`` continues that run with its own saved config; ``resume=auto`` the
    latest run beside this one whose config equals this one (paths aside).
    """
    value = cfg.get("resume")
    if not value:
        return None
    if str(value) != "auto":
        run_dir = Path(str(value)).absolute()
        if not (run_dir / UNRESOLVED_CONFIG).is_file():
            raise FileNotFoundError(f"resume={run_dir}: no {UNRESOLVED_CONFIG} there — is it a segkit run directory?")
        if not _has_last_checkpoint(run_dir):
            raise FileNotFoundError(f"resume={run_dir}: no checkpoints/last.ckpt to continue from")
        return OmegaConf.load(run_dir / UNRESOLVED_CONFIG), run_dir
    here = Path(cfg.paths.run_dir)
    wanted = _comparable(cfg)
    candidates = sorted(here.parent.glob(f"*/{UNRESOLVED_CONFIG}"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in candidates:
        if path.parent == here or not _has_last_checkpoint(path.parent):
            continue
        saved = OmegaConf.load(path)
        if _comparable(saved) == wanted:
            return saved, path.parent
    log.info("resume=auto: no earlier run in %s with this config; starting fresh", here.parent)
    return None


# -------------------------------------------------------------------- stages
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
    datamodule = instantiate(cfg.data, **{**agree_class_names(cfg), **(data_overrides or {})}, _convert_="all")
    module = build_module(cfg, datamodule, **(module_overrides or {}))
    check_input_size(datamodule, module)
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
    trainer = L.Trainer(
        **trainer_cfg,
        callbacks=[*callbacks, history, EpochSeeder(cfg.seed, stage_index)],
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
    }


def check_input_size(datamodule: Any, module: SegmentationModule) -> None:
    """Refuse, before any training step, an ``image_size`` the network cannot take (unpadded
    sides that are not multiples of its size multiple); native sizes are padded as needed."""
    size, pad = getattr(datamodule, "image_size", None), getattr(datamodule, "pad_multiple", None)
    multiple = module.net.size_multiple
    if size is None or (pad and pad % multiple == 0):
        return
    height, width = (size, size) if isinstance(size, int) else size
    if height % multiple or width % multiple:
        fit = f"{-(-height // multiple) * multiple}" if height == width else f"[{-(-height // multiple) * multiple},{-(-width // multiple) * multiple}]"
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
        finder = Tuner(trainer).lr_find(module, datamodule=datamodule, update_attr=False, **options)
    finally:
        trainer.fit_loop.max_epochs = max_epochs
    suggestion = finder.suggestion() if finder is not None else None
    if finder is not None:
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


# ----------------------------------------------------------------------- run
def run_training(cfg: DictConfig) -> dict[str, Any]:
    """Train as ``cfg`` says; write config.yaml, checkpoints/, logs and metrics.json into the run dir.

    Returns the content of ``metrics.json``.
    """
    started = time.perf_counter()
    accelerator = resolve_accelerator(cfg.trainer.accelerator)
    precision = resolve_precision(cfg.trainer.precision, accelerator)
    with open_dict(cfg):
        cfg.trainer.accelerator = accelerator
        cfg.trainer.precision = precision
    found = locate_resume(cfg)
    resuming = found is not None
    if resuming:
        cfg, run_dir = found
        with open_dict(cfg):
            cfg.paths.run_dir = str(run_dir)
        log.info("resuming the run in %s", run_dir)
    else:
        run_dir = Path(cfg.paths.run_dir)
    # one live run per directory (segkit.rundir); also the directory a resume continues in
    claim_run_dir(run_dir, "resume" if resuming else "hydra.run.dir")
    try:
        return _train_in(cfg, run_dir, resuming, started)
    finally:
        release_run_dir(run_dir)


def _train_in(cfg: DictConfig, run_dir: Path, resuming: bool, started: float) -> dict[str, Any]:
    if not resuming:
        if _has_last_checkpoint(run_dir) or any((run_dir / "checkpoints").glob("*.ckpt")):
            raise FileExistsError(
                f"{run_dir} already holds checkpoints: choose a new run directory (hydra.run.dir=...) "
                f"rather than overwrite an earlier run, or continue it with resume={run_dir}"
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        if rank_zero_only.rank == 0:
            (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
            unresolved = OmegaConf.to_container(cfg, resolve=False)
            unresolved["paths"] = {"run_dir": str(run_dir)}  # ${hydra:...} cannot be resolved later
            (run_dir / UNRESOLVED_CONFIG).write_text(OmegaConf.to_yaml(OmegaConf.create(unresolved)))
    L.seed_everything(cfg.seed, workers=True)

    if cfg.get("recipe"):
        from segkit.recipes import run_recipe

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
    lines += [f"{'metric':<{width}}  {'best':>8}  {'final':>8}", "-" * (width + 20)]
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
