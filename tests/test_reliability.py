"""Numerical faults, samplers split between DDP ranks, and the pieces multi-process training needs."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import segkit.module
from segkit.data.sampling import BackgroundRatioSampler, EpochShuffleSampler, ShardSampler
from segkit.module import NonFiniteLossError, SegmentationModule
from segkit.train import run_training
from tests.helpers import TINY_TRAIN, compose_config

TINY = [*TINY_TRAIN, "data.num_workers=0", "data.val_fraction=0.25", "data.background_ratio=1.0", "trainer.precision=32-true", "logger=csv"]


def nan_at(monkeypatch, training_calls: set[int]) -> None:
    """Make the training loss NaN at the given training steps (counting calls with gradients on)."""
    real = segkit.module.build_loss
    calls = Counter()

    class NanAt(torch.nn.Module):
        def __init__(self, loss):
            super().__init__()
            self.loss = loss

        def forward(self, logits, target):
            value = self.loss(logits, target)
            if torch.is_grad_enabled():
                step = calls["train"]
                calls["train"] += 1
                if step in training_calls:
                    return value * float("nan")
            return value

    def build(name, **kwargs):
        loss = real(name, **kwargs)
        return NanAt(loss) if name == "bce_dice" else loss

    monkeypatch.setattr(segkit.module, "build_loss", build)


def weights_finite(path) -> bool:
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_a_nan_loss_stops_training_naming_step_batch_and_images_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    nan_at(monkeypatch, {7})  # 3 batches per epoch: step 7 is epoch 2, batch 1
    cfg = compose_config("train", [*TINY, "trainer.max_epochs=4", f"paths.run_dir={tmp_path / 'run'}"])
    with pytest.raises(NonFiniteLossError) as caught:
        run_training(cfg)
    message = str(caught.value)
    assert "non-finite training loss (nan) at global step 7 (epoch 2, batch 1 of the epoch); images: " in message
    assert ".jpg" in message.split("images: ")[1]  # the batch's image names
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert f"the last good checkpoint is {last}" in message and "optimizer.lr" in message
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 1 and checkpoint["global_step"] == 6  # from the end of epoch 1, untouched
    assert weights_finite(last)


def test_skip_mode_skips_the_bad_batches_and_trains_on(tmp_path, monkeypatch):
    nan_at(monkeypatch, {4, 5})
    cfg = compose_config("train", [*TINY, "trainer.max_epochs=3", "module.nonfinite_loss=skip", f"paths.run_dir={tmp_path / 'run'}"])
    summary = run_training(cfg)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    # AdamW counts the updates it made (Lightning's global_step counts batches either way)
    updates = {int(state["step"]) for state in checkpoint["optimizer_states"][0]["state"].values()}
    assert updates == {9 - 2}  # two of the nine updates skipped
    assert weights_finite(last) and summary["epochs_run"] == 3


def test_skip_mode_gives_up_after_too_many_in_a_row(tmp_path, monkeypatch):
    nan_at(monkeypatch, set(range(3, 100)))
    cfg = compose_config("train", [*TINY, "trainer.max_epochs=4", "module.nonfinite_loss=skip", "module.max_consecutive_skips=2",
                                   f"paths.run_dir={tmp_path / 'run'}"])
    with pytest.raises(NonFiniteLossError, match=r"at global step 5 \(epoch 1, batch 2 of the epoch\).* — 2 batches in a row skipped.*max_consecutive_skips"):
        run_training(cfg)


def test_skip_mode_is_refused_under_ddp():
    module = SegmentationModule(model={"name": "mobilenet_unet", "encoder_depth": 3, "decoder_channels": [16, 8, 4]},
                                loss={"name": "dice"}, optimizer={"_target_": "torch.optim.SGD", "lr": 0.1}, nonfinite_loss="skip")
    module._trainer = SimpleNamespace(world_size=2)
    with pytest.raises(ValueError, match="nonfinite_loss=skip needs a single process"):
        module.on_fit_start()
    with pytest.raises(ValueError, match="must be 'stop' or 'skip'"):
        SegmentationModule(model={"name": "mobilenet_unet"}, loss={"name": "dice"}, optimizer={"_target_": "torch.optim.SGD", "lr": 0.1},
                           nonfinite_loss="ignore")


# ------------------------------------------------------------ samplers under DDP
@pytest.mark.parametrize("world_size", [2, 3])
def test_background_sampler_split_between_ranks_is_the_single_process_epoch(world_size):
    positives, negatives = np.arange(0, 7), np.arange(7, 40)
    single = BackgroundRatioSampler(positives, negatives, ratio=0.25, seed=5)
    ranks = [BackgroundRatioSampler(positives, negatives, ratio=0.25, seed=5) for _ in range(world_size)]
    for rank, sampler in enumerate(ranks):
        sampler.shard(rank, world_size)
    drawn_backgrounds = []
    for epoch in range(3):
        for sampler in (single, *ranks):
            sampler.set_epoch(epoch)
        whole = list(single)
        shares = [list(sampler) for sampler in ranks]
        assert len({len(share) for share in shares}) == 1  # every rank runs the same number of steps
        assert all(len(share) == len(ranks[0]) for share in shares)
        merged = [pair for step in zip(*shares) for pair in step]  # rank r holds positions r, r + W, ...
        assert merged[: len(whole)] == whole  # same images, same augmentation seeds, same order
        assert merged[len(whole):] == whole[: len(merged) - len(whole)]  # padding wraps round
        drawn_backgrounds.append(frozenset(i for i, _ in whole if i >= 7))
    assert len(set(drawn_backgrounds)) == 3  # a fresh background draw each epoch, on every rank alike


def test_resumed_epoch_draws_the_same_share():
    a, b = EpochShuffleSampler(10, seed=1), EpochShuffleSampler(10, seed=1)
    a.shard(1, 2)
    b.shard(1, 2)
    for _ in range(3):
        list(a)  # three epochs, counting by itself
    b.set_epoch(3)  # what Lightning does on resume
    assert list(a) == list(b)


def test_validation_shards_cover_each_image_once():
    shards = [list(ShardSampler(11, rank, 3)) for rank in range(3)]
    assert sorted(i for shard in shards for i in shard) == list(range(11))
    assert [len(s) for s in shards] == [4, 4, 3]
    with pytest.raises(ValueError, match="rank 2 is not in 0..1"):
        ShardSampler(5, 2, 2)


def test_the_datamodule_hands_each_rank_its_share(tmp_path):
    from datamodules.synthetic import SyntheticDataModule

    dm = SyntheticDataModule(num_images=16, size=32, image_size=32, num_workers=0, batch_size=2, val_fraction=0.25,
                             background_ratio=1.0, cache_dir=str(tmp_path / "c"))
    dm.prepare_data()
    dm.setup()
    dm.trainer = SimpleNamespace(global_rank=1, world_size=2)
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert train.sampler.rank == 1 and train.sampler.world_size == 2 and len(train.sampler) == 6
    assert list(val.sampler) == list(range(1, len(dm.val_dataset), 2))
    dm.trainer = SimpleNamespace(global_rank=0, world_size=len(dm.val_dataset) + 1)  # a process would get no image
    with pytest.raises(ValueError, match="synthetic: the validation split has 4 image\\(s\\), fewer than the 5 processes "
                                         "of this DDP run, .* Validate on at least 5 images"):
        dm.val_dataloader()
    dm.trainer = SimpleNamespace(global_rank=3, world_size=len(dm.val_dataset))  # one image each is enough
    assert list(dm.val_dataloader().sampler) == [3]


class Payload:
    """Pickled code: creates ``path`` when unpickled by an ordinary ``torch.load``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (Path(self.path).touch, ())


def test_resume_refuses_a_tampered_checkpoint_before_running_any_of_it(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    last = run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    marker = tmp_path / "code-ran"
    checkpoint["callbacks"] = {"evil": Payload(marker)}
    torch.save(checkpoint, last)
    cfg = compose_config("train", [f"resume={run}", f"paths.run_dir={tmp_path / 'log'}"])
    with pytest.raises(ValueError, match=rf"{last}: refused: the checkpoint holds objects other than tensors and plain data"):
        run_training(cfg)
    assert not marker.exists()


def test_a_nan_on_the_last_batch_of_an_epoch_stops_before_that_epochs_checkpoint(tmp_path, monkeypatch):
    """The stop-mode check is read one step late; at an epoch's end the validation and the
    checkpoint come first, and they read it, so no checkpoint holds the weights it touched."""
    nan_at(monkeypatch, {8})  # 3 batches per epoch: step 8 is epoch 2's last batch
    cfg = compose_config("train", [*TINY, "trainer.max_epochs=4", f"paths.run_dir={tmp_path / 'run'}"])
    with pytest.raises(NonFiniteLossError, match=r"at global step 8 \(epoch 2, batch 2 of the epoch\); images: .*"
                                                 r"before any checkpoint held the weights that step changed"):
        run_training(cfg)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 1 and checkpoint["global_step"] == 6 and weights_finite(last)


SYNC_CALLS = ("__bool__", "__int__", "__float__", "__index__", "item", "tolist", "nonzero", "numpy")


@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_the_nonfinite_check_waits_for_no_device_inside_a_training_step(tmp_path, monkeypatch, mode):
    """In the default stop mode a training step reads nothing back from the device (each read a
    host sync on CUDA, the GPU idle until the host queues the backward pass); the verdict is
    read at the next step, one value, computed a whole step earlier. Skip mode must decide
    before backward, so it reads once per step. Counted on the CPU with tensor-read counters."""
    counting, syncs, settled = [False], [], []
    import segkit.loss_functional

    # the losses' label check runs on CPU tensors only (on CUDA the loaders have checked the masks)
    monkeypatch.setattr(segkit.loss_functional, "check_classes_off_device", lambda *a: None)
    for name in SYNC_CALLS:
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _o=original, _n=name, **k:
                            (syncs.append(_n) if counting[0] else None) or _o(self, *a, **k))
    step, settle = SegmentationModule.training_step, SegmentationModule._settle_nonfinite_check

    def counted_step(self, *args, **kwargs):
        counting[0] = True
        try:
            return step(self, *args, **kwargs)
        finally:
            counting[0] = False

    def counted_settle(self):
        was, counting[0] = counting[0], False
        settled.append(self._pending_check is not None)
        try:
            return settle(self)
        finally:
            counting[0] = was

    monkeypatch.setattr(SegmentationModule, "training_step", counted_step)
    monkeypatch.setattr(SegmentationModule, "_settle_nonfinite_check", counted_settle)
    cfg = compose_config("train", [*TINY, "trainer.max_epochs=1", f"module.nonfinite_loss={mode}",
                                   f"paths.run_dir={tmp_path / 'run'}"])
    run_training(cfg)
    steps = 3
    if mode == "stop":
        assert syncs == []
        assert settled.count(True) == steps  # each step's verdict read once: two by later steps, one before validation
    else:
        assert syncs == ["__bool__"] * steps and not any(settled)
