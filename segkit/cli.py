"""Console entry points: compose the config with Hydra, then call into the library."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

import segkit  # noqa: F401  (sets environment defaults before heavy imports)


@hydra.main(version_base="1.3", config_path="pkg://segkit.conf", config_name="train")
def train(cfg: DictConfig) -> float | None:
    """``segkit-train``: train a model; returns the best monitored metric (for sweepers)."""
    from segkit.train import run_training

    summary = run_training(cfg)
    best = summary["best"]
    return None if best is None else best[summary["monitor"]]


if __name__ == "__main__":
    train()
