"""segkit.schedulers.PolyLR (scheduler=poly): warm-up, polynomial decay, the time budget."""

from types import SimpleNamespace

import pytest
import torch

from segkit.module import SegmentationModule
from segkit.schedulers import PolyLR


def optimizer(lr=0.1):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def lrs(scheduler, steps):
    out = []
    for _ in range(steps):
        out.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def test_linear_warm_up_then_polynomial_decay_to_min_lr():
    scheduler = PolyLR(optimizer(0.1), total_steps=10, warmup_steps=3, power=0.9, min_lr=0.001)
    expected = [0.1 * 1 / 3, 0.1 * 2 / 3, 0.1 * 3 / 3]
    expected += [0.001 + (0.1 - 0.001) * (1 - min((t - 3) / 7, 1.0)) ** 0.9 for t in range(3, 12)]
    assert expected[3] == 0.1  # the first step after the warm-up: progress 0
    assert lrs(scheduler, 12) == pytest.approx(expected, rel=1e-12)
    assert lrs(scheduler, 2) == pytest.approx([0.001, 0.001])  # past the end: stays at min_lr


class FakeTimer:
    def __init__(self, elapsed, remaining):
        self.elapsed, self.remaining = elapsed, remaining

    def time_elapsed(self, stage="train"):
        return self.elapsed

    def time_remaining(self, stage="train"):
        return self.remaining


def test_the_time_budget_ends_the_schedule_when_it_is_further_than_the_steps():
    timer = FakeTimer(elapsed=0.0, remaining=100.0)
    scheduler = PolyLR(optimizer(0.1), total_steps=1000, power=1.0, timer=timer)
    timer.elapsed, timer.remaining = 75.0, 25.0  # 3/4 of the budget spent after 1 step of 1000
    scheduler.optimizer.step()
    scheduler.step()
    assert scheduler.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.25)
    timer.elapsed, timer.remaining = 100.0, 0.0
    scheduler.step()
    assert scheduler.optimizer.param_groups[0]["lr"] == 0.0
    only_time = PolyLR(optimizer(0.1), total_steps=float("inf"), power=1.0, timer=FakeTimer(50.0, 50.0))
    assert only_time.optimizer.param_groups[0]["lr"] == pytest.approx(0.05)


def test_resume_restores_the_step_but_not_the_timer():
    first = PolyLR(optimizer(0.1), total_steps=20, warmup_steps=2)
    lrs(first, 7)
    state = first.state_dict()
    assert "timer" not in state and "optimizer" not in state
    second = PolyLR(optimizer(0.1), total_steps=20, warmup_steps=2, timer=FakeTimer(0.0, 10.0))
    second.load_state_dict(state)
    second.optimizer.load_state_dict(first.optimizer.state_dict())  # as Lightning restores both
    assert second.last_epoch == first.last_epoch and second.timer is not None
    assert lrs(second, 3) == pytest.approx(lrs(first, 3), rel=1e-12)


@pytest.mark.parametrize("kwargs, message", [
    ({"total_steps": None}, "scheduler=poly needs the run's length"),
    ({"total_steps": float("inf")}, "scheduler=poly needs the run's length"),
    ({"total_steps": 5, "warmup_steps": 5}, r"total_steps \(5\) must exceed warmup_steps \(5\)"),
    ({"total_steps": 5, "power": 0}, "power > 0"),
])
def test_settings_that_give_no_schedule_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PolyLR(optimizer(), **kwargs)


def test_the_module_fills_in_the_steps_and_the_timer_from_the_trainer():
    from lightning.pytorch.callbacks import Timer

    module = SegmentationModule(
        model={"name": "mobilenet_unet"}, loss={"name": "bce_dice"}, optimizer={"_target_": "torch.optim.SGD", "lr": 0.1},
        scheduler={"scheduler": {"_target_": "segkit.schedulers.PolyLR", "total_steps": "auto", "warmup_steps": 0,
                                 "power": 0.9, "min_lr": 0.0, "follow_max_time": True}, "interval": "step"})
    timer = Timer(duration={"seconds": 60})
    module._trainer = SimpleNamespace(estimated_stepping_batches=120, callbacks=[timer])
    config = module.configure_optimizers()
    scheduler = config["lr_scheduler"]["scheduler"]
    assert isinstance(scheduler, PolyLR) and scheduler.total_steps == 120 and scheduler.timer is timer
    assert config["lr_scheduler"]["interval"] == "step"
    assert module.hparams.scheduler["scheduler"]["total_steps"] == "auto"  # the config keeps what was asked
