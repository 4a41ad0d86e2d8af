"""Sweep summaries: after ``segkit-train -m ...``, one table of every run of the sweep."""

from __future__ import annotations

import csv
import json
import logging
import math
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

__all__ = ["SweepSummary", "collect_runs", "fold_summary", "write_sweep_summary"]

log = logging.getLogger(__name__)


def collect_runs(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per run directory of the sweep that wrote a ``metrics.json``."""
    rows = []
    for metrics_path in sorted(sweep_dir.glob("*/metrics.json"), key=lambda p: (len(p.parent.name), p.parent.name)):
        run_dir = metrics_path.parent
        metrics = json.loads(metrics_path.read_text())
        overrides_path = run_dir / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_path.read_text()) if overrides_path.is_file() else []
        monitor = metrics["monitor"]
        best = (metrics.get("best") or {}).get(monitor, math.nan)
        final = (metrics.get("final") or {}).get(monitor, math.nan)
        rows.append({
            "run": run_dir.name,
            "overrides": overrides,
            "monitor": monitor,
            "mode": metrics["mode"],
            "best": best,
            "best_epoch": (metrics.get("best") or {}).get("epoch"),
            "final": final,
            "wall_time_s": metrics.get("wall_time_s"),
            "best_checkpoint": metrics.get("best_checkpoint"),
        })
    # show what varies between the runs; what all share goes to 'common'
    common = set.intersection(*(set(r["overrides"]) for r in rows)) if len(rows) > 1 else set()
    for row in rows:
        row["common"] = " ".join(o for o in row["overrides"] if o in common)
        row["overrides"] = " ".join(o for o in row["overrides"] if o not in common)
    return rows


def _sweep_command() -> str | None:
    """The command that started this sweep (with its ``--config-dir`` and the like, which the
    overrides leave out), when this process is it."""
    if not Path(sys.argv[0]).name.startswith("segkit-"):
        return None  # a launcher's job process (submitit), not the command
    return shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])


def write_sweep_summary(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Write ``summary.csv`` and ``summary.md`` (best run first) into ``sweep_dir``."""
    sweep_dir = Path(sweep_dir)
    rows = collect_runs(sweep_dir)
    if not rows:
        return rows
    maximise = rows[0]["mode"] == "max"
    rows.sort(key=lambda r: (math.isnan(r["best"]), -r["best"] if maximise else r["best"]))
    with (sweep_dir / "summary.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        f"# Sweep summary: {sweep_dir}",
        "",
        f"{len(rows)} runs, best first by {rows[0]['monitor']} ({rows[0]['mode']}). "
        f"Overrides shared by all runs: `{rows[0]['common'] or '(none)'}`.",
        *([f"Command: `{command}`."] if (command := _sweep_command()) else []),
        "",
        "| run | overrides | best | epoch | final | time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['run']} | `{r['overrides']}` | {r['best']:.4f} | {r['best_epoch']} | {r['final']:.4f} | {r['wall_time_s']} |")
    lines += fold_summary(rows)
    (sweep_dir / "summary.md").write_text("\n".join(lines) + "\n")
    return rows


def fold_summary(rows: list[dict[str, Any]]) -> list[str]:
    """Cross-validation: for runs that differ in ``data.fold`` only, the mean and spread of
    the best score over their folds (one line per setting of the other overrides)."""
    settings: dict[str, list[tuple[str, float]]] = {}
    for row in rows:
        words = row["overrides"].split()
        fold = next((w.split("=", 1)[1] for w in words if w.startswith("data.fold=")), None)
        if fold is not None:
            rest = " ".join(w for w in words if not w.startswith("data.fold="))
            settings.setdefault(rest, []).append((fold, row["best"]))
    if not settings:
        return []
    monitor = rows[0]["monitor"]
    lines = ["", "## Cross-validation", "",
             f"Best {monitor} of each fold's validation (its held-out groups), then the mean and the sample standard "
             "deviation over the folds.", "",
             "| overrides | folds | mean | std | min | max |", "|---|---|---|---|---|---|"]
    for rest, scores in settings.items():
        values = np.array([score for _, score in scores], dtype=np.float64)
        std = values.std(ddof=1) if len(values) > 1 else math.nan
        folds = ",".join(sorted((fold for fold, _ in scores), key=lambda f: (len(f), f)))
        lines.append(f"| `{rest or '(none)'}` | {folds} | {np.nanmean(values):.4f} | {std:.4f} | {np.nanmin(values):.4f} | "
                     f"{np.nanmax(values):.4f} |")
    return lines


class SweepSummary(Callback):
    """Hydra callback: rewrites the sweep summary as each job ends (so a sweep that stops at a
    failed job still has the table of the runs that finished) and reports it when the multirun ends."""

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            write_sweep_summary(HydraConfig.get().sweep.dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        rows = write_sweep_summary(config.hydra.sweep.dir)
        if rows:
            best = rows[0]
            folds = fold_summary(rows)
            if not folds:
                log.info("sweep of %d runs; best %s=%.4f in run %s (%s); summary in %s", len(rows), best["monitor"],
                         best["best"], best["run"], best["overrides"], Path(config.hydra.sweep.dir) / "summary.md")
            if folds:  # cross-validation: the folds' mean is the result, not the best fold
                print(f"sweep summary: {Path(config.hydra.sweep.dir) / 'summary.md'}; cross-validation of "
                      f"{best['monitor']} (overrides | folds | mean | std | min | max):")
                print("\n".join(line for line in folds if line.startswith("| `")))
            else:
                print(f"sweep summary: {Path(config.hydra.sweep.dir) / 'summary.md'} (best: run {best['run']}, "
                      f"{best['monitor']}={best['best']:.4f}, {best['overrides']})")
