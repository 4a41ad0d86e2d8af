"""Errors a user can act on, and how the console apps report them.

A :class:`DataFileError` is raised by a dataset when one file cannot be used (corrupt,
wrong channels, a mask that disagrees with its image). Raised inside a DataLoader worker,
PyTorch re-creates it in the main process from the worker's formatted traceback; the
class keeps the one line that says what is wrong and what to do as its message, and the
worker's traceback in ``worker_traceback``.

:func:`report_errors` wraps a console app: known problems (bad config, bad data, an
unwritable or occupied path, Ctrl-C) print as a few lines without a traceback and exit
non-zero; anything else (a bug) keeps its full traceback. ``HYDRA_FULL_ERROR=1`` shows the
traceback for everything.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["DataFileError", "RunDirectoryBusy", "format_problems", "is_user_error", "report_errors", "user_message"]

F = TypeVar("F", bound=Callable[..., Any])

# the folders whose ValueError / FileNotFoundError are written for users (they name the file or setting)
_OWN_CODE = (str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1] / "datamodules"))


def format_problems(problems: Sequence[str], head: str, limit: int = 20, tail: str = "") -> str:
    """``head``, then the first ``limit`` problems one per line, then how many more and ``tail``."""
    shown = list(problems[:limit])
    more = len(problems) - len(shown)
    return (head + "\n  " + "\n  ".join(shown)
            + (f"\n  ... and {more} more" if more > 0 else "") + (f"\n{tail}" if tail else ""))


class DataFileError(ValueError):
    """One file of a dataset cannot be used; the message names it and what to do."""

    def __init__(self, message: str) -> None:
        worker_traceback = None
        if message.startswith("Caught DataFileError"):  # re-created from a DataLoader worker's traceback
            worker_traceback = message
            last = [line for line in message.strip().splitlines() if line.startswith(("segkit.errors.DataFileError:", "DataFileError:"))]
            if last:
                message = last[-1].split(":", 1)[1].strip()
        super().__init__(message)
        self.worker_traceback = worker_traceback


class RunDirectoryBusy(RuntimeError):
    """Another live process holds the run directory."""


def _raised_in_own_code(error: BaseException) -> bool:
    tb = error.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    return last is not None and str(Path(last.tb_frame.f_code.co_filename).resolve()).startswith(_OWN_CODE)


def _root(error: BaseException) -> BaseException:
    """The error under Hydra's instantiation wrapper (``Error in call to target ...``)."""
    from hydra.errors import InstantiationException

    while isinstance(error, InstantiationException) and error.__cause__ is not None:
        error = error.__cause__
    return error


def is_user_error(error: BaseException) -> bool:
    """Errors that describe the user's data, settings or files rather than a bug in segkit."""
    from omegaconf.errors import OmegaConfBaseException

    error = _root(error)
    if isinstance(error, (DataFileError, RunDirectoryBusy, PermissionError, FileExistsError, OmegaConfBaseException)):
        return True
    if isinstance(error, (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, ImportError)):
        return _raised_in_own_code(error)
    return False


def user_message(error: BaseException) -> str:
    return str(_root(error)).strip() or type(_root(error)).__name__


def report_errors(app: str) -> Callable[[F], F]:
    """Decorate a console app's main function: see the module docstring."""

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return function(*args, **kwargs)
            except KeyboardInterrupt as interrupt:
                _second_interrupt_exits()
                said = f" {interrupt}" if str(interrupt) else ""
                sys.stderr.write(f"\n{app}: interrupted (Ctrl-C or a stop signal); files written so far are complete, "
                                 f"nothing half-written.{said}\n")
                _log_to_files(f"{app}: interrupted (Ctrl-C or a stop signal).{said}")
                raise SystemExit(130) from None
            except Exception as error:  # noqa: BLE001 — sorted into the user's problems and bugs
                if os.environ.get("HYDRA_FULL_ERROR") == "1" or not is_user_error(error):
                    raise
                sys.stderr.write(f"{app}: error: {user_message(error)}\n")
                _log_to_files(f"{app}: error: {user_message(error)}")
                if _in_sweep():  # the sweep goes on with its other runs and reports this one as failed
                    raise
                sys.stderr.write("(HYDRA_FULL_ERROR=1 shows the traceback)\n")
                sys.stderr.flush()
                raise SystemExit(1) from None

        return wrapper  # type: ignore[return-value]

    return decorate


def _second_interrupt_exits() -> None:
    """While the first Ctrl-C winds down (loader workers, logger threads), another one ends the
    process at once with 130, as the first would have: not a death by signal (-2) and not a
    traceback from the middle of the shutdown."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, lambda *_: (sys.stderr.flush(), os._exit(130)))


def _log_to_files(message: str) -> None:
    """``message`` into the log files of the run (``train.log``), not again onto the console."""
    import logging

    record = logging.LogRecord("segkit", logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
