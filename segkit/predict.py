"""``segkit-predict``: masks (and Kaggle submissions) for new images from a checkpoint alone.

Writes into ``output``::

    masks/<stem>.png            class indices (binary: 0 / binary_value); .tif for TIFF sources
    probabilities/<stem>.npy    (K, H, W) float16, when save_probabilities
    overlays/<stem>.png         the image with the predicted classes drawn in, when save_overlays
    submission.csv              format=airbus | carvana, validated by decoding it back
    submission.partial.jsonl    its rows as each image finishes, until the CSV is written
    predict.json                what ran: checkpoint, settings, counts, time, the images that failed
    .segkit-predict.json        checkpoint, input and settings, for resume=true

``resume=true`` continues an interrupted run into the same output, skipping the images it
finished. Nothing that exists is overwritten unless ``overwrite=true``; every file is written under a
temporary name and renamed into place. Hidden files (``.DS_Store``, macOS ``._x.jpg``
resource forks) are not inputs; an image that cannot be read, or does not fit the model,
is logged, listed in ``predict.json`` under ``failed`` and passed over — the run fails only
when no image at all could be predicted.
"""

from __future__ import annotations

import csv
import functools
import glob
import io
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from segkit.checkpoint import checkpoint_paths, load_checkpoint
from segkit.data.datasets import label_count
from segkit.data.io import (
    DEFAULT_MAX_IMAGE_PIXELS,
    check_pixels,
    is_hidden,
    read_image,
    refuse_overwrite,
    temporary_path,
    write_bytes_atomic,
    write_json_atomic,
    write_png_atomic,
)
from segkit.errors import format_problems
from segkit.postprocess import apply_min_sizes, read_postprocessing
from segkit.predictor import Predictor, Preprocessing, build_predictor
from segkit.rundir import RunDirectoryBusy, claim_run_dir, held_here, release_run_dir, run_holder
from segkit.submission import FORMATS, SubmissionWriter

__all__ = ["IMAGE_SUFFIXES", "collect_inputs", "run_predict"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif")


def _is_input(path: Path, folder: Path | None = None) -> bool:
    """An image name that is not hidden, nor (below ``folder``) inside a hidden folder."""
    if path.suffix.lower() not in IMAGE_SUFFIXES or is_hidden(path):
        return False
    return folder is None or not any(is_hidden(part) for part in path.relative_to(folder).parts)


def collect_inputs(spec: str, recursive: bool = False) -> list[Path]:
    """The image files ``spec`` names: one file, a folder's images, or a glob pattern.

    Hidden files (names starting with ``.``: ``.DS_Store``, macOS ``._x.jpg`` resource
    forks) and, with ``recursive``, hidden subfolders are left out of folders and patterns.
    Raises ``FileNotFoundError`` when it names nothing, ``ValueError`` when two images
    would write the same output name (same stem).
    """
    path = Path(spec)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        pattern = "**/*" if recursive else "*"
        files = sorted(p for p in path.glob(pattern) if _is_input(p, path) and p.is_file())
        if not files:
            raise FileNotFoundError(f"input={spec}: the folder holds no images ({' '.join(IMAGE_SUFFIXES)})")
    elif any(c in spec for c in "*?["):
        files = sorted(p for p in map(Path, glob.glob(spec, recursive=True)) if _is_input(p) and p.is_file())
        if not files:
            raise FileNotFoundError(f"input={spec}: the pattern matches no images ({' '.join(IMAGE_SUFFIXES)})")
    else:
        raise FileNotFoundError(f"input={spec}: no such file or folder")
    seen: dict[str, Path] = {}
    for file in files:
        if file.stem in seen:
            raise ValueError(f"input={spec}: {seen[file.stem]} and {file} would write the same outputs ({file.stem})")
        seen[file.stem] = file
    return files


def check_headers(files: list[Path], max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> None:
    """Read every image's header (not its pixels) and raise listing each file whose size is
    above ``max_pixels`` — before any time is spent predicting. (Channels are not judged
    from headers: the decoder's count can differ, e.g. a CMYK JPEG decodes to RGB; each
    image is conformed when read, :meth:`Preprocessing.check`.)"""
    from PIL import Image

    problems = []
    for file in files:
        try:
            with Image.open(file) as im:
                width, height = im.size
        except Exception:  # noqa: BLE001 — formats PIL cannot open are checked when read
            continue
        try:
            check_pixels(file, height, width, max_pixels)
        except ValueError as err:
            problems.append(str(err))
    if problems:
        raise ValueError(f"{len(problems)} input image(s) are refused from their headers:\n  " + "\n  ".join(problems[:20]))


def load_input(file: Path, preprocessing: Preprocessing, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """One input image as the model takes it: decoded as training decodes (:func:`read_image`),
    channels conformed as training conforms them (:meth:`Preprocessing.check`)."""
    return preprocessing.check(read_image(file, max_pixels), file)


def iter_images(files: list[Path], readers: int, load: Callable[[Path], np.ndarray]) -> Iterator[tuple[Path, np.ndarray | Exception]]:
    """``(file, load(file))`` in order, loaded ahead in ``readers`` threads (OpenCV and
    tifffile release the GIL); a file that ``load`` cannot read (``ValueError``, ``OSError``)
    gives its error in place of the image."""

    def attempt(file: Path) -> np.ndarray | Exception:
        try:
            return load(file)
        except (ValueError, OSError) as err:  # FileNotFoundError and PermissionError are OSErrors
            return err

    if readers <= 0:
        for file in files:
            yield file, attempt(file)
        return
    with ThreadPoolExecutor(max_workers=readers) as pool:
        pending = [pool.submit(attempt, f) for f in files[: readers + 1]]
        for i, file in enumerate(files):
            image = pending[i].result()
            pending[i] = None  # free it
            if i + readers + 1 < len(files):
                pending.append(pool.submit(attempt, files[i + readers + 1]))
            yield file, image


def _mask_bytes(labels: np.ndarray, tiff: bool) -> bytes:
    if tiff:
        import tifffile

        buffer = io.BytesIO()
        tifffile.imwrite(buffer, labels, compression="zlib")
        return buffer.getvalue()
    import cv2

    ok, encoded = cv2.imencode(".png", labels)
    if not ok:
        raise ValueError(f"OpenCV could not encode a mask of shape {labels.shape}")
    return encoded.tobytes()


def _write_probabilities(path: Path, predictor: Predictor, image: np.ndarray) -> np.ndarray:
    """Predict with the probabilities streamed into a float16 ``.npy`` (memory-mapped, renamed when complete)."""
    tmp = temporary_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (max(predictor.num_classes, 1), *image.shape[:2])
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)
    labels = predictor.predict(image, probabilities_out=out).labels
    out.flush()
    del out
    os.replace(tmp, path)
    return labels


def planned_outputs(files: list[Path], output: Path, cfg: DictConfig) -> dict[str, list[Path]]:
    """Every file this run will write, by kind."""
    plan: dict[str, list[Path]] = {"summary": [output / "predict.json"]}
    if cfg.save_masks:
        plan["masks"] = [output / "masks" / (f.stem + (".tif" if f.suffix.lower() in (".tif", ".tiff") else ".png")) for f in files]
    if cfg.save_probabilities:
        plan["probabilities"] = [output / "probabilities" / f"{f.stem}.npy" for f in files]
    if cfg.save_overlays:
        plan["overlays"] = [output / "overlays" / f"{f.stem}.png" for f in files]
    if cfg.format != "masks":
        plan["submission"] = [output / "submission.csv"]
    return plan


RUN_RECORD = ".segkit-predict.json"  # what wrote this folder: resume=true continues only the same run
JOURNAL = "submission.partial.jsonl"  # a submission's rows as predicted, one line per image
#: settings whose change changes what is written: a resume must keep them
RESUME_KEYS = ("format", "save_masks", "save_probabilities", "save_overlays", "postprocess", "binary_value", "submission",
               "tile", "overlap", "blend", "tta", "threshold", "precision", "recursive")


def _run_record(paths: list[Path], cfg: DictConfig) -> dict[str, Any]:
    settings = OmegaConf.to_container(cfg, resolve=True)
    return {"checkpoint": [str(Path(p).resolve()) for p in paths], "input": str(cfg.input),
            "settings": {key: settings.get(key) for key in RESUME_KEYS}}


def _check_resumable(output: Path, record: dict[str, Any]) -> None:
    """``resume=true``: refuse unless ``output`` holds an earlier run of the same checkpoint,
    input and settings (naming what differs)."""
    path = output / RUN_RECORD
    if not path.is_file():
        raise FileNotFoundError(
            f"resume=true: {output} holds no segkit-predict run to continue (no {RUN_RECORD}); leave resume out to start one"
        )
    earlier = json.loads(path.read_text())
    differ = [key for key in ("checkpoint", "input") if earlier.get(key) != record[key]]
    shown = lambda value: "not set (the checkpoint's own)" if value is None else repr(value)  # noqa: E731
    differ += [f"{key} (was {shown(earlier.get('settings', {}).get(key))}, now {shown(value)})"
               for key, value in record["settings"].items() if earlier.get("settings", {}).get(key) != value]
    if differ:
        raise ValueError(
            f"resume=true: {output} was written by a run with other settings: {'; '.join(differ)}. Resume with the "
            "same ckpt, input and settings, or write into another output folder"
        )


def _refuse_images_added_since(files: list[Path], submission_csv: Path) -> None:
    """resume=true on a finished submission: images added to the input since are not in its
    CSV, and a finished CSV is not appended to; say so rather than report nothing to do."""
    with submission_csv.open(newline="") as handle:
        reader = csv.reader(handle)
        next(reader, None)
        written = {row[0] for row in reader if row}
    summary = submission_csv.parent / "predict.json"
    unreadable = ({Path(f["file"]).name for f in json.loads(summary.read_text()).get("failed", [])}
                  if summary.is_file() else set())  # not in the CSV, and said so when the run finished
    added = [file.name for file in files if file.name not in written and file.name not in unreadable]
    if added:
        raise ValueError(format_problems(
            added, f"resume=true: the run into {submission_csv.parent} finished, but {len(added)} image(s) of the input "
            f"are not in its {submission_csv.name} (added to the input since?):", limit=5,
            tail="overwrite=true predicts every image again; or predict the new ones into another output folder"))


def _left_to_do(files: list[Path], plan: dict[str, list[Path]], submission: SubmissionWriter | None) -> list[int]:
    """The images an interrupted run did not finish: one of their files is missing, or (with a
    submission) their rows are not in its journal."""
    per_image = [plan[kind] for kind in ("masks", "probabilities", "overlays") if kind in plan]
    return [i for i, file in enumerate(files)
            if not all(paths[i].exists() for paths in per_image) or (submission is not None and file.name not in submission.done)]


def run_predict(cfg: DictConfig) -> dict[str, Any]:
    """Predict every input image; returns the content of ``predict.json``."""
    from tqdm.auto import tqdm

    from segkit.visualize import overlay

    started = time.perf_counter()
    fmt = str(cfg.format)
    if fmt != "masks" and fmt not in FORMATS:
        raise ValueError(f"format={fmt}: choose masks, {', '.join(FORMATS)}")
    with_masks = cfg.save_masks if cfg.save_masks is not None else fmt == "masks"
    cfg = OmegaConf.merge(cfg, {"save_masks": bool(with_masks)})
    paths = checkpoint_paths(cfg.ckpt)
    members = [load_checkpoint(p) for p in paths]
    loaded = members[0]
    if fmt in FORMATS and loaded.num_classes > 2:
        raise ValueError(f"format={fmt} needs a binary model (num_classes 1 or 2); {paths[0]} has {loaded.num_classes} classes")
    min_sizes, connectivity = (None, 8)
    if cfg.get("postprocess"):
        min_sizes, connectivity = read_postprocessing(str(cfg.postprocess), loaded.class_names)
    files = collect_inputs(str(cfg.input), bool(cfg.recursive))
    output = Path(str(cfg.output))
    plan = planned_outputs(files, output, cfg)
    journal = output / JOURNAL if fmt in FORMATS else None
    record = _run_record(paths, cfg)
    resume = bool(cfg.get("resume", False))
    holder = run_holder(output) if output.is_dir() and not held_here(output) else None
    if holder is not None:  # before the checks of what is there: a live run's files are not an interrupted one's
        raise RunDirectoryBusy(f"{output.resolve()} is in use by another segkit run ({holder}): wait for it to finish, "
                               "or choose another directory with output=<folder>")
    if resume:
        _check_resumable(output, record)
        if journal is not None and not journal.exists() and (output / "submission.csv").is_file():
            _refuse_images_added_since(files, output / "submission.csv")
            log.info("resume=true: the run into %s finished (its submission.csv is written): nothing to do; "
                     "overwrite=true predicts again", output)
            return json.loads((output / "predict.json").read_text()) if (output / "predict.json").is_file() else {}
    else:
        if journal is not None and journal.exists() and not cfg.overwrite:
            raise FileExistsError(
                f"{journal}: an interrupted segkit-predict run left the submission rows it had predicted here: "
                "resume=true continues it (the images it finished are skipped), overwrite=true starts again"
            )
        try:
            refuse_overwrite([p for paths in plan.values() for p in paths], bool(cfg.overwrite))
        except FileExistsError as err:
            if not (output / RUN_RECORD).is_file():
                raise
            raise FileExistsError(f"{err}; or, if a segkit-predict run into it was interrupted, resume=true continues "
                                  "it (the images it finished are skipped)") from None
    claim_run_dir(output, "output")  # writable, and no other live segkit process writing into it
    try:
        if not resume:  # a resume was checked to be the same run: its record stays as written
            write_json_atomic(output / RUN_RECORD, record)
        predictor = build_predictor(members, cfg)
        max_pixels = cfg.get("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS)
        submission = (
            SubmissionWriter(fmt, output / "submission.csv", int(cfg.submission.min_size), int(cfg.submission.connectivity),
                             journal=journal, resume=resume)
            if fmt in FORMATS else None
        )
        todo = list(range(len(files)))
        if resume:
            todo = _left_to_do(files, plan, submission)
            if not todo and (output / "predict.json").is_file():
                log.info("resume=true: the run into %s finished (every image's outputs and its predict.json are there): "
                         "nothing to do; overwrite=true predicts again", output)
                return json.loads((output / "predict.json").read_text())
            log.info("resume=true: %d of %d image(s) were finished by the interrupted run; predicting the other %d",
                     len(files) - len(todo), len(files), len(todo))
        check_headers([files[i] for i in todo], max_pixels)
        binary = loaded.num_classes == 1
        model = str(paths[0]) if len(paths) == 1 else f"an ensemble of {len(paths)} checkpoints ({', '.join(map(str, paths))})"
        log.info("predicting %d image(s) with %s on %s (precision %s, tile %d, TTA %s%s)", len(todo), model,
                 predictor.device, predictor.precision, predictor.tile, predictor.tta or "none",
                 f", post-processing {cfg.postprocess}" if min_sizes is not None else "")
        failed: list[dict[str, str]] = []
        load = functools.partial(load_input, preprocessing=predictor.preprocessing, max_pixels=max_pixels)
        predicted = pixels = 0
        try:
            images = iter_images([files[i] for i in todo], int(cfg.readers), load)
            # the bar around the pairs (not inside zip): it sees the end, so it closes at n/n
            for i, (file, image) in tqdm(zip(todo, images), total=len(todo), unit="img", desc="predict"):
                if isinstance(image, Exception):
                    if len(files) == 1:
                        raise image
                    log.warning("skipped, cannot be predicted: %s", " ".join(str(image).split()))
                    failed.append({"file": str(file), "error": str(image)})
                    continue
                predicted += 1
                if cfg.save_probabilities:
                    labels = _write_probabilities(plan["probabilities"][i], predictor, image)
                else:
                    labels = predictor.predict(image).labels
                if min_sizes is not None:
                    labels = apply_min_sizes(labels, min_sizes, connectivity)
                pixels += labels.size
                if with_masks:
                    mask_path = plan["masks"][i]
                    values = labels * np.uint8(cfg.binary_value) if binary else labels
                    write_bytes_atomic(mask_path, _mask_bytes(values, mask_path.suffix == ".tif"))
                if cfg.save_overlays:
                    drawn = overlay(image, labels, label_count(loaded.num_classes), class_names=loaded.class_names)
                    write_png_atomic(plan["overlays"][i], drawn[:, :, ::-1])
                if submission is not None and file.name not in submission.done:
                    submission.add(file.name, labels > 0)  # last: a row in the journal means the image is finished
        except KeyboardInterrupt:
            raise KeyboardInterrupt(f"resume=true (the same command) continues into {output}") from None
        resumed = len(files) - len(todo)
        if not predicted and not resumed:
            raise ValueError(format_problems([f["error"] for f in failed], f"none of the {len(files)} input images could be predicted:"))
        settings = OmegaConf.to_container(cfg, resolve=True)
        per_image = {"masks", "probabilities", "overlays"}
        summary: dict[str, Any] = {
            "checkpoint": str(paths[0]) if len(paths) == 1 else [str(p) for p in paths],
            "input": str(cfg.input),
            "images": predicted + resumed,
            "resumed": resumed,  # finished by an interrupted run (resume=true), not predicted again
            "megapixels": round(pixels / 1e6, 3),
            "windows": predictor.windows_run,
            "device": str(predictor.device),
            "settings": {**{k: settings.get(k) for k in ("tile", "overlap", "blend", "batch_size", "tta", "threshold", "format",
                                                                 "postprocess")},
                         "precision": predictor.precision},  # as used (auto resolved)
            "outputs": {kind: predicted + resumed if kind in per_image else len(paths) for kind, paths in plan.items()},
            "failed": failed,
        }
        if submission is not None:
            summary["submission"] = {"path": str(submission.path), **submission.close()}
            log.info("%s submission: %s (%d rows, decoded back and checked)", fmt, submission.path, summary["submission"]["rows"])
        summary["seconds"] = round(time.perf_counter() - started, 2)
        write_json_atomic(output / "predict.json", summary)
        log.info("wrote %s%s", ", ".join(f"{n} {kind}" for kind, n in summary["outputs"].items()),
                 f" ({resumed} image(s) of them by the interrupted run)" if resumed else "")
        if failed:
            left_out = " (they are not in submission.csv)" if submission is not None else ""
            log.warning("%d image(s) could not be read: see %s%s", len(failed), output / "predict.json", left_out)
        return summary
    finally:  # library use: a second call into this output (resume=true) must find it free
        release_run_dir(output)
