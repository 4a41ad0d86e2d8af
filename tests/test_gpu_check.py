"""bench/gpu_check.py, the check a lent GPU runs first: on the CPU at tiny sizes (the same
code paths), every line in the results file as it is measured, and a clear stop where CUDA
is not usable."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def gpu_check(*args: str, results: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.gpu_check", *args, "--results", str(results)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_quick_cpu_check_measures_every_section_into_the_results_file(tmp_path):
    results = tmp_path / "RESULTS.md"
    result = gpu_check("--device", "cpu", "--quick", "--workers", "0", results=results)
    assert result.returncode == 0, result.stderr[-3000:]
    text = results.read_text()
    assert text.startswith("\n### GPU check (bench/gpu_check.py, cpu, quick)") and "Machine: " in text
    lines = [line[4:] for line in text.splitlines() if line.startswith("    ")]  # the measured lines, indented
    expected = [r"^torch .* built for CUDA", r"^mobilenet_unet 64 px, batch 2, plain loop, 32-true, TF32 off: [\d.]+ images/s",
                r"16-mixed \+ channels-last vs 32-true, TF32 off: ours .* ratio", r"bf16-mixed \+ channels-last vs 32-true",
                r"Lightning Trainer vs the plain loop: ours .* ratio [\d.]+ \(target >= 0.95\)",
                r"^mobilenet_unet 64 px .*: Airbus datamodule \(0 workers, augmentations\) vs the same batches on the device: ours",
                r"^sliding window 192x192, tile 128, overlap 32, 4 windows, .*: Predictor vs the bare forward .* ratio",
                r"^demo: segkit-train model=mobilenet_unet at 64 px for 10 s \(.*\): \d+ epochs, [1-9]\d* steps of batch 2",
                r"^  demo training images/s over the whole run .* ratio",
                r"^largest batch: skipped off CUDA", r"^gpu_check done in \d+ s"]
    at = 0
    for pattern in expected:  # in this order, each once measured
        found = next((i for i in range(at, len(lines)) if re.search(pattern, lines[i])), None)
        assert found is not None, (pattern, lines[at:])
        at = found + 1
    assert "TF32 on" not in text  # a CUDA setting, not claimed on a CPU
    for line in lines:
        if "ratio" in line:
            assert float(re.search(r"ratio ([\d.]+)", line).group(1)) > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a usable GPU")
def test_without_usable_cuda_it_stops_saying_why_and_measures_nothing(tmp_path):
    results = tmp_path / "RESULTS.md"
    result = gpu_check(results=results)
    assert result.returncode == 2
    why = ("this torch has no CUDA (a CPU build" if torch.version.cuda is None else
           "no GPU is visible to it (check nvidia-smi above, the driver, and CUDA_VISIBLE_DEVICES)")
    assert f"CUDA is not usable: {why}" in result.stdout
    assert "--device cpu runs the same paths on the CPU" in result.stdout
    text = results.read_text()
    assert "CUDA is not usable" in text and "images/s" not in text
