"""``segkit-prepare``: one-off data preparation before training.

Runs the dataset's own preparation (Airbus/Carvana mask caches, DOTA patches, oil-seep
image statistics, the buildings validation split), then counts the pixels of every class
over the training split into ``class_stats.json`` (read by ``loss=weighted_ce
loss.weights=auto``) and plots the class distribution. Every step is skipped when its
output is up to date. ``check=true`` instead reads every file and lists all problems.
"""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

__all__ = ["format_class_stats", "group_problems", "run_check", "run_prepare"]



def run_prepare(cfg: DictConfig) -> dict[str, Any]:
    """Prepare ``cfg.data``; return the class statistics (written or found up to date)."""
    datamodule = instantiate(cfg.data, _convert_="all")
    if cfg.get("check"):
        problems = run_check(datamodule)
        return {"problems": problems}
    datamodule.require_work_dir()
    messages = datamodule.prepare(class_stats=True)
    datamodule.setup("fit")
    stats = datamodule.prepare_class_stats()[0]  # written above: read back (fingerprint checked)
    print("\n".join(f"- {m}" for m in messages))
    print(format_class_stats(stats))
    return stats


def run_check(datamodule: Any) -> list[str]:
    """Print every problem of the dataset's files (one per line) and return them; datasets
    that can describe their classes (``class_report``, e.g. ``dataset=folder``) print that too."""
    problems = datamodule.check()
    if hasattr(datamodule, "class_report"):
        print("\n".join(datamodule.class_report()))
    missing = len(datamodule.checked_missing)
    if problems:
        print(f"{len(problems)} problem(s) found in {datamodule.kind} data at {datamodule.root}:")
        for line in group_problems(problems):
            print(f"  {line}")
        if missing and datamodule.missing == "error":
            print(f"{missing} of them are files without their counterpart (a partial download?): "
                  "data.missing=skip uses the complete items and leaves these out")
    else:
        skipped = f" ({missing} file(s) without counterpart left out: data.missing=skip)" if missing else ""
        print(f"{datamodule.kind} data at {datamodule.root}: every file checked, no problems{skipped}")
    return problems


def group_problems(problems: list[str], at_least: int = 4) -> list[str]:
    """``problems`` (``"<file>: <what>"``) with every ``what`` shared by ``at_least`` files or
    more said once, counting and naming a few of them (28 masks stored as 0/255 are one
    line, not 28)."""
    by_what: dict[str, list[str]] = {}
    for problem in problems:
        file, _, what = problem.partition(": ")
        by_what.setdefault(what, []).append(file)
    lines, said = [], set()
    for problem in problems:
        file, _, what = problem.partition(": ")
        files = by_what[what]
        if len(files) < at_least or not what:
            lines.append(problem)
        elif what not in said:
            said.add(what)
            lines.append(f"{len(files)} files: {what} (e.g. {', '.join(files[:3])}, ...)")
    return lines


def format_class_stats(stats: dict[str, Any]) -> str:
    width = max(len(n) for n in stats["class_names"] + ["class"])
    lines = [f"{'class':<{width}}  {'pixels':>14}  {'share':>8}  {'weight':>8}"]
    for name, count, freq, weight in zip(stats["class_names"], stats["pixel_counts"], stats["frequencies"], stats["weights"]):
        lines.append(f"{name:<{width}}  {count:>14,}  {freq:>8.4%}  {weight:>8.3f}")
    lines.append(f"{stats['images']} training images; {stats['path']}")
    return "\n".join(lines)
