"""Learning-rate schedules torch does not have: polynomial decay after a linear warm-up,
stepped every optimizer step, that can follow a time budget (``trainer.max_time``).

``scheduler=poly`` (``conf/scheduler/poly.yaml``) is nnU-Net's schedule,
``lr = lr₀ · (1 − progress)^0.9``. ``total_steps: auto`` is filled in by
:meth:`segkit.module.SegmentationModule.configure_optimizers` from the trainer (max_epochs
× batches per epoch), and with ``follow_max_time: true`` it is handed the trainer's
:class:`~lightning.pytorch.callbacks.Timer`, so a run stopped by its time budget ends its
schedule then, not at an epoch count the budget never reaches.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["PolyLR"]


class _Timer(Protocol):  # lightning.pytorch.callbacks.Timer's public interface
    def time_elapsed(self, stage: str = ...) -> float: ...

    def time_remaining(self, stage: str = ...) -> float | None: ...


class PolyLR(LRScheduler):
    """Linear warm-up, then polynomial decay, one step per optimizer step.

    For step ``t`` (0-based): during the first ``warmup_steps`` steps
    ``lr = lr₀ · (t + 1) / warmup_steps``; after them ``lr = min_lr + (lr₀ − min_lr) ·
    (1 − progress)^power`` with ``progress = (t − warmup_steps) / (total_steps −
    warmup_steps)``. With a ``timer`` (the trainer's Timer, when ``trainer.max_time`` is
    set), progress is the larger of that and the share of the time budget spent, so the
    schedule ends when the budget does; the Timer's own state is saved in checkpoints, so
    ``resume=`` continues the budget. A time-following schedule depends on the machine's
    speed: two runs are bit-identical only without it.

    Args:
        optimizer: the optimizer whose groups' ``lr`` are the peaks ``lr₀``.
        total_steps: optimizer steps of the whole run (``None`` or infinite: the timer alone).
        warmup_steps: steps of linear warm-up.
        power: exponent of the decay (nnU-Net: 0.9).
        min_lr: the learning rate the decay ends at.
        timer: an object with ``time_elapsed("train")`` and ``time_remaining("train")``.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int | float | None = None,
        warmup_steps: int = 0,
        power: float = 0.9,
        min_lr: float = 0.0,
        timer: _Timer | None = None,
        last_epoch: int = -1,
    ) -> None:
        finite = total_steps is not None and math.isfinite(total_steps)
        if not finite and timer is None:
            raise ValueError("scheduler=poly needs the run's length: trainer.max_epochs (or max_steps), or "
                             "trainer.max_time with scheduler.follow_max_time=true")
        if finite and int(total_steps) <= warmup_steps:
            raise ValueError(f"scheduler=poly: total_steps ({int(total_steps)}) must exceed warmup_steps ({warmup_steps})")
        if warmup_steps < 0 or power <= 0 or min_lr < 0:
            raise ValueError(f"scheduler=poly: warmup_steps >= 0, power > 0 and min_lr >= 0 needed, got "
                             f"{warmup_steps}, {power}, {min_lr}")
        self.total_steps = int(total_steps) if finite else None
        self.warmup_steps = int(warmup_steps)
        self.power = float(power)
        self.min_lr = float(min_lr)
        self.timer = timer
        super().__init__(optimizer, last_epoch)

    def progress(self) -> float:
        """The share of the decay done, 0..1 (by steps, or by time when that is further)."""
        step = self.last_epoch
        by_steps = 0.0
        if self.total_steps is not None:
            by_steps = (step - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        by_time = 0.0
        if self.timer is not None:
            elapsed, remaining = self.timer.time_elapsed("train"), self.timer.time_remaining("train")
            if remaining is not None and elapsed + remaining > 0:
                by_time = elapsed / (elapsed + remaining)
        return min(max(by_steps, by_time, 0.0), 1.0)

    def get_lr(self) -> list[float]:
        step = self.last_epoch
        if step < self.warmup_steps:
            return [base * (step + 1) / self.warmup_steps for base in self.base_lrs]
        factor = (1.0 - self.progress()) ** self.power
        return [self.min_lr + (base - self.min_lr) * factor for base in self.base_lrs]

    def state_dict(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if key not in ("optimizer", "timer")}
