"""Keep the console for what the user has to read: silence the known noise of dependencies.

Every ``segkit-train`` used to print lines that are no concern of the person running it:
Lightning's advertising tips, its warning that the model summary cannot size bf16 weights,
deprecation warnings that one dependency raises about another, a ``Total FLOPs: 0`` line
(FLOPs are only counted when the module has an ``example_input_array``; 0 means "not
measured"), and the "fewer batches than log_every_n_steps" warning that every small
dataset or ``limit_train_batches`` run triggers (segkit logs every epoch anyway).

Each filter below names one message (or one category from third-party modules); nothing
else is touched: a warning about the user's own settings, segkit's warnings and Lightning's
deprecations of Trainer arguments the user may have set still show.
"""

from __future__ import annotations

import logging
import re
import sys
import warnings
from pathlib import Path
from typing import Any

__all__ = ["DEPENDENCY_MODULES", "NOISE_LOG_MESSAGES", "NOISE_WARNINGS", "silence_known_noise"]

# (message regex matched at the start of the warning's text, category)
NOISE_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # Lightning's model summary: sizes of bf16/16-mixed weights "not accurate"
    (r"Precision \S+ is not supported by the model summary", UserWarning),
    # torch deprecated LeafSpec; Lightning's own pytree helper still builds one every step
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
)
# the log_every_n_steps warning is a PossibleUserWarning (imported lazily: lightning is heavy)
_LOG_INTERVAL_WARNING = r"The number of training batches \(\d+\) is smaller than the logging interval"

# Lightning INFO lines through its rank_zero logger: (logger, message regex)
NOISE_LOG_MESSAGES: tuple[tuple[str, str], ...] = (
    # "💡 Tip: For seamless cloud uploads/logging ... try installing litmodels/litlogger"
    ("lightning.pytorch.utilities.rank_zero", r"\W*Tip:"),
    ("lightning.fabric.utilities.rank_zero", r"\W*Tip:"),
    # the fit loop's own default, which segkit's fast_dev_run sets: nothing the user chose
    ("lightning.pytorch.utilities.rank_zero", r"`Trainer\(val_check_interval=1\.0\)` was configured so validation will run"),
    # on a machine without a TPU ("GPU available: ..." stays: it says whether the GPU is used)
    ("lightning.pytorch.utilities.rank_zero", r"TPU available: False"),
    # MLflow's first run in a new store (logger=mlflow): the experiment is created, as meant
    ("lightning.pytorch.loggers.mlflow", r"Experiment with name .* not found\. Creating it\."),
)

# deprecation warnings attributed to code of these packages (one dependency about another,
# or about its own internals) cannot be acted upon by a segkit user. Hydra and OmegaConf
# are left out: their deprecations concern the configs, i.e. segkit or the user.
DEPENDENCY_MODULES: tuple[str, ...] = (
    "torch", "torchvision", "torchmetrics", "lightning", "lightning_fabric", "pytorch_lightning",
    "lightning_utilities", "timm", "segmentation_models_pytorch", "albumentations", "albucore",
    "onnx", "onnxscript", "onnx_ir", "onnxruntime", "matplotlib", "PIL", "pydantic", "huggingface_hub",
    "safetensors", "tensorboard", "tensorboardX", "google.protobuf", "pkg_resources", "rich", "tqdm",
    "pandas", "numpy", "scipy", "cv2", "tifffile", "imagecodecs", "optuna", "submitit", "sqlalchemy",
    "mlflow", "wandb",
)
_DEPRECATIONS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


class _DropMessages(logging.Filter):
    """Drops the records of one logger whose message starts with one of ``patterns``."""

    def __init__(self, patterns: list[str]) -> None:
        super().__init__()
        self.pattern = re.compile("|".join(f"(?:{p})" for p in patterns))

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is logging's to report, not ours
            return True
        return self.pattern.match(message) is None


class _DropFlopsLine(logging.Filter):
    """Lightning's plain-text ``ModelSummary`` ends with ``0   Total Flops`` when nothing was counted."""

    line = re.compile(r"\n0\s+Total Flops[ \t]*(?=\n|$)")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and not record.args and "Total Flops" in record.msg:
            record.msg = self.line.sub("", record.msg)
        return True


def _without_flops(summary_data: list[tuple[str, list[str]]]) -> list[tuple[str, list[str]]]:
    return [column for column in summary_data if column[0] != "FLOPs"]


def _rich_summary_without_flops(
    summary_data: list[tuple[str, list[str]]],
    total_parameters: int,
    trainable_parameters: int,
    model_size: float,
    total_training_modes: dict[str, int],
    **summarize_kwargs: Any,
) -> None:
    """Lightning's ``RichModelSummary`` table and totals, without the FLOPs column and line."""
    from lightning.pytorch.utilities.model_summary.model_summary import (
        get_formatted_model_size,
        get_human_readable_count,
    )
    from rich import get_console
    from rich.table import Table

    console = get_console()
    table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
    columns = _without_flops(summary_data)
    for index, (name, _) in enumerate(columns):
        if index == 0:
            table.add_column(name, style="dim")
        elif name == "Name":
            table.add_column(name, justify="left", no_wrap=True)
        elif name in ("Params", "Params per Device"):
            table.add_column(name, justify="right")
        elif name in ("In sizes", "Out sizes"):
            table.add_column(name, justify="right", style="white")
        else:
            table.add_column(name)
    for row in zip(*(values for _, values in columns)):
        table.add_row(*row)
    console.print(table)

    grid = Table.grid(expand=True)
    grid.add_column()
    grid.add_column()
    frozen = total_parameters - trainable_parameters
    grid.add_row(f"[bold]Trainable params[/]: {get_human_readable_count(int(trainable_parameters)):<10}")
    grid.add_row(f"[bold]Non-trainable params[/]: {get_human_readable_count(int(frozen)):<10}")
    grid.add_row(f"[bold]Total params[/]: {get_human_readable_count(int(total_parameters)):<10}")
    grid.add_row(f"[bold]Total estimated model params size (MB)[/]: {get_formatted_model_size(model_size):<10}")
    grid.add_row(f"[bold]Modules in train mode[/]: {total_training_modes['train']}")
    grid.add_row(f"[bold]Modules in eval mode[/]: {total_training_modes['eval']}")
    console.print(grid)


def _summarize_wrapper(original: Any, rich: bool) -> Any:
    """``summarize`` as Lightning's, but a FLOPs count of 0 (not measured) is left out."""

    def summarize(summary_data, total_parameters, trainable_parameters, model_size, total_training_modes,
                  total_flops=0, **summarize_kwargs):
        if total_flops:
            return original(summary_data, total_parameters, trainable_parameters, model_size,
                            total_training_modes, total_flops=total_flops, **summarize_kwargs)
        if rich:
            return _rich_summary_without_flops(summary_data, total_parameters, trainable_parameters, model_size,
                                               total_training_modes, **summarize_kwargs)
        # the plain table's last line goes through _DropFlopsLine
        return original(_without_flops(summary_data), total_parameters, trainable_parameters, model_size,
                        total_training_modes, total_flops=total_flops, **summarize_kwargs)

    summarize.segkit_quiet = True
    summarize.__wrapped__ = original
    return summarize


def _quiet_model_summaries() -> None:
    try:
        from lightning.pytorch.callbacks import ModelSummary, RichModelSummary
    except ImportError:  # pragma: no cover - lightning is a dependency
        return
    for cls, rich in ((ModelSummary, False), (RichModelSummary, True)):
        original = cls.__dict__.get("summarize")
        function = getattr(original, "__func__", None)
        if function is None or getattr(function, "segkit_quiet", False):
            continue  # already wrapped, or not the staticmethod this was written for
        cls.summarize = staticmethod(_summarize_wrapper(function, rich))
    _add_log_filter(logging.getLogger("lightning.pytorch.callbacks.model_summary"), _DropFlopsLine())


def _add_log_filter(logger: logging.Logger, new: logging.Filter) -> None:
    if not any(type(existing) is type(new) for existing in logger.filters):
        logger.addFilter(new)


_OWN_CODE = (str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1] / "datamodules"))
_fallback_showwarning: list[Any] = [warnings.showwarning]  # what shows the other warnings


def _show_own_warnings_on_one_line(message, category, filename, lineno, file=None, line=None) -> None:
    """segkit's own warnings say what is wrong with the user's files (``labelTxt/P0001.txt:67:
    polygon reaches outside ...``): shown as one ``warning:`` line, above any progress bar
    (tqdm.write), not as Python's ``<segkit source>:<line>: UserWarning`` plus a line of our code."""
    if issubclass(category, UserWarning) and str(filename).startswith(_OWN_CODE):
        from tqdm.auto import tqdm

        tqdm.write(f"warning: {message}", file=file or sys.stderr)
        return
    _fallback_showwarning[0](message, category, filename, lineno, file, line)


def silence_known_noise() -> None:
    """Install the filters above (idempotent: a second call changes nothing)."""
    if warnings.showwarning is not _show_own_warnings_on_one_line:
        _fallback_showwarning[0] = warnings.showwarning
        warnings.showwarning = _show_own_warnings_on_one_line
    module_pattern = r"(?:{})(?:\.|$)".format("|".join(re.escape(name) for name in DEPENDENCY_MODULES))
    for category in _DEPRECATIONS:
        warnings.filterwarnings("ignore", category=category, module=module_pattern)
    for message, category in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    try:
        from lightning.fabric.utilities.rank_zero import LightningDeprecationWarning
        from lightning.fabric.utilities.warnings import PossibleUserWarning
    except ImportError:  # pragma: no cover - lightning is a dependency
        pass
    else:
        warnings.filterwarnings("ignore", message=_LOG_INTERVAL_WARNING, category=PossibleUserWarning)
        # Lightning's deprecations of its own arguments concern the user's trainer.* settings: keep
        # them (checked first: filterwarnings puts the latest filter in front)
        warnings.filterwarnings("default", category=LightningDeprecationWarning)

    by_logger: dict[str, list[str]] = {}
    for name, pattern in NOISE_LOG_MESSAGES:
        by_logger.setdefault(name, []).append(pattern)
    for name, patterns in by_logger.items():
        _add_log_filter(logging.getLogger(name), _DropMessages(patterns))
    _quiet_model_summaries()
