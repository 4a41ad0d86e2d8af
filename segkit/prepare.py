"""``segkit-prepare``: one-off data preparation before training.

Runs the datamodule's own preparation (e.g. the Airbus mask cache), builds its splits,
then counts the pixels of every class over the training split and writes
``class_stats.json`` (used by ``loss=weighted_ce loss.weights=auto``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from segkit.data.class_stats import count_pixels, write_class_stats

__all__ = ["run_prepare", "format_class_stats"]


def run_prepare(cfg: DictConfig) -> dict[str, Any]:
    """Prepare ``cfg.data``; return the class statistics written."""
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("fit")
    dataset = datamodule.train_dataset
    n_labels = max(int(cfg.data.num_classes), 2)
    counts = np.zeros(n_labels, dtype=np.int64)
    for index in range(len(dataset)):
        try:
            counts += count_pixels(dataset.load_mask(index), n_labels, cfg.get("ignore_index"))
        except ValueError as err:
            raise ValueError(f"{dataset.mask_paths[index] or dataset.image_paths[index]}: {err}") from None
    names = getattr(datamodule, "class_names", None) or [f"class{i}" for i in range(n_labels)]
    stats = write_class_stats(datamodule.class_stats_path, counts, names, images=len(dataset))
    stats["path"] = str(datamodule.class_stats_path)
    print(format_class_stats(stats))
    return stats


def format_class_stats(stats: dict[str, Any]) -> str:
    width = max(len(n) for n in stats["class_names"] + ["class"])
    lines = [f"{'class':<{width}}  {'pixels':>14}  {'share':>8}  {'weight':>8}"]
    for name, count, freq, weight in zip(stats["class_names"], stats["pixel_counts"], stats["frequencies"], stats["weights"]):
        lines.append(f"{name:<{width}}  {count:>14,}  {freq:>8.4%}  {weight:>8.3f}")
    lines.append(f"{stats['images']} training images; written to {stats['path']}")
    return "\n".join(lines)
