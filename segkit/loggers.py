"""Experiment trackers (``logger=mlflow``, ``logger=wandb``, ``logger=many``) that are safe offline.

Lightning's :class:`~lightning.pytorch.loggers.MLFlowLogger` and
:class:`~lightning.pytorch.loggers.WandbLogger` with three things added, each a way a run
was lost before its first epoch:

- the package missing: one line naming the extra to install, not Lightning's import error;
- a tracker that cannot be reached (no internet, no server, no W&B login): a refusal within
  seconds that names the address and the offline setting, where MLflow retries for minutes
  and W&B waits for a login prompt nobody sees under SLURM or ``nohup``;
- a local MLflow store (``file:``, the default): its folder resolved and created, and
  MLflow 3's refusal of file stores lifted for it (``MLFLOW_ALLOW_FILE_STORE``), since
  ``mlflow-skinny`` has no database backend.

Runs are named after their run directory (``<sweep>/<job>`` in a sweep) and tagged with
the command line's overrides, so a sweep's runs can be told apart in either tracker.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import MLFlowLogger as _LightningMLFlowLogger
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_only

from segkit.runtime import connection_problem

__all__ = ["MLFlowLogger", "WandbLogger", "flat_metric_name", "run_name", "run_overrides"]

#: seconds to wait for a tracking server before saying it cannot be reached
PROBE_TIMEOUT_S = 3.0
INSTALL = "pip install 'segkit[loggers]' (mlflow-skinny and wandb)"


def _require(module: str, logger: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ImportError(f"logger={logger} needs the {module} package, which is not installed: {INSTALL}; "
                          "or choose another logger (logger=default: CSV + TensorBoard, nothing to install)")


def _reachable(url: str) -> str | None:
    """``None`` when ``url``'s host answers on its port within a few seconds, else why not."""
    parsed = urlparse(url)
    host = parsed.hostname
    if not host:
        return f"{url} names no host"
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    problem = connection_problem(host, port, PROBE_TIMEOUT_S)
    return None if problem is None else f"{host}:{port} cannot be reached ({problem})"


def run_name(run_dir: str | os.PathLike | None) -> str | None:
    """A run's name in a tracker: its directory's name, under the sweep's for a sweep job."""
    if run_dir is None:
        return None
    path = Path(run_dir)
    if path.name == "stages" or path.parent.name == "stages":  # a stage of a staged recipe
        return f"{run_name(path.parents[1] if path.parent.name == 'stages' else path.parent)}/{path.name}"
    if (path.parent / "multirun.yaml").is_file() or path.name.isdigit():
        return f"{path.parent.name}/{path.name}"
    return path.name


def run_overrides() -> str:
    """The command line's overrides of the running Hydra job (``model=fpn data.fold=2``), or ''."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return " ".join(HydraConfig.get().overrides.task)
    except Exception:  # not under a Hydra app (tests, the Python API): nothing to tag
        return ""


class MLFlowLogger(_LightningMLFlowLogger):
    """Lightning's MLflow logger; ``tracking_uri`` ``file:<folder>`` (default ``file:outputs/mlruns``,
    relative to the working directory) keeps everything local, ``http(s)://`` is probed first.

    Args:
        run_dir: the run directory, which names the run (``run_name`` overrides it).
        Other arguments: Lightning's ``MLFlowLogger``.
    """

    def __init__(self, experiment_name: str = "segkit", run_name: str | None = None,
                 tracking_uri: str | None = "file:outputs/mlruns", run_dir: str | None = None,
                 tags: dict[str, Any] | None = None, **kwargs: Any) -> None:
        _require("mlflow", "mlflow")
        tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "file:outputs/mlruns"
        scheme = urlparse(tracking_uri).scheme
        if scheme in ("", "file"):
            folder = Path(tracking_uri[len("file:"):] if tracking_uri.startswith("file:") else tracking_uri)
            if tracking_uri.startswith("file://"):
                folder = Path(urlparse(tracking_uri).path)
            folder = folder.expanduser().resolve()
            if folder.exists() and not folder.is_dir():
                raise ValueError(f"logger.mlflow.tracking_uri={tracking_uri}: {folder} is a file, not a folder; "
                                 "point it at a folder (created if missing)")
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise ValueError(f"logger.mlflow.tracking_uri={tracking_uri}: cannot create {folder} "
                                 f"({err.strerror or err}); point it at a folder you can write") from None
            tracking_uri = folder.as_uri()
            # MLflow 3 refuses file stores unless asked; mlflow-skinny has no other local backend
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        elif scheme in ("http", "https"):
            problem = _reachable(tracking_uri)
            if problem:
                raise ValueError(
                    f"logger.mlflow.tracking_uri={tracking_uri}: {problem}. Start the server, or log locally: "
                    "logger.mlflow.tracking_uri=file:outputs/mlruns (the default)")
        _ensure_experiment(tracking_uri, experiment_name)
        overrides = run_overrides()
        tags = {**({"overrides": overrides} if overrides else {}), **(tags or {})}
        super().__init__(experiment_name=experiment_name, run_name=run_name or _name(run_dir),
                         tracking_uri=tracking_uri, tags=tags or None, **kwargs)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Per-class names one level deep (``val/dice/ship`` → ``val/dice_ship``): MLflow's file store
        keeps ``val/dice`` as a file, so a metric below it could not be written."""
        super().log_metrics({flat_metric_name(k): v for k, v in metrics.items()}, step)


def _ensure_experiment(tracking_uri: str, name: str) -> None:
    """Create the experiment now, tolerating a run started at the same moment that created it
    first (Lightning creates it lazily and fails on that race), and prove the address is an
    MLflow server: a web server that is not one fails here in one line, not at the first metric."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        if client.get_experiment_by_name(name) is None:
            try:
                client.create_experiment(name)
            except MlflowException:
                if client.get_experiment_by_name(name) is None:  # not the race: a real failure
                    raise
    except MlflowException as err:
        first = " ".join(str(err).split())[:200]
        raise ValueError(f"logger.mlflow.tracking_uri={tracking_uri}: MLflow cannot use it ({first}). Is it an MLflow "
                         "tracking server? Or log locally: logger.mlflow.tracking_uri=file:outputs/mlruns") from None


def flat_metric_name(name: str) -> str:
    """``val/dice/ship`` → ``val/dice_ship``: the first ``/`` groups, the others join with ``_``."""
    head, _, rest = name.partition("/")
    return f"{head}/{rest.replace('/', '_')}" if rest else head


class WandbLogger(_LightningWandbLogger):
    """Lightning's Weights & Biases logger, offline by default (``offline: true``: the run is
    written under ``save_dir/wandb`` and uploaded later with ``wandb sync``). Online, the W&B
    host and a login (``wandb login`` or ``WANDB_API_KEY``) are checked first.

    Args:
        run_dir: the run directory, which names the run (``name`` overrides it).
        Other arguments: Lightning's ``WandbLogger``.
    """

    def __init__(self, project: str = "segkit", name: str | None = None, save_dir: str = ".", offline: bool = True,
                 run_dir: str | None = None, **kwargs: Any) -> None:
        _require("wandb", "wandb")
        if offline:
            os.environ.setdefault("WANDB_SILENT", "true")  # no "wandb: ..." banners between the epoch lines
        else:
            host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
            problem = _reachable(host)
            if problem is None and not os.environ.get("WANDB_API_KEY") and not _has_key():
                # never a login prompt: under SLURM or nohup it waits forever
                problem = "no W&B login is stored (run `wandb login` once, or set WANDB_API_KEY)"
            if problem:
                raise ValueError(f"logger=wandb online: {problem}. Or log offline (logger.wandb.offline=true, the "
                                 "default) and upload later with `wandb sync <run dir>/wandb/offline-run-*`")
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        overrides = run_overrides()
        kwargs.setdefault("notes", overrides or None)
        super().__init__(project=project, name=name or _name(run_dir), save_dir=save_dir, offline=offline, **kwargs)
        # Lightning passes anonymous=None, which W&B 0.31 answers with a warning on every run
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Lightning leaves the W&B run open until the process exits: the offline file is then
        unwritten, and the next job of a sweep run in the same process would log into it."""
        super().finalize(status)
        if self._experiment is not None and hasattr(self._experiment, "finish"):
            self._experiment.finish(exit_code=0 if status == "success" else 1)
            self._experiment = None


def _name(run_dir: str | None) -> str | None:
    return run_name(run_dir)


def _has_key() -> bool:
    """Whether W&B has an API key stored (``wandb login`` writes it to ~/.netrc)."""
    try:
        host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False
