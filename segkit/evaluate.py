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
import os
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

__all__ = ["EvalScores", "fold_family", "run_eval", "scores_from_confusions"]

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
    """The data to score: ``dataset=`` (with its ``data.*``); else the checkpoint's recorded
    data, with any ``data.*`` given alone laid over it (``data.root=`` where the data moved)."""
    given = _given_data(cfg)
    if given.get("_target_"):
        return given
    if loaded.data is None:
        raise ValueError(
            f"{loaded.path} does not record its dataset: name one, e.g. dataset=carvana data.root=/data/carvana"
        )
    return {**loaded.data, **given}


def _given_data(cfg: DictConfig) -> dict[str, Any]:
    """``data.*`` of the command line (``{}`` without any)."""
    data = cfg.get("data")
    given = {} if data is None else OmegaConf.to_container(data, resolve=True)
    return {key: value for key, value in given.items() if value is not None}


def _default_output(ckpt: Path, split: str) -> Path:
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    return run_dir / f"eval_{split}_{ckpt.stem}"


def _default_ensemble_output(paths: list[Path], combine: str) -> Path:
    """Beside the runs: ``<sweep dir>/eval_<combine>`` for the runs of one sweep."""
    runs = [p.parent.parent if p.parent.name == "checkpoints" else p.parent for p in paths]
    parents = {r.parent for r in runs}
    base = parents.pop() if len(parents) == 1 else Path(os.path.commonpath([str(r) for r in runs]))
    return base / f"eval_{combine}"


def fold_family(members: list[LoadedCheckpoint]) -> bool:
    """Whether the checkpoints are folds of one cross-validation: the same recorded data, with
    ``folds`` set, differing in ``fold`` only."""
    datas = [m.data for m in members]
    if any(d is None or not d.get("folds") for d in datas):
        return False
    strip = [{k: v for k, v in d.items() if k != "fold"} for d in datas]
    return all(s == strip[0] for s in strip[1:])


def _check_oof(members: list[LoadedCheckpoint]) -> None:
    """``ValueError`` unless the members are distinct folds of one cross-validation."""
    for m in members:
        if m.data is None or not m.data.get("folds"):
            raise ValueError(f"combine=oof scores each fold's model on its own held-out fold, but {m.path} was not "
                             "trained with data.folds=K (it has no fold): use combine=ensemble")
    first = members[0]
    for m in members[1:]:
        differing = sorted(k for k in set(first.data) | set(m.data) if k != "fold" and first.data.get(k) != m.data.get(k))
        if differing:
            raise ValueError(f"combine=oof: {first.path} and {m.path} are not folds of one cross-validation: "
                             f"their data settings differ in {', '.join('data.' + k for k in differing)}")
    folds: dict[int, Path] = {}
    for m in members:
        fold = int(m.data.get("fold", 0))
        if fold in folds:
            raise ValueError(f"combine=oof: {folds[fold]} and {m.path} were both trained holding out fold {fold}: "
                             "keep one checkpoint per fold")
        folds[fold] = m.path


def _combine(cfg: DictConfig, members: list[LoadedCheckpoint]) -> str:
    """``single``, ``ensemble`` or ``oof``, from ``cfg.combine`` (``auto``: out-of-fold for the
    folds of one cross-validation scored on their own data, else the ensemble)."""
    combine = str(cfg.get("combine") or "auto")
    if combine not in ("auto", "ensemble", "oof"):
        raise ValueError(f"combine={combine}: choose auto, ensemble or oof")
    if len(members) == 1:
        if combine == "oof":
            raise ValueError("combine=oof needs the checkpoints of every fold (ckpt=<sweep folder> or a list)")
        return "single"
    own_data = not _given_data(cfg).get("_target_")  # the checkpoints' recorded data (data.root= may move it)
    if combine == "auto":
        combine = "oof" if own_data and fold_family(members) else "ensemble"
    if combine == "oof":
        if not own_data:
            raise ValueError("combine=oof scores each fold on its own held-out images, from the checkpoints: "
                             "leave dataset= out (data.root= alone moves their data; or use combine=ensemble on "
                             "other data)")
        if str(cfg.split) != "val":
            raise ValueError(f"combine=oof scores the held-out fold of each model: split={cfg.split} does not apply "
                             "(leave split out)")
        _check_oof(members)
    elif fold_family(members) and (own_data or _same_root(cfg, members[0]) or _same_images(cfg, members[0])):
        raise ValueError(
            "these checkpoints are the folds of one cross-validation: every image of their data was trained on "
            "by one of them, so their ensemble cannot be scored on it. Score them out-of-fold (combine=oof: each "
            "image by the fold that held it out), or point dataset=/data.root= at images none of them trained on")
    return combine


def _same_root(cfg: DictConfig, member: LoadedCheckpoint) -> bool:
    """Whether ``data.root`` names the folder the checkpoint was trained on."""
    root, trained = cfg.data.get("root"), (member.data or {}).get("root")
    if root is None or trained is None:
        return False
    return Path(str(root)).resolve() == Path(str(trained)).resolve()


def _same_images(cfg: DictConfig, member: LoadedCheckpoint) -> bool:
    """Whether the data named holds images the checkpoint's cross-validation trained on under
    another root (a copy): up to 3 image names both hold, compared byte for byte. Unknown (so
    ``False``) when the recorded root is gone."""
    if member.data is None or not member.data.get("root") or not Path(str(member.data["root"])).is_dir():
        return False
    try:
        trained = {i.name: i.image for i in instantiate(dict(member.data), _convert_="all").items()}
        named = instantiate(_data_config(cfg, member), _convert_="all").items()
    except (OSError, ValueError):  # a folder the datasets cannot read: scoring says why
        return False
    shared = [(trained[i.name], i.image) for i in named if i.name in trained][:3]
    return any(Path(a).read_bytes() == Path(b).read_bytes() for a, b in shared)


class _Part:
    """One model (or the ensemble) with the images it scores."""

    def __init__(self, datamodule: Any, dataset: Any, predictor: Any, label: str) -> None:
        self.datamodule, self.dataset, self.predictor, self.label = datamodule, dataset, predictor, label


def _split_items(datamodule: Any, split: str) -> list[Any]:
    items = datamodule.items()
    train_idx, val_idx = datamodule.split(items)
    chosen = {"val": val_idx, "train": train_idx, "all": list(range(len(items)))}[split]
    if not chosen:
        raise ValueError(f"the {split} split of {datamodule.kind} data at {datamodule.root} is empty")
    return [items[i] for i in chosen]


def _datamodule(data_cfg: dict[str, Any], loaded: LoadedCheckpoint, ckpt: str) -> Any:
    datamodule = instantiate(data_cfg, _convert_="all")
    if label_count(datamodule.num_classes) != label_count(loaded.num_classes):
        raise ValueError(
            f"the dataset has {datamodule.num_classes} classes (data.num_classes) but {ckpt} predicts {loaded.num_classes}"
        )
    datamodule.prepare_data()
    return datamodule


def _parts(cfg: DictConfig, members: list[LoadedCheckpoint], combine: str, split: str) -> list[_Part]:
    if combine != "oof":
        datamodule = _datamodule(_data_config(cfg, members[0]), members[0], str(members[0].path))
        dataset = datamodule.evaluation_dataset(_split_items(datamodule, split))
        label = "ensemble" if combine == "ensemble" else str(members[0].path)
        return [_Part(datamodule, dataset, build_predictor(members, cfg), label)]
    parts, seen = [], {}
    for m in sorted(members, key=lambda m: int(m.data.get("fold", 0))):
        datamodule = _datamodule(_data_config(cfg, m), m, str(m.path))  # its recorded data (data.root= may move it)
        dataset = datamodule.evaluation_dataset(_split_items(datamodule, "val"))
        for name in dataset.names:
            if name in seen:
                raise ValueError(f"combine=oof: {name} is held out by both {seen[name]} and {m.path}: "
                                 "these are not the folds of one cross-validation")
            seen[name] = m.path
        parts.append(_Part(datamodule, dataset, build_predictor(m, cfg), f"fold {m.data.get('fold', 0)}"))
    return parts


def run_eval(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt`` (one checkpoint, or several: an ensemble, or the folds of a
    cross-validation scored out-of-fold) on a split of a dataset; returns ``scores.json``."""
    from tqdm.auto import tqdm

    from segkit.checkpoint import checkpoint_paths
    from segkit.postprocess import POSTPROCESS_FILE, ComponentTally, apply_min_sizes, read_postprocessing
    from segkit.visualize import confusion_heatmap, error_panel

    started = time.perf_counter()
    split = str(cfg.split)
    if split not in ("val", "train", "all"):
        raise ValueError(f"split={split}: choose val, train or all")
    paths = checkpoint_paths(cfg.ckpt)
    members = [load_checkpoint(p) for p in paths]
    combine = _combine(cfg, members)
    loaded = members[0]
    postprocess = cfg.get("postprocess")
    fit = postprocess == "fit"
    names_out = list(OUTPUT_FILES) + ([POSTPROCESS_FILE] if fit else [])
    if cfg.get("output"):
        output = Path(str(cfg.output))
    elif combine == "single":
        output = _default_output(paths[0], split)
    else:
        output = _default_ensemble_output(paths, combine)
    refuse_overwrite([output / name for name in names_out], bool(cfg.overwrite))
    claim_run_dir(output, "output")  # writable, and no other live segkit process writing into it
    min_sizes, connectivity = (None, 8)
    if postprocess and not fit:
        min_sizes, connectivity = read_postprocessing(str(postprocess), loaded.class_names)
    parts = _parts(cfg, members, combine, split)
    hp = loaded.module.hparams
    k = label_count(loaded.num_classes)
    scores = EvalScores(loaded.class_names, hp.ignore_index, bool(hp.include_background) and loaded.num_classes > 1)
    tally = ComponentTally(k, hp.ignore_index, int(cfg.get("connectivity") or 8)) if fit else None
    worst: list[tuple[float, int, int, np.ndarray]] = []  # max-heap on the score (negated) of the worst N
    n_worst = int(cfg.worst)
    limit = int(cfg.limit) if cfg.get("limit") else None
    if combine != "single":
        log.info("%s of %d checkpoints: %s", "out-of-fold scores" if combine == "oof" else "ensemble (logits averaged)",
                 len(members), ", ".join(str(p) for p in paths))
    counts = []
    for part in parts:  # limit=N: the first N images in all (taken fold by fold)
        left = None if limit is None else max(limit - sum(counts), 0)
        counts.append(len(part.dataset) if left is None else min(len(part.dataset), left))
    for p, part in enumerate(parts):
        count = counts[p]
        desc = f"eval {split}" + (f" ({part.label})" if combine == "oof" else "")
        for index in tqdm(range(count), unit="img", desc=desc):
            try:
                image, target = part.dataset.load(index)
            except (ValueError, OSError) as err:
                raise ValueError(
                    f"{err} — segkit-eval scores every image of the split, so a file it cannot read stops it "
                    "(leaving it out would change the scores unseen): fix or remove the file; segkit-prepare "
                    "dataset=... data.root=... check=true lists every problem") from None
            image = part.predictor.preprocessing.check(image, part.dataset.image_paths[index])
            labels = part.predictor.predict(image).labels
            if tally is not None:
                tally.add(target, labels)
            if min_sizes is not None:
                labels = apply_min_sizes(labels, min_sizes, connectivity)
            score = scores.add(part.dataset.names[index], target, labels)
            if n_worst > 0:
                entry = (-score, -p, -index, labels)
                if len(worst) < n_worst:
                    heapq.heappush(worst, entry)
                elif entry[:3] > worst[0][:3]:
                    heapq.heapreplace(worst, entry)

    summary = scores.summary()
    settings = OmegaConf.to_container(cfg, resolve=True)
    first = parts[0].datamodule
    summary.update(checkpoint=str(paths[0]) if combine == "single" else [str(p) for p in paths],
                   combine=combine, dataset=first.kind, root=str(first.root), split=split,
                   settings={**{k: settings.get(k) for k in ("tile", "overlap", "tta", "threshold", "postprocess")},
                             "precision": parts[0].predictor.precision},  # as used (auto resolved)
                   windows=sum(part.predictor.windows_run for part in parts))
    if combine == "oof":
        total = len(first.items())
        folds = sorted(int(m.data.get("fold", 0)) for m in members)
        summary["coverage"] = {"images_scored": summary["images"], "dataset_images": total,
                               "folds": folds, "of_folds": int(loaded.data["folds"])}
        missing = sorted(set(range(int(loaded.data["folds"]))) - set(folds))
        if missing or summary["images"] < total:
            log.warning("out-of-fold scores cover %d of the %d images: %s", summary["images"], total,
                        f"fold(s) {', '.join(map(str, missing))} of {loaded.data['folds']} missing (not among the "
                        "checkpoints)" if missing else "limit= or images left out")
    output.mkdir(parents=True, exist_ok=True)
    if tally is not None:
        fitted = tally.fit(scores.total, loaded.class_names)
        source = {"checkpoints": [str(p) for p in paths], "combine": combine, "split": split,
                  "root": str(first.root), "images": summary["images"]}
        from segkit.postprocess import write_postprocessing

        write_postprocessing(output / POSTPROCESS_FILE, fitted, loaded.class_names, tally.connectivity, source)
        summary["postprocessing"] = {
            "file": str(output / POSTPROCESS_FILE), "classes": fitted["classes"],
            "scores_after": scores_from_confusions(fitted["confusion_after"], [], loaded.class_names, scores.first),
        }
    per_image = pd.DataFrame(scores.rows)
    write_bytes_atomic(output / "per_image.csv", per_image.to_csv(index=False, float_format="%.6f").encode())
    confusion = pd.DataFrame(scores.total, index=pd.Index(loaded.class_names, name="truth \\ prediction"), columns=loaded.class_names)
    write_bytes_atomic(output / "confusion.csv", confusion.to_csv().encode())
    confusion_heatmap(output / "confusion.png", scores.total, loaded.class_names, f"{first.kind} {split}: pixel confusion")

    ranked = sorted(((-neg, -negp, -negi, labels) for neg, negp, negi, labels in worst), key=lambda e: (e[0], e[1], e[2]))
    panels = []
    if cfg.overwrite:  # the report is replaced: an earlier report's panels would sit beside the new ones
        for stale in sorted((output / "worst").glob("[0-9][0-9]_*.png")):
            stale.unlink()
    row_of = {p: sum(counts[:p]) for p in range(len(parts))}
    for rank, (_score, p, index, labels) in enumerate(ranked, start=1):
        dataset = parts[p].dataset
        image, target = dataset.load(index)
        name = dataset.names[index]
        path = output / "worst" / f"{rank:02d}_{Path(name).stem}.png"
        if path.exists() and not cfg.overwrite:
            raise FileExistsError(f"{path} exists: pass overwrite=true to replace it")
        row = scores.rows[row_of[p] + index]
        error_panel(path, image, target, labels, len(loaded.class_names),
                    f"{name}: Dice {row['dice']:.3f}, IoU {row['iou']:.3f}", hp.ignore_index, class_names=loaded.class_names)
        panels.append({"rank": rank, "name": name, "dice": row["dice"], "iou": row["iou"], "panel": str(path.relative_to(output))})
    summary["worst"] = panels
    summary["seconds"] = round(time.perf_counter() - started, 2)
    write_json_atomic(output / "scores.json", summary)
    write_bytes_atomic(output / "report.md", format_report(summary).encode())
    if min_sizes is not None:
        sizes = ", ".join(f"{name} {size}" for name, size in zip(loaded.class_names, min_sizes) if size)
        log.info("scored after post-processing from %s (components removed below: %s px)", postprocess, sizes or "none")
    log.info("%s", format_scores(summary))
    if "postprocessing" in summary:
        log.info("%s", format_postprocessing(summary))
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


def format_postprocessing(summary: dict[str, Any]) -> str:
    """Plain-text lines: the fitted sizes and each class's Dice before and after."""
    pp = summary["postprocessing"]
    lines = [f"post-processing fitted on these {summary['images']} images (written to {pp['file']}):"]
    for name, c in pp["classes"].items():
        change = (f"components under {c['min_size']} px removed ({c['removed']} of {c['components']}): Dice "
                  f"{_fmt(c['dice_before'])} -> {_fmt(c['dice_after'])}" if c["min_size"] else
                  f"nothing removed (no size raised its Dice {_fmt(c['dice_before'])} by 0.001 or more)")
        lines.append(f"  {name}: {change}")
    return "\n".join(lines)


def format_report(summary: dict[str, Any]) -> str:
    """The Markdown report: scores, confusion matrix, worst images."""
    s = summary
    combine = s.get("combine", "single")
    if combine == "single":
        what = [f"- checkpoint: `{s['checkpoint']}`"]
    elif combine == "ensemble":
        what = [f"- ensemble of {len(s['checkpoint'])} checkpoints, logits averaged: "
                + ", ".join(f"`{c}`" for c in s["checkpoint"])]
    else:
        cov = s["coverage"]
        what = [f"- out-of-fold: each image scored by the model of the fold that held it out "
                f"(folds {', '.join(map(str, cov['folds']))} of {cov['of_folds']}; {cov['images_scored']} of the "
                f"{cov['dataset_images']} images)", *[f"  - `{c}`" for c in s["checkpoint"]]]
    pp = s["settings"].get("postprocess")
    lines = [
        f"# segkit-eval: {s['dataset']}, {s['split']} split" + {"oof": " (out-of-fold)", "ensemble": " (ensemble)"}.get(combine, ""),
        "",
        *what,
        f"- data: `{s['root']}` — {s['images']} images, scored at their own resolution",
        f"- inference: precision {s['settings']['precision']}, tile {s['settings']['tile']}, "
        f"TTA {', '.join(s['settings']['tta'] or []) or 'none'}; {s['seconds']} s",
        *([f"- post-processing: {pp}" if pp != "fit" else
           "- post-processing: fitted here, scores below are before it (see the section after them)"] if pp else []),
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
    if "postprocessing" in s:
        lines += ["## Post-processing fitted on these images", "",
                  "Per class, predicted components smaller than the size chosen here become class 0 "
                  "(sizes tried: powers of two; kept only where the class's Dice rises by 0.001 or more). Written to "
                  f"[{Path(s['postprocessing']['file']).name}]({Path(s['postprocessing']['file']).name}); apply it with "
                  "`postprocess=<that file>` in segkit-predict or segkit-eval. The Dice after it is measured on the "
                  "same images it was chosen on: optimistic.", "",
                  "| class | min size (px) | components removed | Dice before | Dice after |", "|---|---:|---:|---:|---:|"]
        for name, c in s["postprocessing"]["classes"].items():
            lines.append(f"| {name} | {c['min_size']} | {c['removed']} of {c['components']} | {_fmt(c['dice_before'])} | "
                         f"{_fmt(c['dice_after'])} |")
        lines.append("")
    if s["worst"]:
        lines += [f"## The {len(s['worst'])} worst images by per-image Dice", "",
                  "Panels: image | ground truth | prediction | errors (green correct, red false positive, "
                  "blue missed, magenta wrong class).", ""]
        for w in s["worst"]:
            lines += [f"### {w['rank']}. {w['name']} — Dice {w['dice']:.4f}, IoU {w['iou']:.4f}", "",
                      f"![{w['name']}]({w['panel']})", ""]
    return "\n".join(lines)
