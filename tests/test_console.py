"""What segkit-train prints: the metrics table and the run's paths, not the dependencies' noise."""

import logging
import re
import warnings

import pytest

from tests.helpers import TINY_TRAIN, run_segkit

# each line segkit-train used to print on every run, and nothing the user can act on
NOISE = {
    "Lightning's advertising tips": re.compile(r"Tip:|litmodels|litlogger"),
    "the bf16 model-summary warning": re.compile(r"is not supported by the model summary"),
    "third-party deprecations": re.compile(r"is deprecated|DeprecationWarning|FutureWarning"),
    "an unmeasured FLOPs count": re.compile(r"FLOPs|Total Flops"),
    "the log_every_n_steps warning": re.compile(r"smaller than the logging interval|log_every_n_steps"),
    "Lightning echoing segkit's own val_check_interval": re.compile(r"was configured so validation"),
    "the absent TPU": re.compile(r"TPU available: False"),
    "the classification metrics of a segmentation model": re.compile(r"BinaryAccuracy|BinaryF1Score"),
}


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    """stdout + stderr of a real (not fast_dev_run) 1-epoch segkit-train of 2 batches (fewer than
    log_every_n_steps), in bf16 (the precision whose model size Lightning cannot estimate)."""
    work = tmp_path_factory.mktemp("console")
    result = run_segkit(
        "segkit-train", *TINY_TRAIN, "trainer.max_epochs=1", "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1", "trainer.val_check_interval=1.0", "trainer.precision=bf16-mixed",
        f"hydra.run.dir={work / 'run'}", cwd=work,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.mark.parametrize("what", list(NOISE))
def test_train_console_has_no_noise(console, what):
    found = [line for line in console.splitlines() if NOISE[what].search(line)]
    assert not found, f"{what}: {found}"


def test_train_console_keeps_what_the_user_reads(console):
    assert re.search(r"^metric\s+at best\s+final$", console, re.M)  # the metrics table (at the best epoch)
    assert re.search(r"^val/dice\s+\d", console, re.M)
    for line in ("Trainable params", "Total params", "Total estimated model params size (MB)", "GPU available:",
                 "best by val/dice (max); precision bf16-mixed", "best checkpoint:", "run dir:"):
        assert line in console, line
    assert re.search(r"┃ Name\s+┃ Type\s+┃ Params ┃ Mode\s+┃\n", console)  # the summary table, no FLOPs column


# ---------------------------------------------------------------- in process
@pytest.fixture
def quiet(monkeypatch):
    """``silence_known_noise()`` with every global it touches restored afterwards."""
    from lightning.pytorch.callbacks import ModelSummary, RichModelSummary

    from segkit.quiet import NOISE_LOG_MESSAGES, silence_known_noise

    for cls in (ModelSummary, RichModelSummary):
        monkeypatch.setattr(cls, "summarize", cls.__dict__["summarize"])  # restored at teardown
    for name in {n for n, _ in NOISE_LOG_MESSAGES} | {"lightning.pytorch.callbacks.model_summary"}:
        logger = logging.getLogger(name)
        monkeypatch.setattr(logger, "filters", list(logger.filters))
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # the baseline shows everything: only segkit's filters hide
        silence_known_noise()
        yield silence_known_noise


def shown(message, category, module):
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn_explicit(message, category, filename="x.py", lineno=1, module=module, registry={})
    return [str(w.message) for w in caught]


def test_only_the_known_warnings_are_silenced(quiet):
    from lightning.fabric.utilities.rank_zero import LightningDeprecationWarning
    from lightning.fabric.utilities.warnings import PossibleUserWarning

    hidden = [
        ("Precision bf16-mixed is not supported by the model summary.  Estimated model size ...", UserWarning, "lightning.pytorch.utilities.model_summary.model_summary"),
        ("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, "lightning.pytorch.utilities._pytree"),
        ("The number of training batches (3) is smaller than the logging interval Trainer(log_every_n_steps=10). ...", PossibleUserWarning, "lightning.pytorch.loops.fit_loop"),
        ("some internal API is deprecated", DeprecationWarning, "timm.layers.helpers"),
        ("will change in a future release", FutureWarning, "torch.nn.modules.module"),
    ]
    for message, category, module in hidden:
        assert shown(message, category, module) == [], message
    kept = [
        ("a warning about the user's data", UserWarning, "datamodules.dota"),
        ("segkit deprecates something", FutureWarning, "segkit.predict"),
        ("Trainer(foo=...) is deprecated", LightningDeprecationWarning, "lightning.pytorch.trainer.trainer"),
        ("a Hydra config key is deprecated", DeprecationWarning, "hydra.core.utils"),
        ("a dependency's own runtime warning", UserWarning, "torch.nn.functional"),
        ("The number of training batches is huge", PossibleUserWarning, "lightning.pytorch.loops.fit_loop"),
    ]
    for message, category, module in kept:
        assert shown(message, category, module) == [message], message


def test_silencing_twice_adds_nothing(quiet):
    before = list(warnings.filters)
    filters = {name: list(logging.getLogger(name).filters) for name in ("lightning.pytorch.utilities.rank_zero",
                                                                       "lightning.pytorch.callbacks.model_summary")}
    quiet()
    assert warnings.filters == before
    assert {name: list(logging.getLogger(name).filters) for name in filters} == filters


def test_lightning_tips_are_dropped_and_its_other_lines_kept(quiet, caplog):
    from lightning.pytorch.utilities.rank_zero import rank_zero_info

    caplog.set_level(logging.INFO)
    rank_zero_info("💡 Tip: For seamless cloud uploads and versioning, try installing [litmodels](...)")
    rank_zero_info("`Trainer(val_check_interval=1.0)` was configured so validation will run at the end of the training epoch..")
    rank_zero_info("TPU available: False, using: 0 TPU cores")
    rank_zero_info("GPU available: True (cuda), used: True")
    rank_zero_info("`Trainer(limit_train_batches=1)` was configured so 1 batch per epoch will be used.")
    assert [r.getMessage() for r in caplog.records] == [
        "GPU available: True (cuda), used: True",
        "`Trainer(limit_train_batches=1)` was configured so 1 batch per epoch will be used.",
    ]


SUMMARY = [(" ", ["0", "1"]), ("Name", ["net", "loss_fn"]), ("Type", ["SegmentationNet", "DiceLoss"]),
           ("Params", ["6.6 M", "0"]), ("Mode", ["train", "train"]), ("FLOPs", ["0", "0"])]


def test_an_unmeasured_flops_count_leaves_the_model_summaries(quiet, caplog):
    from lightning.pytorch.callbacks import ModelSummary, RichModelSummary
    from rich import get_console

    args = (SUMMARY, 6_628_945, 6_628_945, 26.5, {"train": 293, "eval": 0})
    with get_console().capture() as captured:
        RichModelSummary.summarize(*args, total_flops=0)
    text = captured.get()
    assert "FLOPs" not in text and "Trainable params: 6.6 M" in text and "Total params: 6.6 M" in text
    assert "SegmentationNet" in text and "Modules in eval mode: 0" in text
    with get_console().capture() as captured:
        RichModelSummary.summarize(*args, total_flops=12_000_000)  # counted: shown as Lightning shows it
    assert "Total FLOPs: 12.0 M" in captured.get()

    caplog.set_level(logging.INFO)
    ModelSummary.summarize(*args, total_flops=0)
    ModelSummary.summarize(*args, total_flops=12_000_000)
    unmeasured, measured = (r.getMessage() for r in caplog.records)
    assert "Flops" not in unmeasured and "FLOPs" not in unmeasured and "Total params" in unmeasured
    assert "12.0 M    Total Flops" in measured and "FLOPs" in measured


def test_segkits_own_warnings_are_one_line_about_the_users_file(capsys):
    """A warning segkit raises about the user's data reads as one `warning:` line (above any
    progress bar), not as `<segkit source>:<line>: UserWarning:` plus a line of segkit's code;
    a dependency's warning keeps Python's form."""
    import warnings
    from pathlib import Path

    import segkit.data.rasterize
    from segkit.quiet import silence_known_noise

    ours = str(Path(segkit.data.rasterize.__file__).resolve())
    with warnings.catch_warnings(record=True) as passed_on:  # what Python's own display receives
        warnings.simplefilter("always")
        silence_known_noise()
        warnings.warn_explicit("labelTxt/P0001.txt:67: polygon reaches outside the 712x557 image; clipped",
                               UserWarning, ours, 40)
        warnings.warn_explicit("something of theirs", UserWarning, "/site-packages/other/thing.py", 7)
    err = capsys.readouterr().err
    assert err == "warning: labelTxt/P0001.txt:67: polygon reaches outside the 712x557 image; clipped\n"
    assert [(str(w.message), w.filename) for w in passed_on] == [("something of theirs", "/site-packages/other/thing.py")]
