import json
import math
import re
import shutil
from types import SimpleNamespace

import pytest
import torch

from segkit.module import SegmentationModule
from segkit.runtime import resolve_precision
from tests.helpers import TINY_DATA, TINY_TRAIN, run_segkit


def segkit(command, *args, cwd):
    return run_segkit(command, *args, cwd=cwd)


def segkit_train(*args, cwd):
    return segkit("segkit-train", *args, cwd=cwd)


@pytest.fixture(scope="module")
def fast_dev_run(trained_run):
    """``segkit-train trainer.fast_dev_run=2`` on the synthetic data (conftest's run) and its stdout."""
    return trained_run, SimpleNamespace(stdout=(trained_run.parent / "stdout.txt").read_text(),
                                        stderr=(trained_run.parent / "stderr.txt").read_text())


def test_fast_dev_run_writes_the_run_directory(fast_dev_run):
    run_dir, result = fast_dev_run
    for path in ["config.yaml", "checkpoints/best.ckpt", "checkpoints/last.ckpt", "csv/metrics.csv", "metrics.json"]:
        assert (run_dir / path).is_file(), path
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("val/dice", "val/iou", "val/loss", "val/dice/ship"):
        assert key in metrics["best"] and key in metrics["final"]
    assert metrics["monitor"] == "val/dice"
    assert metrics["best_checkpoint"] == str(run_dir / "checkpoints" / "best.ckpt")
    assert metrics["precision"] == resolve_precision("auto", "auto")
    assert metrics["model_parameters"] == 6_628_945
    assert "val/dice" in result.stdout and f"best checkpoint: {run_dir}/checkpoints/best.ckpt" in result.stdout


def test_one_line_per_epoch_in_the_log_and_no_progress_bar_when_piped(fast_dev_run):
    """Run with its output piped (as under SLURM or nohup): each epoch is one line, in
    train.log and on the console, and no progress bar redraws (carriage returns) are written."""
    run_dir, result = fast_dev_run
    pattern = (r"\[segkit.train\]\[INFO\] - epoch 1/1 \| train/loss [\d.]+ \| val/bce [\d.]+ \| val/dice [\d.]+ \| "
               r"val/iou [\d.]+ \| val/loss [\d.]+ \| best val/dice [\d.]+ \(this epoch\) \| [\d.]+ s$")
    assert re.search(pattern, (run_dir / "train.log").read_text(), re.M), (run_dir / "train.log").read_text()
    assert re.search(pattern, result.stdout + result.stderr, re.M)
    assert "\r" not in result.stdout + result.stderr


def test_on_a_terminal_the_epoch_line_goes_to_the_log_file_only(tmp_path, monkeypatch):
    import logging

    import segkit.callbacks
    from segkit.callbacks import EpochLog

    trainer = type("T", (), {"sanity_checking": False, "is_global_zero": True, "current_epoch": 2, "max_epochs": 10,
                             "callback_metrics": {"train/loss_epoch": torch.tensor(0.5), "val/dice": torch.tensor(0.25),
                                                  "val/dice/ship": torch.tensor(0.2)}})()
    root = logging.getLogger()
    file_handler = logging.FileHandler(tmp_path / "train.log")
    console = []
    stream = logging.StreamHandler()
    stream.emit = lambda record: console.append(record.getMessage())
    root.addHandler(file_handler)
    root.addHandler(stream)
    level, root.level = root.level, logging.INFO  # as Hydra's logging sets it
    # another library's logging set-up silencing segkit's loggers does not silence the line
    monkeypatch.setattr(segkit.callbacks.log, "disabled", True)
    try:
        for terminal in (True, False):
            monkeypatch.setattr(segkit.callbacks, "console_is_terminal", lambda terminal=terminal: terminal)
            callback = EpochLog("val/dice/ship", "max")
            callback.on_train_epoch_start(trainer, None)
            callback.on_train_epoch_end(trainer, None)
    finally:
        root.setLevel(level)
        root.removeHandler(file_handler)
        root.removeHandler(stream)
        file_handler.close()
    written = (tmp_path / "train.log").read_text().splitlines()
    assert len(written) == 2 and len(console) == 1  # the terminal's line: the file only
    assert re.fullmatch(r"epoch 3/10 \| train/loss 0.5000 \| val/dice 0.2500 \| val/dice/ship 0.2000 \| best "
                        r"val/dice/ship 0.2000 \(this epoch\) \| [\d.]+ s \| ETA \d+:\d\d", console[0])
    assert written == [console[0]] * 2


def test_saved_config_is_resolved_and_reusable(fast_dev_run):
    run_dir, _ = fast_dev_run
    text = (run_dir / "config.yaml").read_text()
    assert "${" not in text  # every interpolation resolved
    assert f"run_dir: {run_dir}" in text
    assert "precision: " + resolve_precision("auto", "auto") in text


def test_checkpoint_alone_rebuilds_the_model(fast_dev_run):
    run_dir, _ = fast_dev_run
    module = SegmentationModule.load_from_checkpoint(run_dir / "checkpoints" / "best.ckpt", map_location="cpu")
    assert module.hparams.model["name"] == "mobilenet_unet" and module.hparams.num_classes == 1
    checkpoint = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["datamodule_hyper_parameters"]["image_size"] == 64
    module.eval()
    with torch.no_grad():
        assert module(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 64, 64)


def test_an_existing_run_is_not_overwritten(fast_dev_run, tmp_path):
    run_dir, _ = fast_dev_run
    before = (run_dir / "checkpoints" / "best.ckpt").read_bytes()
    result = segkit_train("trainer.fast_dev_run=1", f"hydra.run.dir={run_dir}", *TINY_TRAIN, cwd=tmp_path)
    assert result.returncode != 0
    assert "already holds checkpoints" in result.stderr
    assert (run_dir / "checkpoints" / "best.ckpt").read_bytes() == before


def test_missing_root_is_a_clear_cli_error(tmp_path):
    """A known problem is one line (plus where the traceback is), never a Hydra traceback."""
    result = segkit_train("dataset=airbus", "trainer.fast_dev_run=1", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path)
    assert result.returncode == 1
    assert "segkit-train: error: data.root is not set" in result.stderr and "train_ship_segmentations_v2.csv" in result.stderr
    assert "Traceback" not in result.stderr and "for a complete stack trace" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 3, result.stderr


def test_airbus_format_dataset_trains_from_the_cli(tmp_path):
    from tests.fixtures.airbus import write_airbus

    fixture = write_airbus(tmp_path / "airbus")
    run_dir = tmp_path / "run"
    result = segkit_train(
        "dataset=airbus", f"data.root={fixture.root}", "data.image_size=64", "data.num_workers=0",
        "model=segnet", "model.base_width=4", "data.image_size=128", "trainer.precision=32-true",
        "trainer.fast_dev_run=1", f"hydra.run.dir={run_dir}", cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["precision"] == "32-true"
    shutil.rmtree(run_dir)


def test_every_loss_trains_the_demo_model(tmp_path):
    from segkit.losses import LOSSES

    # weighted_ce defaults to weights: auto, read from what segkit-prepare writes
    prepared = segkit("segkit-prepare", *TINY_DATA, f"hydra.run.dir={tmp_path / 'prep'}", cwd=tmp_path)
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    assert "class_stats.json" in prepared.stdout and "ship" in prepared.stdout
    sweep = tmp_path / "sweep"
    names = sorted(LOSSES)
    result = segkit_train(
        "-m", f"loss={','.join(names)}", "trainer.fast_dev_run=1", f"hydra.sweep.dir={sweep}", *TINY_TRAIN, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for job, name in enumerate(names):
        metrics = json.loads((sweep / str(job) / "metrics.json").read_text())
        assert math.isfinite(metrics["final"]["val/loss"]), name
        assert "val/bce" in metrics["final"]
        checkpoint = torch.load(sweep / str(job) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
        loss = checkpoint["hyper_parameters"]["loss"]
        assert loss["name"] == name
        if name == "weighted_ce":  # the checkpoint records the numbers, not 'auto'
            assert isinstance(loss["weights"], list) and len(loss["weights"]) == 2 and loss["weights"][1] > loss["weights"][0]


@pytest.mark.parametrize("dataset", ["carvana", "oilseep", "buildings", "dota"])
def test_each_dataset_trains_from_the_cli_on_its_fixture(tmp_path, dataset):
    from tests.fixtures.buildings import write_buildings
    from tests.fixtures.carvana import write_carvana
    from tests.fixtures.dota import write_dota
    from tests.fixtures.oilseep import write_oilseep

    root = tmp_path / dataset
    writers = {"carvana": write_carvana, "oilseep": write_oilseep, "buildings": write_buildings, "dota": write_dota}
    writers[dataset](root)
    extra = {
        "carvana": ["data.image_size=[64,64]"],
        "oilseep": [],
        "buildings": [],
        "dota": ["data.patch_size=64", "data.overlap=16"],
    }[dataset]
    run_dir = tmp_path / "run"
    result = segkit_train(
        f"dataset={dataset}", f"data.root={root}", "data.num_workers=0", "data.batch_size=2",
        "trainer.fast_dev_run=1", f"hydra.run.dir={run_dir}", *extra, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert math.isfinite(metrics["final"]["val/loss"])
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()


def test_prepare_check_lists_all_problems_and_prepare_is_idempotent(tmp_path):
    import numpy as np
    import tifffile

    from tests.fixtures.oilseep import write_oilseep

    root = tmp_path / "oil"
    write_oilseep(root)
    args = ["dataset=oilseep", f"data.root={root}", f"data.cache_dir={tmp_path / 'work'}", f"hydra.run.dir={tmp_path / 'p'}"]
    first = segkit("segkit-prepare", *args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    # 10 tiles of 3 scenes (4, 3, 3 tiles); validation holds out one whole scene of 3 tiles
    assert "image statistics of 7 training images written" in first.stdout and "class statistics of 7" in first.stdout
    second = segkit("segkit-prepare", *args, cwd=tmp_path)
    assert "image statistics" in second.stdout and "are up to date" in second.stdout and "nothing to do" in second.stdout
    masks = sorted((root / "train_masks_256").glob("*.tif"))
    tifffile.imwrite(masks[0], np.full((32, 32), 12, np.uint8))
    masks[1].unlink()
    checked = segkit("segkit-prepare", *args, "check=true", cwd=tmp_path)
    assert checked.returncode == 1
    assert "2 problem(s) found" in checked.stdout
    assert f"{masks[0]}: mask values [12]" in checked.stdout and "image has no mask" in checked.stdout


@pytest.mark.parametrize("app", ["train", "predict", "evaluate", "export", "prepare", "plan"])
def test_help_answers_without_importing_torch_or_the_models(app):
    """--help is read before anything heavy: torch, Lightning, smp and OpenCV (6 s to import
    here) are imported by the work, not by the console app's start (0.7-0.8 s for --help)."""
    import subprocess
    import sys

    script = (f"import sys\nfrom segkit import cli\nsys.argv = ['segkit-{app}', '--help']\n"
              f"try:\n    cli.{app}()\nexcept SystemExit:\n    pass\n"
              "print('HEAVY', sorted(m for m in ('torch', 'lightning', 'segmentation_models_pytorch', 'albumentations', "
              "'cv2') if m in sys.modules), file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "HEAVY []" in result.stderr, result.stderr[-2000:]
    assert "is powered by Hydra." in result.stdout and "== Configuration groups ==" in result.stdout
