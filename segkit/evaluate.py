"""``segkit-eval``: how good a checkpoint is on a dataset split, and where it fails.

Every image is predicted at its own resolution with the same :class:`Predictor` as
``segkit-predict`` (sliding window, TTA) and compared with its mask as stored. The images
are those of the datamodule's :meth:`~segkit.data.datamodule.SegmentationDataModule.evaluation_dataset`:
the split's items themselves, or — for data trained on derived pieces such as DOTA's
overlapping patches — the whole source images they were cut from, each scored once.
Writes into ``output``::

    report.md           scores per class and mean, confusion heatmap, worst images, linked
    scores.json         the same numbers, for scripts
    per_image.csv       Dice / IoU per image and class, its size, ground-truth and predicted pixels
    confusion.csv       pixel confusion matrix (rows: ground truth, columns: prediction)
    confusion.png       the same, row-normalised, as a heatmap
    worst/NN_<name>.png the ``worst`` images by per-image Dice: image | truth | prediction | errors

Scores: ``dataset`` Dice/IoU pool the pixels of the whole split (NaN for a class in no
target and no prediction); ``image`` scores are means over images, an image where a class
is absent from both target and prediction scoring 1 (Kaggle's convention). Means are over
the foreground classes unless the model was trained with ``include_background``.
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from segkit.checkpoint import LoadedCheckpoint, load_checkpoint
from segkit.data.datasets import label_count
from segkit.data.io import refuse_overwrite, write_bytes_atomic, write_json_atomic
from segkit.metrics import confusion_matrices, dice_iou_from_confusion
from segkit.predictor import build_predictor
from segkit.rundir import claim_run_dir

__all__ = ["EvalScores", "run_eval", "scores_from_confusions"]

log = logging.getLogger(__name__)
OUTPUT_FILES = ("report.md", "scores.json", "per_image.csv", "confusion.csv", "confusion.png")


class EvalScores:
    """Accumulates per-image confusion matrices; scores them per class and as means.

    Args:
        class_names: one per label (two for a binary model).
        ignore_index: target value that counts nowhere.
        include_background: count class 0 in the means.
    """

    def __init__(self, class_names: list[str], ignore_index: int | None = None, include_background: bool = False) -> None:
        self.class_names = class_names
        self.k = len(class_names)
        self.ignore_index = ignore_index
        self.first = 0 if include_background else 1
        self.total = np.zeros((self.k, self.k), dtype=np.int64)
        self.rows: list[dict[str, Any]] = []

    def add(self, name: str, target: np.ndarray, prediction: np.ndarray) -> float:
        """Add one image; returns its score (mean per-image Dice over the counted classes)."""
        confusion = confusion_matrices(
            torch.from_numpy(prediction.astype(np.int64))[None], torch.from_numpy(target.astype(np.int64))[None],
            self.k, self.ignore_index,
        )[0]
        self.total += confusion.numpy()
        dice, iou = dice_iou_from_confusion(confusion, empty_score=1.0)
        row: dict[str, Any] = {
            "name": name,
            "height": int(target.shape[0]),
            "width": int(target.shape[1]),
            "dice": float(dice[self.first:].mean()),
            "iou": float(iou[self.first:].mean()),
            "target_foreground_px": int(confusion[1:].sum()),
            "predicted_foreground_px": int(confusion[:, 1:].sum()),
        }
        for cls, d, i in zip(self.class_names, dice.tolist(), iou.tolist()):
            row[f"dice/{cls}"] = d
            row[f"iou/{cls}"] = i
        self.rows.append(row)
        return row["dice"]

    def summary(self) -> dict[str, Any]:
        return scores_from_confusions(self.total, self.rows, self.class_names, self.first)


def scores_from_confusions(total: np.ndarray, rows: list[dict[str, Any]], class_names: list[str], first: int) -> dict[str, Any]:
    """Per-class and mean scores from the summed confusion matrix and the per-image rows."""
    dice, iou = dice_iou_from_confusion(torch.from_numpy(total))
    per_class = {}
    for c, name in enumerate(class_names):
        per_class[name] = {
            "dice": _num(dice[c]), "iou": _num(iou[c]),
            "image_dice": _num(np.mean([r[f"dice/{name}"] for r in rows])) if rows else None,
            "image_iou": _num(np.mean([r[f"iou/{name}"] for r in rows])) if rows else None,
            "target_px": int(total[c].sum()), "predicted_px": int(total[:, c].sum()),
        }
    counted = class_names[first:]

    def mean(key: str) -> float | None:
        values = [per_class[n][key] for n in counted if per_class[n][key] is not None]
        return float(np.mean(values)) if values else None

    return {
        "classes": per_class,
        "mean": {key: mean(key) for key in ("dice", "iou", "image_dice", "image_iou")},
        "mean_over": counted,
        "pixel_accuracy": float(np.trace(total) / max(total.sum(), 1)),
        "images": len(rows),
    }


def _num(value: Any) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def _data_config(cfg: DictConfig, loaded: LoadedCheckpoint) -> dict[str, Any]:
    if cfg.get("data") is not None:
        return OmegaConf.to_container(cfg.data, resolve=True)
    if loaded.data is None:
        raise ValueError(
            f"{loaded.path} does not record its dataset: name one, e.g. dataset=carvana data.root=/data/carvana"
        )
    return dict(loaded.data)


def _default_output(ckpt: Path, split: str) -> Path:
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    return run_dir / f"eval_{split}_{ckpt.stem}"


def run_eval(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt`` on a split of a dataset; returns the content of ``scores.json``."""
    from tqdm.auto import tqdm

    from segkit.visualize import confusion_heatmap, error_panel

    started = time.perf_counter()
    loaded = load_checkpoint(cfg.ckpt)
    split = str(cfg.split)
    if split not in ("val", "train", "all"):
        raise ValueError(f"split={split}: choose val, train or all")
    output = Path(str(cfg.output)) if cfg.get("output") else _default_output(Path(str(cfg.ckpt)), split)
    refuse_overwrite([output / name for name in OUTPUT_FILES], bool(cfg.overwrite))
    claim_run_dir(output, "output")  # writable, and no other live segkit process writing into it
    data_cfg = _data_config(cfg, loaded)
    datamodule = instantiate(data_cfg, _convert_="all")
    if label_count(datamodule.num_classes) != label_count(loaded.num_classes):
        raise ValueError(
            f"the dataset has {datamodule.num_classes} classes (data.num_classes) but {cfg.ckpt} predicts {loaded.num_classes}"
        )
    datamodule.prepare_data()
    items = datamodule.items()
    train_idx, val_idx = datamodule.split(items)
    chosen = {"val": val_idx, "train": train_idx, "all": list(range(len(items)))}[split]
    if not chosen:
        raise ValueError(f"the {split} split of {datamodule.kind} data at {datamodule.root} is empty")
    dataset = datamodule.evaluation_dataset([items[i] for i in chosen])
    count = min(len(dataset), int(cfg.limit)) if cfg.get("limit") else len(dataset)
    predictor = build_predictor(loaded, cfg)
    hp = loaded.module.hparams
    scores = EvalScores(loaded.class_names, hp.ignore_index, bool(hp.include_background) and loaded.num_classes > 1)
    worst: list[tuple[float, int, np.ndarray]] = []  # max-heap on the score (negated) of the worst N
    n_worst = int(cfg.worst)
    for index in tqdm(range(count), unit="img", desc=f"eval {split}"):
        image, target = dataset.load(index)
        image = predictor.preprocessing.check(image, dataset.image_paths[index])
        labels = predictor.predict(image).labels
        score = scores.add(dataset.names[index], target, labels)
        if n_worst > 0:
            entry = (-score, -index, labels)
            if len(worst) < n_worst:
                heapq.heappush(worst, entry)
            elif entry[:2] > worst[0][:2]:
                heapq.heapreplace(worst, entry)

    summary = scores.summary()
    settings = OmegaConf.to_container(cfg, resolve=True)
    summary.update(checkpoint=str(cfg.ckpt), dataset=datamodule.kind, root=str(datamodule.root), split=split,
                   settings={**{k: settings.get(k) for k in ("tile", "overlap", "tta", "threshold")},
                             "precision": predictor.precision},  # as used (auto resolved)
                   windows=predictor.windows_run)
    output.mkdir(parents=True, exist_ok=True)
    per_image = pd.DataFrame(scores.rows)
    write_bytes_atomic(output / "per_image.csv", per_image.to_csv(index=False, float_format="%.6f").encode())
    confusion = pd.DataFrame(scores.total, index=pd.Index(loaded.class_names, name="truth \\ prediction"), columns=loaded.class_names)
    write_bytes_atomic(output / "confusion.csv", confusion.to_csv().encode())
    confusion_heatmap(output / "confusion.png", scores.total, loaded.class_names, f"{datamodule.kind} {split}: pixel confusion")

    ranked = sorted(((-neg, -negi, labels) for neg, negi, labels in worst), key=lambda e: (e[0], e[1]))
    panels = []
    for rank, (_score, index, labels) in enumerate(ranked, start=1):
        image, target = dataset.load(index)
        name = dataset.names[index]
        path = output / "worst" / f"{rank:02d}_{Path(name).stem}.png"
        if path.exists() and not cfg.overwrite:
            raise FileExistsError(f"{path} exists: pass overwrite=true to replace it")
        row = scores.rows[index]
        error_panel(path, image, target, labels, len(loaded.class_names),
                    f"{name}: Dice {row['dice']:.3f}, IoU {row['iou']:.3f}", hp.ignore_index, class_names=loaded.class_names)
        panels.append({"rank": rank, "name": name, "dice": row["dice"], "iou": row["iou"], "panel": str(path.relative_to(output))})
    summary["worst"] = panels
    summary["seconds"] = round(time.perf_counter() - started, 2)
    write_json_atomic(output / "scores.json", summary)
    write_bytes_atomic(output / "report.md", format_report(summary).encode())
    log.info("%s", format_scores(summary))
    log.info("report: %s", output / "report.md")
    summary["output"] = str(output)
    return summary


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def format_scores(summary: dict[str, Any]) -> str:
    """Plain-text table of the per-class and mean scores."""
    names = list(summary["classes"])
    width = max(len(n) for n in [*names, "mean (foreground)", "class"])
    lines = [f"{'class':<{width}}  {'Dice':>7}  {'IoU':>7}  {'img Dice':>8}  {'img IoU':>8}  {'truth px':>12}"]
    for name in names:
        c = summary["classes"][name]
        lines.append(f"{name:<{width}}  {_fmt(c['dice']):>7}  {_fmt(c['iou']):>7}  {_fmt(c['image_dice']):>8}  "
                     f"{_fmt(c['image_iou']):>8}  {c['target_px']:>12}")
    m = summary["mean"]
    label = "mean" if summary["mean_over"] == names else "mean (foreground)"
    lines.append(f"{label:<{width}}  {_fmt(m['dice']):>7}  {_fmt(m['iou']):>7}  {_fmt(m['image_dice']):>8}  {_fmt(m['image_iou']):>8}")
    return "\n".join(lines)


def format_report(summary: dict[str, Any]) -> str:
    """The Markdown report: scores, confusion matrix, worst images."""
    s = summary
    lines = [
        f"# segkit-eval: {s['dataset']}, {s['split']} split",
        "",
        f"- checkpoint: `{s['checkpoint']}`",
        f"- data: `{s['root']}` — {s['images']} images, scored at their own resolution",
        f"- inference: precision {s['settings']['precision']}, tile {s['settings']['tile']}, "
        f"TTA {', '.join(s['settings']['tta'] or []) or 'none'}; {s['seconds']} s",
        f"- pixel accuracy {s['pixel_accuracy']:.4f}; means over {', '.join(s['mean_over'])}",
        "",
        "## Scores",
        "",
        "Dataset: pixels of the whole split pooled. Image: mean of per-image scores (absent from both = 1).",
        "",
        "| class | Dice | IoU | Dice (image mean) | IoU (image mean) | truth pixels | predicted pixels |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, c in s["classes"].items():
        lines.append(f"| {name} | {_fmt(c['dice'])} | {_fmt(c['iou'])} | {_fmt(c['image_dice'])} | "
                     f"{_fmt(c['image_iou'])} | {c['target_px']} | {c['predicted_px']} |")
    m = s["mean"]
    lines += [
        f"| **mean** | **{_fmt(m['dice'])}** | **{_fmt(m['iou'])}** | **{_fmt(m['image_dice'])}** | **{_fmt(m['image_iou'])}** | | |",
        "",
        "## Confusion matrix",
        "",
        "Rows: ground truth, columns: prediction, shares of each row; counts in [confusion.csv](confusion.csv). "
        "Per-image scores: [per_image.csv](per_image.csv).",
        "",
        "![confusion matrix](confusion.png)",
        "",
    ]
    if s["worst"]:
        lines += [f"## The {len(s['worst'])} worst images by per-image Dice", "",
                  "Panels: image | ground truth | prediction | errors (green correct, red false positive, "
                  "blue missed, magenta wrong class).", ""]
        for w in s["worst"]:
            lines += [f"### {w['rank']}. {w['name']} — Dice {w['dice']:.4f}, IoU {w['iou']:.4f}", "",
                      f"![{w['name']}]({w['panel']})", ""]
    return "\n".join(lines)
