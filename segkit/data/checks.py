"""Reading a dataset's files before training, and all of them for ``segkit-prepare check=true``.

:class:`FileChecks` is a part of :class:`segkit.data.datamodule.SegmentationDataModule`:
``check_sample`` decodes a spread sample at set-up (seconds, instead of a crash hours into
training), ``check`` decodes every item and returns every problem, none raised. Both read
the files as stored, through the dataset's ``raw_dataset`` (its sources, never a cache).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from segkit.errors import format_problems

if TYPE_CHECKING:
    from segkit.data.datamodule import Item

__all__ = ["FileChecks"]

log = logging.getLogger(__name__)


class FileChecks:
    """The checks of a datamodule's files (mixed into the datamodule base class)."""

    setup_sample_size = 8

    def check_sample(self, items: Sequence[Item]) -> None:
        """Decode a spread sample of ``setup_sample_size`` items (image, mask, pairing, dtype,
        channels, sizes, mask values) and raise with every problem found — seconds at setup
        instead of a crash hours into training. ``segkit-prepare check=true`` reads them all."""
        if not items:
            return
        count = min(self.setup_sample_size, len(items))
        picks = sorted({round(i * (len(items) - 1) / max(count - 1, 1)) for i in range(count)})
        self._note_gray_images([items[i].image for i in picks])
        problems = self._load_problems([items[i] for i in picks])
        if not problems:
            return
        head = f"{len(problems)} of {len(picks)} sampled {self.kind} images at {self.root} cannot be used:"
        listing = f"segkit-prepare dataset={self.kind} data.root={self.root} check=true lists every problem of every file"
        if self.on_bad_file == "skip" and len(problems) < len(picks):
            log.warning("%s", format_problems(problems, head, tail=f"data.on_bad_file=skip: such files are skipped ({listing})"))
            return
        raise ValueError(format_problems(problems, head, tail=(
            f"Fix or remove them; data.on_bad_file=skip trains without such files. ({listing})"
            if len(problems) < len(picks) else f"({listing})")))

    def _note_gray_images(self, paths: Sequence[Path]) -> None:
        """Say so when every sampled image is grayscale but the model is to take RGB: each is
        copied into three channels (lossless, but three times the input for one band's worth)."""
        if self.in_channels != 3 or self.fixed_in_channels:
            return
        from PIL import Image

        try:
            modes = set()
            for path in paths:
                with Image.open(path) as im:
                    modes.add(im.mode)
        except Exception:  # noqa: BLE001 — unreadable files are reported by the checks
            return
        if modes and modes <= {"L", "I", "I;16", "I;16B", "I;16L", "F"}:
            log.warning("the sampled images are grayscale but data.in_channels=3: each is copied into 3 channels; "
                        "data.in_channels=1 trains a model on the one channel they have")

    def check(self) -> list[str]:
        """Every problem of every file (pairing, decoding, size, dtype, mask values), none raised."""
        try:
            self.require_root()
            scan = self._scan or self.scan()
        except (ValueError, FileNotFoundError) as err:
            return [str(err)]
        self._scan = scan
        self.checked_missing = list(scan.missing)
        missing = scan.missing if self.missing == "error" else []
        problems = list(scan.problems) + list(missing) + self._load_problems(scan.items, progress=True)
        if scan.items:  # files that are all fine can still make no usable split (one car, one scene)
            try:
                train_idx, val_idx = self.split(list(scan.items))
            except ValueError as err:
                problems.append(str(err))
            else:
                problem = self.split_problem(train_idx, val_idx)
                problems += [problem] if problem is not None else []
        return problems

    def _load_problems(self, items: Sequence[Item], progress: bool = False) -> list[str]:
        """Decode every item as stored (image, mask, their checks); the message of each failure."""
        dataset = self.raw_dataset(items)
        indices = range(len(dataset))
        if progress:
            from tqdm.auto import tqdm

            indices = tqdm(indices, desc=f"checking {self.kind}", unit="img")
        problems = []
        for index in indices:
            try:
                dataset.load(index)
            except (ValueError, OSError) as err:
                problems.append(str(err))
        return problems
