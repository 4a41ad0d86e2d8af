"""Samplers that control the share of background-only images per epoch."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

__all__ = ["BackgroundRatioSampler", "background_subset"]


def background_subset(
    negatives: Sequence[int], ratio: float, rng: np.random.Generator
) -> np.ndarray:
    """A random ``round(ratio * len(negatives))`` of ``negatives``, without replacement."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"background ratio must be in [0, 1], got {ratio}")
    count = int(round(ratio * len(negatives)))
    return rng.choice(np.asarray(negatives, dtype=np.int64), size=count, replace=False)


class BackgroundRatioSampler(Sampler[int]):
    """Every positive (e.g. ship) index plus a fresh random share of the negatives each epoch.

    Args:
        positives: dataset indices always drawn (images with foreground).
        negatives: dataset indices of background-only images.
        ratio: share of ``negatives`` drawn per epoch, in [0, 1].
        seed: base seed; epoch ``e`` draws from ``(seed, e)``, so a run is reproducible
            and resumable.
        shuffle: shuffle the drawn indices.

    Lightning calls :meth:`set_epoch` before each epoch; used on its own, the sampler
    advances its epoch after every full iteration.
    """

    def __init__(
        self,
        positives: Sequence[int],
        negatives: Sequence[int],
        ratio: float,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"background ratio must be in [0, 1], got {ratio}")
        self.positives = np.asarray(positives, dtype=np.int64)
        self.negatives = np.asarray(negatives, dtype=np.int64)
        self.ratio = ratio
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.positives) + int(round(self.ratio * len(self.negatives)))

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng((self.seed, self.epoch))
        indices = np.concatenate([self.positives, background_subset(self.negatives, self.ratio, rng)])
        if self.shuffle:
            rng.shuffle(indices)
        self.epoch += 1
        return iter(indices.tolist())
