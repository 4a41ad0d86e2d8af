"""A run owns its directory: one live segkit process per run directory, unique default names.

(``segkit-predict`` and ``segkit-eval`` hold their ``output=`` folder the same way.)

Two ``segkit-train`` runs writing into one directory leave a best checkpoint of one run
beside the last checkpoint and config of the other, and an interleaved metrics.csv. Every
run therefore takes its directory before anything is written there:

- :class:`ClaimRunDir`, a Hydra callback, runs before Hydra creates the run (or sweep)
  directory and its ``.hydra/`` files. A default, timestamped name that another run took
  in the same second gets a suffix (``..._10-00-00-2``); a directory named on the command
  line (``hydra.run.dir=...``) that another live run holds is refused.
- :func:`claim_run_dir` holds an exclusive ``flock`` on ``<dir>/.segkit-run.lock`` for the
  life of the process (the file records pid, host and start time for the message). The
  kernel releases the lock when the process ends, however it ends: a crashed run leaves
  no stale lock behind.

DDP worker processes (rank > 0) share rank 0's directory and claim nothing.
"""

from __future__ import annotations

import atexit
import fcntl
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write

from segkit.errors import RunDirectoryBusy

__all__ = ["LOCK_FILE", "ClaimRunDir", "claim_run_dir", "process_rank"]

log = logging.getLogger(__name__)
LOCK_FILE = ".segkit-run.lock"
_held: dict[Path, int] = {}  # directory -> open descriptor of its lock, for this process's life


def process_rank() -> int:
    """This process's global rank as the launchers set it (Lightning's DDP children, torchrun, SLURM)."""
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def claim_run_dir(directory: str | os.PathLike, setting: str = "hydra.run.dir") -> Path:
    """Create ``directory`` and hold its lock for this process's life; re-entrant.

    Raises :class:`RunDirectoryBusy` when another live process holds it, and
    :class:`PermissionError` (naming ``setting``, what moves it) when it cannot be written.
    """
    from segkit.data.io import require_writable

    directory = Path(directory).resolve()
    if directory in _held or process_rank() > 0:
        return directory
    require_writable(directory, f"choose a writable folder with {setting}=<folder>")
    lock = directory / LOCK_FILE
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise RunDirectoryBusy(
                f"{directory} is in use by another segkit run ({holder}): wait for it to finish, or choose another "
                f"directory with {setting}=<folder>"
            ) from None
        try:  # the holder before us removes the file as it lets go: lock the file that is there now
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
    _held[directory] = fd
    return directory


def _holder(fd: int) -> str:
    """What the lock file open at ``fd`` says of the process holding it."""
    return os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"


def run_holder(directory: str | os.PathLike) -> str | None:
    """Who is running in ``directory`` now (``"pid ... on host, started ..."``), or ``None``
    when no live process holds it. Takes nothing: a shared lock tried and let go at once."""
    directory = Path(directory).resolve()
    if directory in _held:
        return f"pid {os.getpid()} (this process)"
    try:
        fd = os.open(directory / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(fd)
    finally:
        os.close(fd)  # closing lets a lock taken here go
    return None


def held_here(directory: str | os.PathLike) -> bool:
    """Whether this process holds ``directory``'s lock (an earlier call's, in library use)."""
    return Path(directory).resolve() in _held


def release_run_dir(directory: str | os.PathLike) -> None:
    """Give the lock of ``directory`` back and remove its file (a process that ends without
    calling this lets go of the lock all the same; only the small file stays)."""
    directory = Path(directory).resolve()
    fd = _held.pop(directory, None)
    if fd is not None:
        (directory / LOCK_FILE).unlink(missing_ok=True)  # still locked: nobody can take it in between
        os.close(fd)


@atexit.register
def _release_all() -> None:
    """At exit, the locks this process still holds go back and their files go away."""
    for directory in list(_held):
        release_run_dir(directory)


def _overridden(config: DictConfig, key: str) -> bool:
    """Whether ``key`` was set on the command line (otherwise it holds the config's default)."""
    return any(str(o).split("=", 1)[0].lstrip("+~") == key for o in config.hydra.overrides.hydra)


def _unique(directory: Path) -> Path:
    """``directory`` created now by this process, or ``<directory>-2``, ``-3``... when taken."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        candidate = directory if n == 1 else directory.with_name(f"{directory.name}-{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RunDirectoryBusy(f"{directory}: 999 runs started in the same second? choose hydra.run.dir=<folder>")


class ClaimRunDir(Callback):
    """Hydra callback: claim the run (or sweep) directory before Hydra writes into it."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._claim(config, "hydra.run.dir", config.hydra.run)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._claim(config, "hydra.sweep.dir", config.hydra.sweep)

    @staticmethod
    def _claim(config: DictConfig, key: str, node: DictConfig) -> None:
        if process_rank() > 0:
            return
        app = f"segkit-{config.hydra.job.name}"
        try:
            directory = Path(str(node.dir))
            if not _overridden(config, key):
                directory = _unique(directory)
                with read_write(node), open_dict(node):
                    node.dir = str(directory)
            claim_run_dir(directory, key)
        except (RunDirectoryBusy, PermissionError, OSError) as err:
            sys.stderr.write(f"{app}: error: {err}\n")
            raise SystemExit(1) from None
