"""logger=mlflow / wandb / many: compose, write locally, refuse an unreachable tracker at once."""

import json
import socket

import pytest

from tests.helpers import compose_config

TINY = ["dataset=synthetic", "data.num_images=12", "data.size=64", "data.image_size=64", "data.batch_size=4",
        "trainer.max_epochs=2"]


@pytest.fixture
def no_network(monkeypatch):
    """Connections to other hosts fail at once, as on a machine without the internet."""
    attempts = []

    def refuse(address, *args, **kwargs):
        attempts.append(address)
        raise OSError(101, "Network is unreachable (test guard)")

    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


@pytest.mark.parametrize("choice, keys", [("mlflow", ["mlflow"]), ("wandb", ["wandb"]),
                                          ("many", ["csv", "tensorboard", "mlflow", "wandb"])])
def test_logger_configs_compose_offline_by_default(choice, keys, tmp_path):
    cfg = compose_config("train", [f"logger={choice}", f"paths.run_dir={tmp_path}"])
    assert list(cfg.logger) == keys
    if "mlflow" in keys:
        assert cfg.logger.mlflow.tracking_uri.startswith("file:")
    if "wandb" in keys:
        assert cfg.logger.wandb.offline is True and cfg.logger.wandb.save_dir == str(tmp_path)


def test_logger_many_writes_every_tracker_locally(tmp_path, monkeypatch):
    from segkit.train import run_training

    monkeypatch.chdir(tmp_path)  # the default MLflow store, outputs/mlruns, is relative to the working directory
    summary = run_training(compose_config("train", [
        *TINY, "logger=many", f"data.cache_dir={tmp_path / 'work'}", f"paths.run_dir={tmp_path / 'run'}"]))
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    # the closing summary says where each tracker put the run
    from segkit.train import format_summary

    text = format_summary(summary)
    assert f"mlflow:          run {summary['trackers'][0][1].split()[1]} of experiment segkit in file://{tmp_path}/outputs/mlruns" in text
    assert f"wandb:           {tmp_path}/run/wandb (offline: upload with `wandb sync {tmp_path}/run/wandb/offline-run-*`)" in text
    assert [line.split() for line in text.splitlines() if line.startswith("epoch ")] == [["epoch", "1", "2"]]
    assert text.splitlines()[0].split() == ["metric", "at", "best", "final"]  # metrics at the best epoch, counted from 1
    # MLflow: one run named after the run dir, every epoch's metrics; per-class names one level deep
    runs = [p.parent for p in (tmp_path / "outputs" / "mlruns").glob("*/*/meta.yaml")]
    assert len(runs) == 1
    assert (runs[0] / "tags" / "mlflow.runName").read_text() == "run"
    rows = (runs[0] / "metrics" / "val" / "dice").read_text().split("\n")
    assert [float(r.split()[1]) for r in rows if r] == pytest.approx([e["val/dice"] for e in history])
    last = (runs[0] / "metrics" / "val" / "dice_ship").read_text().strip().split("\n")[-1]
    assert float(last.split()[1]) == pytest.approx(summary["final"]["val/dice/ship"])
    # W&B: an offline run in the run dir, to upload with `wandb sync`, holding the metrics
    (offline,) = (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")
    assert b"val/dice" in offline.read_bytes()
    import wandb

    assert wandb.run is None  # finished with the fit: the next run (a sweep's next job) starts its own
    # CSV and TensorBoard as with logger=default, TensorBoard with the validation images of the
    # first and the last epoch (callbacks.validation_images.every_n_epochs=5)
    assert (tmp_path / "run" / "csv" / "metrics.csv").is_file()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert [(e.step, e.width, e.height) for e in events.Images("val/images")] == [(0, 3 * 64, 3 * 66), (1, 3 * 64, 3 * 66)]


def test_unreachable_trackers_are_refused_within_seconds(no_network, tmp_path):
    from segkit.loggers import MLFlowLogger, WandbLogger

    with pytest.raises(ValueError, match=r"logger.mlflow.tracking_uri=http://mlflow.example:5000: mlflow.example:5000 "
                                         r"cannot be reached .*Start the server, or log locally: "
                                         r"logger.mlflow.tracking_uri=file:outputs/mlruns"):
        MLFlowLogger(tracking_uri="http://mlflow.example:5000")
    with pytest.raises(ValueError, match=r"logger=wandb online: api.wandb.ai:443 cannot be reached .*"
                                         r"logger.wandb.offline=true.*wandb sync"):
        WandbLogger(save_dir=str(tmp_path), offline=False)
    assert no_network == [("mlflow.example", 5000), ("api.wandb.ai", 443)]


def test_wandb_online_without_a_login_is_refused_not_prompted(monkeypatch, tmp_path):
    from segkit import loggers

    monkeypatch.setattr(loggers, "_reachable", lambda url: None)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: never logged in
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    with pytest.raises(ValueError, match=r"no W&B login is stored \(run `wandb login` once, or set WANDB_API_KEY\)"):
        loggers.WandbLogger(save_dir=str(tmp_path), offline=False)


def test_a_missing_tracker_package_names_the_extra(monkeypatch):
    import importlib.util

    from segkit import loggers

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ImportError, match=r"logger=mlflow needs the mlflow package, which is not installed: "
                                          r"pip install 'segkit\[loggers\]'"):
        loggers.MLFlowLogger()


def test_an_unwritable_mlflow_store_is_named(tmp_path):
    from segkit.loggers import MLFlowLogger

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ValueError, match=rf"cannot create {blocker}/mlruns .*point it at a folder you can write"):
        MLFlowLogger(tracking_uri=f"file:{blocker}/mlruns")
    with pytest.raises(ValueError, match=rf"{blocker} is a file, not a folder"):
        MLFlowLogger(tracking_uri=f"file:{blocker}")


def test_a_web_server_that_is_not_mlflow_is_named_in_one_line(tmp_path):
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        from segkit.loggers import MLFlowLogger

        uri = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(ValueError, match=rf"logger.mlflow.tracking_uri={uri}: MLflow cannot use it \(.*\). Is it an "
                                             r"MLflow tracking server\? Or log locally"):
            MLFlowLogger(tracking_uri=uri)
    finally:
        server.shutdown()


def test_two_runs_creating_the_mlflow_experiment_at_once_both_start(tmp_path, monkeypatch):
    """The second run's create_experiment loses the race: it uses the experiment the first made."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from segkit.loggers import MLFlowLogger

    uri = f"file:{tmp_path / 'mlruns'}"
    real_create = MlflowClient.create_experiment

    def racing_create(self, name, *args, **kwargs):  # another run creates it between our check and our create
        real_create(self, name, *args, **kwargs)
        raise MlflowException(f"Experiment '{name}' already exists.")

    monkeypatch.setattr(MlflowClient, "create_experiment", racing_create)
    logger = MLFlowLogger(tracking_uri=uri, run_dir=str(tmp_path / "run"))
    monkeypatch.undo()
    logger.log_metrics({"val/dice": 0.5}, step=0)
    assert logger.experiment.get_experiment_by_name("segkit") is not None


def test_run_names_tell_sweep_jobs_and_stages_apart(tmp_path):
    from segkit.loggers import flat_metric_name, run_name

    sweep = tmp_path / "multirun" / "2026-11-26_10-00-00"
    (sweep / "3").mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("")
    assert run_name(sweep / "3") == "2026-11-26_10-00-00/3"
    assert run_name(tmp_path / "train" / "2026-11-26_10-00-00") == "2026-11-26_10-00-00"
    assert run_name(tmp_path / "train" / "myrun" / "stages" / "1_segment") == "myrun/1_segment"
    assert [flat_metric_name(n) for n in ("val/dice/ship", "val/dice", "epoch", "lr-AdamW")] == [
        "val/dice_ship", "val/dice", "epoch", "lr-AdamW"]


def test_validation_images_show_image_truth_and_prediction_of_the_first_validation_images():
    from types import SimpleNamespace

    import numpy as np
    import torch

    from segkit.callbacks import ValidationImages
    from segkit.visualize import overlay
    from tests.helpers import conv1x1_module

    module = conv1x1_module(channels=3, classes=1, class_names=["background", "blob"])
    torch.manual_seed(0)
    image = torch.randn(3, 3, 24, 40)
    mask = (torch.rand(3, 24, 40) > 0.7).long()
    logged = []

    class TensorBoardLogger:  # what the callback talks to: TensorBoard's add_image
        experiment = SimpleNamespace(add_image=lambda key, picture, global_step, dataformats: logged.append(
            (key, picture, global_step, dataformats)))

    callback = ValidationImages(every_n_epochs=3, num_images=4)
    for epoch in range(5):
        trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, loggers=[TensorBoardLogger()],
                                  current_epoch=epoch, max_epochs=5, global_step=10 * epoch)
        callback.on_validation_epoch_start(trainer, module)
        for index in range(2):  # two batches of 3: the first 4 images are shown
            batch = {"image": image if index == 0 else image.flip(0), "mask": mask if index == 0 else mask.flip(0)}
            callback.on_validation_batch_end(trainer, module, None, batch, index)
        callback.on_validation_epoch_end(trainer, module)
    assert [(key, step, fmt) for key, _, step, fmt in logged] == [("val/images", 0, "HWC"), ("val/images", 3, "HWC"),
                                                                  ("val/images", 4, "HWC")]
    picture = logged[0][1]
    assert picture.shape == (4 * 26, 3 * 40, 3) and picture.dtype == np.uint8
    expected_prediction = module.predict_labels(module(image)).numpy()
    shown = [*range(3), 2]  # the second batch is flipped: its first image is the first batch's last
    for row, index in enumerate(shown):
        tiles = picture[row * 26:row * 26 + 24]
        hwc = image[index].permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(tiles[:, 40:80], overlay(hwc, mask[index].numpy(), 2, class_names=["background", "blob"]))
        np.testing.assert_array_equal(tiles[:, 80:], overlay(hwc, expected_prediction[index], 2))
        assert not np.array_equal(tiles[:, 80:], tiles[:, :40]) or not expected_prediction[index].any()
    with pytest.raises(ValueError, match="callbacks.validation_images: every_n_epochs and num_images must be >= 1"):
        ValidationImages(every_n_epochs=0)
