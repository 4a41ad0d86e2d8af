"""Resume after SIGKILL, multirun summaries and Optuna, through the real CLI."""

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import TINY_TRAIN, compose_config, run_segkit, segkit_command, segkit_env

TINY = [*TINY_TRAIN, "data.num_workers=0"]
DETERMINISTIC = ["trainer.precision=32-true", "trainer.deterministic=true", "logger=csv"]


def run(*args, cwd):
    return run_segkit("segkit-train", *args, cwd=cwd)


def checkpoint_epoch(path: Path) -> int | None:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)["epoch"]
    except Exception:  # not there yet
        return None


def kill_after_checkpoint(args, checkpoint: Path, cwd: Path, epoch: int = 0, delay: float = 0.0) -> None:
    """Start a run, SIGKILL it ``delay`` seconds after ``checkpoint`` holds ``epoch``
    (a delay lands the kill mid-epoch, in validation or in a checkpoint write)."""
    process = subprocess.Popen(segkit_command("segkit-train", *args), cwd=cwd, env=segkit_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while checkpoint_epoch(checkpoint) != epoch:
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(delay)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    args = [*TINY, *DETERMINISTIC, "trainer.max_epochs=4"]
    straight = run(*args, f"hydra.run.dir={tmp_path / 'straight'}", cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = tmp_path / "killed"
    kill_after_checkpoint([*args, f"hydra.run.dir={killed}"], killed / "checkpoints" / "last.ckpt", tmp_path)
    resumed = run(f"resume={killed}", f"hydra.run.dir={tmp_path / 'resume-log'}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_weights(tmp_path / "straight" / "checkpoints" / "last.ckpt", killed / "checkpoints" / "last.ckpt")
    history = json.loads((killed / "metrics.json").read_text())["history"]
    assert [row["epoch"] for row in history] == [0, 1, 2, 3]  # the whole history survives the kill
    log = (killed / "train.log").read_text()  # the run's own log goes on after the resume
    after = log.split("---- resumed at ", 1)
    assert len(after) == 2 and f"this command's own log: {tmp_path / 'resume-log' / 'train.log'}" in after[1]
    assert "`Trainer.fit` stopped: `max_epochs=4` reached" in after[1]


@pytest.mark.slow
def test_kill_resume_loop_ends_as_the_uninterrupted_run(tmp_path):
    """Killed three times at random points (seeded), resumed each time: the same weights,
    metrics and history as a run never interrupted."""
    args = [*TINY, *DETERMINISTIC, "trainer.max_epochs=6"]
    straight = run(*args, f"hydra.run.dir={tmp_path / 'straight'}", cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = tmp_path / "killed"
    last = killed / "checkpoints" / "last.ckpt"
    rng = random.Random(2026)
    command = [*args, f"hydra.run.dir={killed}"]
    for k, epoch in enumerate((0, 2, 3)):
        kill_after_checkpoint(command, last, tmp_path, epoch=epoch, delay=rng.uniform(0.0, 0.4))
        assert weights_finite_and_loadable(last)  # never a half-written checkpoint
        command = [f"resume={killed}", f"hydra.run.dir={tmp_path / f'resume-{k}'}"]
    resumed = run(*command, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_weights(tmp_path / "straight" / "checkpoints" / "last.ckpt", last)
    ours, theirs = (json.loads((d / "metrics.json").read_text()) for d in (killed, tmp_path / "straight"))
    assert [row["epoch"] for row in ours["history"]] == list(range(6))
    assert ours["final"] == theirs["final"] and ours["best"] == theirs["best"]


def weights_finite_and_loadable(path: Path) -> bool:
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.mark.slow
def test_seeded_deterministic_runs_are_bit_identical(tmp_path):
    # the CLI defaults (bf16-mixed + channels-last on this CPU), two loader workers
    args = [*TINY, "data.num_workers=2", "trainer.deterministic=true", "trainer.max_epochs=2", "logger=csv"]
    for name in ("a", "b"):
        result = run(*args, f"hydra.run.dir={tmp_path / name}", cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
    assert_same_weights(tmp_path / "a" / "checkpoints" / "last.ckpt", tmp_path / "b" / "checkpoints" / "last.ckpt")
    a, b = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("a", "b"))
    assert a["history"] == b["history"]


def test_killed_staged_run_resumes_mid_stage(tmp_path):
    stages = ("recipe={stages: [{name: classify, task: classification, epochs: 2, background_ratio: 0.7},"
              "{name: segment, epochs: 3, background_ratio: 0.3}]}")
    args = [*TINY, *DETERMINISTIC, "model.classification_head=true", stages]
    straight = run(*args, f"hydra.run.dir={tmp_path / 'straight'}", cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = tmp_path / "killed"
    kill_after_checkpoint([*args, f"hydra.run.dir={killed}"], killed / "stages" / "01_segment" / "checkpoints" / "last.ckpt", tmp_path)
    resumed = run(f"resume={killed}", f"hydra.run.dir={tmp_path / 'resume-log'}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    last = Path("stages/01_segment/checkpoints/last.ckpt")
    assert_same_weights(tmp_path / "straight" / last, killed / last)
    assert (killed / "stages.csv").read_text().count("\n") == 3  # header + both stages


def test_resume_auto_finds_the_run_with_the_same_config(tmp_path):
    runs = tmp_path / "outputs"
    args = [*TINY, *DETERMINISTIC, "trainer.max_epochs=3"]
    killed = runs / "first"
    kill_after_checkpoint([*args, f"hydra.run.dir={killed}"], killed / "checkpoints" / "last.ckpt", tmp_path)
    other = run(*TINY, *DETERMINISTIC, "trainer.max_epochs=1", f"hydra.run.dir={runs / 'other'}", cwd=tmp_path)
    assert other.returncode == 0
    resumed = run(*args, "resume=auto", f"hydra.run.dir={runs / 'second'}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((killed / "metrics.json").read_text())["epochs_run"] == 3
    assert not (runs / "second" / "checkpoints").exists()
    fresh = run(*TINY, *DETERMINISTIC, "trainer.max_epochs=2", "resume=auto", f"hydra.run.dir={runs / 'third'}", cwd=tmp_path)
    assert fresh.returncode == 0 and (runs / "third" / "checkpoints" / "last.ckpt").is_file()  # nothing matched


def test_resume_on_another_machine_resolves_the_settings_again(tmp_path):
    """A run saves ``accelerator/devices/precision: auto`` as asked, beside what they resolved
    to; resumed on another machine they resolve there (a GPU run continued on this CPU trains
    on the CPU, and says so) instead of keeping the first machine's values."""
    from omegaconf import OmegaConf

    from segkit.runtime import resolve_accelerator, resolve_precision

    started = tmp_path / "run"
    result = run(*TINY, "trainer.max_epochs=1", "logger=csv", f"hydra.run.dir={started}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = OmegaConf.load(started / "config.unresolved.yaml").trainer
    assert (saved.accelerator, saved.devices, saved.precision) == ("auto", "auto", "auto")
    accelerator, here = resolve_accelerator("auto"), resolve_precision("auto", "auto")  # this machine's (CPU or GPU)
    resolved = OmegaConf.load(started / "config.yaml")
    assert (resolved.trainer.accelerator, resolved.trainer.devices, resolved.trainer.precision) == (accelerator, 1, here)
    other = ("gpu", "16-mixed") if accelerator == "cpu" else ("cpu", "32-true")  # as the other kind of machine wrote it
    resolved.trainer.accelerator, resolved.trainer.precision = other
    (started / "config.yaml").write_text(OmegaConf.to_yaml(resolved))
    resumed = run(f"resume={started}", f"hydra.run.dir={tmp_path / 'resume-log'}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"accelerator {other[0]} -> {accelerator}, precision {other[1]} -> {here}" in resumed.stderr + resumed.stdout
    assert json.loads((started / "metrics.json").read_text())["precision"] == here


def test_resume_errors_are_clear(tmp_path):
    result = run(*TINY, f"resume={tmp_path / 'nothing'}", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path)
    assert result.returncode != 0 and "no config.unresolved.yaml there" in result.stderr


def test_optuna_search_completes_and_reports_the_best(tmp_path):
    sweep = tmp_path / "optuna"
    result = run("-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2", "trainer.fast_dev_run=1", *TINY,
                 f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    import yaml

    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"optimizer.lr", "loss.bce_weight"}
    assert 0.0 <= best["best_value"] <= 1.0
    assert (sweep / "summary.csv").read_text().count("\n") == 3


@pytest.mark.parametrize("launcher", ["slurm"])
def test_slurm_launcher_config_composes(launcher):
    cfg = compose_config("train", [f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.gpus_per_node == 1


def test_ema_validates_saves_and_resumes_the_average(tmp_path):
    """callbacks=ema: the best checkpoint holds the averaged weights that were validated
    (segkit-eval of it gives the logged best val/dice), and a run killed after its first
    epoch resumes both the raw weights and their average bit-exactly."""
    args = [*TINY, *DETERMINISTIC, "callbacks=ema", "callbacks.ema.decay=0.5", "trainer.max_epochs=2"]
    straight = run(*args, f"hydra.run.dir={tmp_path / 'straight'}", cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr[-3000:]
    last = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert any(not torch.equal(last["state_dict"][k], last["current_model_state"][k]) for k in last["state_dict"])

    # the weights saved as best are the ones that were validated: validating them again gives the logged score
    import lightning as L
    from hydra.utils import instantiate

    from segkit.checkpoint import load_checkpoint

    metrics = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    loaded = load_checkpoint(tmp_path / "straight" / "checkpoints" / "best.ckpt")
    datamodule = instantiate({**loaded.data, "num_workers": 0}, _convert_="all")
    trainer = L.Trainer(accelerator="cpu", precision="32-true", logger=False, enable_progress_bar=False, enable_model_summary=False)
    again = trainer.validate(loaded.module, datamodule=datamodule, verbose=False)[0]
    assert again["val/dice"] == pytest.approx(metrics["best"]["val/dice"], abs=1e-7)

    killed = tmp_path / "killed"
    kill_after_checkpoint([*args, f"hydra.run.dir={killed}"], killed / "checkpoints" / "last.ckpt", tmp_path)
    resumed = run(f"resume={killed}", f"hydra.run.dir={tmp_path / 'resume-log'}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ours = torch.load(killed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    for section in ("state_dict", "current_model_state"):
        for key, value in last[section].items():
            assert torch.equal(ours[section][key], value), (section, key)
