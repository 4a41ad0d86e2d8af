"""bench/bench_scale.py --quick: the scale benchmark's code paths on small generated layouts
(the full sizes run in `make bench`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_scale_benchmark_reports_cost_per_item_memory_and_the_dota_peak(tmp_path):
    env = {**os.environ, "SEGKIT_BENCH_DATA": str(tmp_path / "data"), "SEGKIT_BENCH_NO_SAVE": "1"}
    # airbus and dota: the folder layout runs the same measuring code as airbus, and segkit-predict
    # has its own tests (each size is a fresh process: 5 s of imports apiece)
    result = subprocess.run([sys.executable, "-m", "bench.bench_scale", "--quick", "--datasets", "airbus", "dota",
                             "--batches", "3", "--workers", "1", "--plot", str(tmp_path / "scale.png")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for kind in ("airbus",):
        for stage in ("list", "prepare", "setup"):
            assert re.search(rf"^{kind} {stage}: [\d.]+ µs per item at N=[\d,]+, [\d.]+ at N=[\d,]+: ratio [\d.]+ "
                             r"\(target <= 1.2\)$", out, re.M), (kind, stage, out)
        assert re.search(rf"^  {kind} bare listing \(os.listdir, a Path per file, a dict by stem\): [\d.]+ µs per item at "
                         r"N=[\d,]+, [\d.]+ at N=[\d,]+: ratio [\d.]+$", out, re.M), out
        assert re.search(rf"^{kind} N=[\d,]+: worker private memory [\d.]+ MiB after epoch 3, [\d.]+ after epoch 1", out, re.M)
    assert re.search(r"^dota: cutting a [\d,]+² scene \(3,000 boxes\) took [\d.]+ s and added [\d,]+ MiB at its peak, "
                     r"the decoded scene [\d,]+ MiB: ratio [\d.]+", out, re.M), out
    assert (tmp_path / "scale.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the layouts are the real formats: the Airbus CSV reads back through segkit's own reader
    from datamodules.airbus import read_airbus_csv

    table = read_airbus_csv(next((tmp_path / "data").glob("airbus-*")) / "train_ship_segmentations_v2.csv")
    assert 0.1 < len(table.rows) / len(table.ids) < 0.4  # about 22% of the images with ships, as in train_v2
