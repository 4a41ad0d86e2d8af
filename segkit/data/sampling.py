"""Training samplers: per-epoch draws that depend only on (seed, epoch).

They yield ``(index, augmentation_seed)`` pairs: :class:`~segkit.data.datasets.ImageMaskDataset`
seeds its augmentations for that sample from the pair, so the images of an epoch — order,
choice and augmentation — are a function of (seed, epoch) alone, in the main process or a
worker, and a resumed run replays them exactly.

Under DDP every rank draws the same epoch and keeps its share (:meth:`_EpochSampler.shard`,
set by the datamodule; Lightning's own sampler wrapping is off, ``use_distributed_sampler:
false``): the union of the ranks' samples is the single-process epoch, and per-epoch
background draws stay what they are on one process. :class:`ShardSampler` splits the
validation set without repeating images, so metrics equal a single-process run.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

__all__ = [
    "BackgroundRatioSampler",
    "EpochShuffleSampler",
    "RepeatFactorSampler",
    "ShardSampler",
    "background_subset",
    "repeat_factors",
]

SeededIndex = tuple[int, int]


def background_subset(
    negatives: Sequence[int], ratio: float, rng: np.random.Generator
) -> np.ndarray:
    """A random ``round(ratio * len(negatives))`` of ``negatives``, without replacement."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"background ratio must be in [0, 1], got {ratio}")
    count = int(round(ratio * len(negatives)))
    return rng.choice(np.asarray(negatives, dtype=np.int64), size=count, replace=False)


class _EpochSampler(Sampler[SeededIndex]):
    """Base: an epoch counter (``set_epoch``, called by Lightning before each epoch; used
    on its own, it advances after every full iteration) and seeded pairs."""

    def __init__(self, seed: int, shuffle: bool) -> None:
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.rank, self.world_size = 0, 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shard(self, rank: int, world_size: int) -> None:
        """Yield only rank ``rank``'s share of each epoch: every ``world_size``-th sample of
        the epoch (padded by wrapping round to a multiple of ``world_size``, so every rank runs
        the same number of steps, as DDP needs)."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.rank, self.world_size = rank, world_size

    def _count(self) -> int:
        raise NotImplementedError

    def _indices(self, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def __len__(self) -> int:
        return -(-self._count() // self.world_size)

    def __iter__(self) -> Iterator[SeededIndex]:
        rng = np.random.default_rng((self.seed, self.epoch))
        indices = self._indices(rng)
        if self.shuffle:
            rng.shuffle(indices)
        seeds = rng.integers(0, 2**31 - 1, size=len(indices))
        self.epoch += 1
        if self.world_size > 1 and len(indices):
            total = len(self) * self.world_size
            indices, seeds = np.resize(indices, total)[self.rank::self.world_size], np.resize(seeds, total)[self.rank::self.world_size]
        return iter(zip(indices.tolist(), seeds.tolist()))


class EpochShuffleSampler(_EpochSampler):
    """Every index once per epoch, shuffled by (seed, epoch)."""

    def __init__(self, size: int, seed: int = 0, shuffle: bool = True) -> None:
        super().__init__(seed, shuffle)
        self.size = size

    def _count(self) -> int:
        return self.size

    def _indices(self, rng: np.random.Generator) -> np.ndarray:
        return np.arange(self.size, dtype=np.int64)


class BackgroundRatioSampler(_EpochSampler):
    """Every positive (e.g. ship) index plus a fresh random share of the negatives each epoch.

    Args:
        positives: dataset indices always drawn (images with foreground).
        negatives: dataset indices of background-only images.
        ratio: share of ``negatives`` drawn per epoch, in [0, 1].
        seed: base seed; epoch ``e`` draws from ``(seed, e)``.
        shuffle: shuffle the drawn indices.
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
        super().__init__(seed, shuffle)
        self.positives = np.asarray(positives, dtype=np.int64)
        self.negatives = np.asarray(negatives, dtype=np.int64)
        self.ratio = ratio

    def _count(self) -> int:
        return len(self.positives) + int(round(self.ratio * len(self.negatives)))

    def _indices(self, rng: np.random.Generator) -> np.ndarray:
        return np.concatenate([self.positives, background_subset(self.negatives, self.ratio, rng)])


def repeat_factors(presence: Sequence[Sequence[int]], threshold: float) -> np.ndarray:
    """Repeat-factor sampling weights (Gupta et al., LVIS, CVPR 2019): image ``i`` gets
    ``r_i = max(1, max over the classes c it contains of sqrt(threshold / f_c))``, where
    ``f_c`` is the share of images that contain class ``c``: the images of a class found
    in fewer than ``threshold`` of the images are drawn about ``sqrt(threshold / f_c)``
    times per epoch.

    Args:
        presence: the classes present in each image.
        threshold: ``t``; classes in at least this share of the images are not repeated.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"data.repeat_threshold must be in (0, 1], got {threshold}")
    if not len(presence):
        return np.zeros(0)
    images_with = Counter(c for classes in presence for c in set(classes))
    share = {c: n / len(presence) for c, n in images_with.items()}
    return np.array([max([1.0] + [math.sqrt(threshold / share[c]) for c in set(classes)]) for classes in presence])


class RepeatFactorSampler(_EpochSampler):
    """Each image about ``factor`` times per epoch: ``floor(factor)`` times, plus once more
    for ``round(Σ frac(factor))`` images drawn without replacement with probability
    proportional to their fractional parts, by (seed, epoch). Every epoch has the same
    length, ``round(Σ factor)``.

    Args:
        factors: one repeat factor (>= 1) per dataset index, e.g. :func:`repeat_factors`.
        seed: base seed; epoch ``e`` draws from ``(seed, e)``.
        shuffle: shuffle the drawn indices.
    """

    def __init__(self, factors: Sequence[float], seed: int = 0, shuffle: bool = True) -> None:
        super().__init__(seed, shuffle)
        self.factors = np.asarray(factors, dtype=np.float64)
        if (self.factors < 1.0).any():
            raise ValueError("repeat factors must be >= 1")
        self.whole = np.floor(self.factors).astype(np.int64)
        fraction = self.factors - self.whole
        self.extra = int(round(fraction.sum()))
        self.fraction = fraction / fraction.sum() if self.extra else fraction

    def _count(self) -> int:
        return int(self.whole.sum()) + self.extra

    def _indices(self, rng: np.random.Generator) -> np.ndarray:
        indices = np.repeat(np.arange(len(self.factors), dtype=np.int64), self.whole)
        if self.extra:
            extra = rng.choice(len(self.factors), size=self.extra, replace=False, p=self.fraction)
            indices = np.concatenate([indices, extra.astype(np.int64)])
        return indices


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world_size, ...`` of ``0..size-1`` in order: each image on
    exactly one rank, none repeated (ranks may run one batch more or less)."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.size, self.rank, self.world_size = size, rank, world_size

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.world_size))
