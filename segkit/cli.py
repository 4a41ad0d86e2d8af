"""Console entry points: compose the config with Hydra, then call into the library."""

from __future__ import annotations

import logging
import os

import hydra
from omegaconf import DictConfig, OmegaConf

import segkit  # noqa: F401  (sets environment defaults before heavy imports)
from segkit.errors import report_errors
from segkit.quiet import silence_known_noise
from segkit.rundir import process_rank

# ${rank_zero_file:<path>}: the path on rank 0, the null device on the other ranks, so DDP
# children (which Lightning starts with the same run dir) write no files of their own
OmegaConf.register_new_resolver("rank_zero_file", lambda path: path if process_rank() == 0 else os.devnull, replace=True)


def _route_lightning_logs_to_hydra() -> None:
    """``import lightning`` gives its logger its own console handler *and* lets records
    propagate to the root logger that Hydra configured: every line printed twice. Keep
    Hydra's (console + the run's train.log)."""
    import lightning  # noqa: F401  (installs the handler we remove)

    if logging.getLogger().handlers:
        logging.getLogger("lightning").handlers.clear()
    silence_known_noise()  # dependencies' tips and known warnings that are not the user's concern


@hydra.main(version_base="1.3", config_path="pkg://segkit.conf", config_name="train")
@report_errors("segkit-train")
def train(cfg: DictConfig) -> float | None:
    """``segkit-train``: train a model; returns the best monitored metric (for sweepers)."""
    from segkit.train import run_training

    _route_lightning_logs_to_hydra()
    summary = run_training(cfg)
    best = summary["best"]
    return None if best is None else best[summary["monitor"]]


@hydra.main(version_base="1.3", config_path="pkg://segkit.conf", config_name="prepare")
@report_errors("segkit-prepare")
def prepare(cfg: DictConfig) -> None:
    """``segkit-prepare``: build caches and splits, write the class statistics; ``check=true``
    lists every problem of the dataset's files instead (exit status 1 when there are any)."""
    from segkit.prepare import run_prepare

    _route_lightning_logs_to_hydra()
    result = run_prepare(cfg)
    if result.get("problems"):
        raise SystemExit(1)


@hydra.main(version_base="1.3", config_path="pkg://segkit.conf", config_name="plan")
@report_errors("segkit-plan")
def plan(cfg: DictConfig) -> None:
    """``segkit-plan``: fingerprint a dataset and write a training recipe planned from it."""
    from hydra.core.hydra_config import HydraConfig

    from segkit.plan import run_plan

    _route_lightning_logs_to_hydra()
    run_plan(cfg, list(HydraConfig.get().overrides.task))


@hydra.main(version_base="1.3", config_path="pkg://segkit.conf", config_name="predict")
@report_errors("segkit-predict")
def predict(cfg: DictConfig) -> None:
    """``segkit-predict``: masks, probabilities, overlays or a Kaggle submission for new images."""
    from segkit.predict import run_predict

    run_predict(cfg)


@hydra.main(version_base="1.3", config_path="pkg://segkit.conf", config_name="eval")
@report_errors("segkit-eval")
def evaluate(cfg: DictConfig) -> None:
    """``segkit-eval``: per-class scores, confusion matrix, per-image CSV, worst-N panels, report."""
    from segkit.evaluate import run_eval

    run_eval(cfg)


@hydra.main(version_base="1.3", config_path="pkg://segkit.conf", config_name="export")
@report_errors("segkit-export")
def export(cfg: DictConfig) -> None:
    """``segkit-export``: the network as ONNX or TorchScript, checked against PyTorch."""
    from segkit.export import run_export

    run_export(cfg)


if __name__ == "__main__":
    train()
