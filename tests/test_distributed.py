"""DDP on CPU (gloo): two processes through the real CLI; metrics equal one process, only rank 0 writes."""

from __future__ import annotations

import json
import re

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from segkit.checkpoint import load_checkpoint
from tests.helpers import run_segkit

# 16 synthetic images: 13 train, 3 validation (odd, so a sampler that pads ranks with a
# repeated image would change the metrics), 32-bit so both runs compute the same numbers
DDP_RUN = ["data.num_images=16", "data.size=64", "data.image_size=64", "data.batch_size=2", "data.num_workers=0",
           "data.val_fraction=0.2", "data.background_ratio=0.5", "trainer.precision=32-true", "trainer.max_epochs=2",
           "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"]


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(tmp_path):
    run_dir = tmp_path / "ddp"
    result = run_segkit("segkit-train", *DDP_RUN, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]

    # only rank 0 wrote files: one log, one set of logger files, no per-rank copies
    assert sorted(p.name for p in run_dir.glob("*.log")) == ["train.log"]
    assert len(list(run_dir.glob("tensorboard/events.*"))) == 1
    assert (run_dir / "csv" / "metrics.csv").is_file() and (run_dir / "metrics.json").is_file()
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["epochs_run"] == 2

    # the same weights validated by one process: metrics gathered from both ranks are equal
    loaded = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    datamodule = instantiate(loaded.data)
    datamodule.prepare_data()
    datamodule.setup()
    assert len(datamodule.val_dataset) == 3
    trainer = L.Trainer(accelerator="cpu", devices=1, precision="32-true", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, use_distributed_sampler=False)
    single = trainer.validate(loaded.module, datamodule=datamodule, verbose=False)[0]
    final = summary["final"]
    for key in ("val/dice", "val/iou", "val/dice/ship", "val/iou/background"):
        assert final[key] == pytest.approx(single[key], abs=1e-6), key
    # per-pixel BCE averages the same over any batching (the Dice part of val/loss is per batch)
    assert final["val/bce"] == pytest.approx(single["val/bce"], rel=1e-5)


@pytest.mark.slow
def test_ddp_staged_recipe_with_a_classification_head(tmp_path):
    """airbus_staged's shape on two gloo processes: a classification stage (the decoder gets no
    gradient) then a segmentation stage (the image-level head's output is unused). Each stage
    freezes what its loss does not reach, so DDP's reducer never waits for a missing gradient."""
    stages = ("recipe={stages: [{name: classify, task: classification, epochs: 1, background_ratio: 0.7},"
              "{name: segment, epochs: 1, background_ratio: 0.3, lr_find: {num_training: 14}}]}")
    run_dir = tmp_path / "staged"
    result = run_segkit("segkit-train", *DDP_RUN, "model.classification_head=true", stages, "trainer.max_epochs=1",
                        "logger=csv", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    # the LR finder ran on both ranks with rank 0's curve: one suggestion, one plot (rank 0's)
    suggested = re.findall(r"LR finder suggests lr=(\S+) \(plot", result.stdout + result.stderr)
    assert len(suggested) == 2 and len(set(suggested)) == 1, suggested
    assert (run_dir / "stages" / "01_segment" / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = (run_dir / "stages.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[1].split(",")[2] == "classification" and rows[2].split(",")[2] == "segmentation"
    first = load_checkpoint(run_dir / "stages" / "00_classify" / "checkpoints" / "last.ckpt").module.net.net
    second = load_checkpoint(run_dir / "stages" / "01_segment" / "checkpoints" / "last.ckpt").module.net.net
    # the classification stage trained the encoder and its head; the segmentation stage left that head as it was
    for key, value in first.classification_head.state_dict().items():
        assert torch.equal(value, second.classification_head.state_dict()[key]), key
    assert any(not torch.equal(a, b) for a, b in zip(first.encoder.state_dict().values(), second.encoder.state_dict().values()))


def _pending_check_on_rank(rank: int, init_file: str, verdicts) -> None:
    import torch.distributed as dist

    from segkit.module import _PendingCheck

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        readings = []
        for step, nan_rank in enumerate([None, 0, 1, None]):
            loss = torch.tensor(float("nan") if rank == nan_rank else 0.5)
            readings.append(_PendingCheck(loss, {"name": [f"r{rank}s{step}.png"]}, step, step, 0, world_size=2).bad())
        verdicts[rank] = readings
    finally:
        dist.destroy_process_group()


def test_the_ranks_read_one_nonfinite_verdict_at_the_same_step(tmp_path):
    """Stop mode under DDP: the flag is summed over the ranks (an asynchronous all-reduce), so
    when one rank's loss is NaN every rank reads "bad" for that step and all stop together,
    none left waiting in a collective."""
    import torch.multiprocessing as mp

    verdicts = mp.Manager().dict()
    mp.spawn(_pending_check_on_rank, args=(str(tmp_path / "pg"), verdicts), nprocs=2, join=True)
    assert dict(verdicts) == {0: [False, True, True, False], 1: [False, True, True, False]}
