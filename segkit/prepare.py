"""``segkit-prepare``: one-off data preparation before training.

Runs the dataset's own preparation (Airbus/Carvana mask caches, DOTA patches, oil-seep
image statistics, the buildings validation split), then counts the pixels of every class
over the training split into ``class_stats.json`` (read by ``loss=weighted_ce
loss.weights=auto``) and plots the class distribution. Every step is skipped when its
output is up to date. ``check=true`` instead reads every file and lists all problems.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from segkit.data.class_stats import count_pixels, write_class_stats
from segkit.data.datasets import label_count

__all__ = ["format_class_stats", "group_problems", "plot_class_distribution", "run_check", "run_prepare"]

PLOT_FILE = "class_distribution.png"


def run_prepare(cfg: DictConfig) -> dict[str, Any]:
    """Prepare ``cfg.data``; return the class statistics (written or found up to date)."""
    datamodule = instantiate(cfg.data, _convert_="all")
    if cfg.get("check"):
        problems = run_check(datamodule)
        return {"problems": problems}
    datamodule.require_work_dir()
    messages = datamodule.prepare()
    datamodule.setup("fit")
    stats, message = _class_stats(datamodule)
    messages.append(message)
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


def _class_stats(datamodule: Any) -> tuple[dict[str, Any], str]:
    dataset = datamodule.train_dataset
    n_labels = label_count(datamodule.num_classes)
    fingerprint = hashlib.sha1(
        "\n".join(["presence-1", datamodule.fingerprint(), str(n_labels), str(datamodule.ignore_index), *dataset.names]).encode()
    ).hexdigest()
    path = datamodule.class_stats_path
    if path.is_file():
        stats = json.loads(path.read_text())
        if stats.get("fingerprint") == fingerprint:
            stats["path"] = str(path)
            return stats, f"class statistics {path} are up to date: nothing to do"
    from tqdm.auto import tqdm

    counts = np.zeros(n_labels, dtype=np.int64)  # pixels of the training split
    # the classes of every image (validation too, so any fold's training split finds its own),
    # for data.sampling=repeat_factor
    presence: dict[str, list[int]] = {}
    for part, counted, desc in ((dataset, True, "counting class pixels"),
                                (datamodule.val_dataset, False, "classes of the other images")):
        for index in tqdm(range(len(part or [])), desc=desc, unit="mask"):
            image_counts = count_pixels(part.load_mask(index), n_labels, datamodule.ignore_index)
            if counted:
                counts += image_counts
            presence[part.names[index]] = np.flatnonzero(image_counts).tolist()
    stats = write_class_stats(path, counts, datamodule.class_names, images=len(dataset),
                              extra={"fingerprint": fingerprint, "presence": presence})
    plot_class_distribution(stats, path.with_name(PLOT_FILE))
    stats["path"] = str(path)
    return stats, f"class statistics of {len(dataset)} training images written to {path} (plot: {path.with_name(PLOT_FILE)})"


def plot_class_distribution(stats: dict[str, Any], path: Path) -> None:
    """Bar plot of pixels per class, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, counts = stats["class_names"], stats["pixel_counts"]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(names) + 2), 3.6))
    ax.bar(range(len(names)), [max(c, 0.5) for c in counts], color="#3b75af")
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)), names, rotation=45 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center")
    ax.set_ylabel("pixels (log scale)")
    ax.set_title(f"class distribution over {stats['images']} training images")
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def format_class_stats(stats: dict[str, Any]) -> str:
    width = max(len(n) for n in stats["class_names"] + ["class"])
    lines = [f"{'class':<{width}}  {'pixels':>14}  {'share':>8}  {'weight':>8}"]
    for name, count, freq, weight in zip(stats["class_names"], stats["pixel_counts"], stats["frequencies"], stats["weights"]):
        lines.append(f"{name:<{width}}  {count:>14,}  {freq:>8.4%}  {weight:>8.3f}")
    lines.append(f"{stats['images']} training images; {stats['path']}")
    return "\n".join(lines)
