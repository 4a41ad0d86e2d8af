"""Finding the run that ``resume=`` continues: a run directory, or ``auto`` (the latest
run beside this one with the same config)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

__all__ = ["UNRESOLVED_CONFIG", "has_last_checkpoint", "locate_resume"]

log = logging.getLogger(__name__)
# the config with its interpolations kept (stage settings such as a scheduler's T_max
# follow ${trainer.max_epochs} per stage): what resume= reloads; config.yaml is resolved
UNRESOLVED_CONFIG = "config.unresolved.yaml"


def has_last_checkpoint(run_dir: Path) -> bool:
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
        if not has_last_checkpoint(run_dir):
            raise FileNotFoundError(f"resume={run_dir}: no checkpoints/last.ckpt to continue from")
        return OmegaConf.load(run_dir / UNRESOLVED_CONFIG), run_dir
    here = Path(cfg.paths.run_dir)
    wanted = _comparable(cfg)
    candidates = sorted(here.parent.glob(f"*/{UNRESOLVED_CONFIG}"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in candidates:
        if path.parent == here or not has_last_checkpoint(path.parent):
            continue
        saved = OmegaConf.load(path)
        if _comparable(saved) == wanted:
            return saved, path.parent
    log.info("resume=auto: no earlier run in %s with this config; starting fresh", here.parent)
    return None
