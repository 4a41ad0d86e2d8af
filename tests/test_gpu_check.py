"""bench/gpu_check.py, the check a lent GPU runs first: on the CPU at tiny sizes (the same
code paths), every line in the results file as it is measured, and a clear stop where CUDA
is not usable."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import types
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
    expected = [r"^torch .* built for CUDA", r"^time budget 420 s \(--budget-s\)",
                r"^mobilenet_unet 64 px, batch 2, plain loop, 32-true: [\d.]+ images/s",
                r"px 32-true \+ channels-last vs 32-true: ours", r"px 16-mixed vs 32-true: ours .* ratio",
                r"16-mixed \+ channels-last vs 32-true: ours .* ratio", r"px bf16-mixed vs 32-true",
                r"bf16-mixed \+ channels-last vs 32-true",
                r"Lightning Trainer vs the plain loop: ours .* ratio [\d.]+ \(target >= 0.95 [✓✗]\)",
                r"^mobilenet_unet 64 px .*: Airbus datamodule \(0 workers, augmentations\) vs the same batches on the device: ours",
                r"^sliding window 192x192, tile 128, overlap 32, 4 windows, .*: Predictor vs the bare forward .* ratio",
                r"^demo: segkit-train model=mobilenet_unet at 64 px for 10 s \(.*\): \d+ epochs?, [1-9]\d* steps of batch 2",
                r"^  demo (training images/s over the whole run .* ratio|rate: not compared, \d+ steps are too few)",
                r"^largest batch: skipped off CUDA", r"^gpu_check done in \d+ s"]
    at = 0
    for pattern in expected:  # in this order, each once measured
        found = next((i for i in range(at, len(lines)) if re.search(pattern, lines[i])), None)
        assert found is not None, (pattern, lines[at:])
        at = found + 1
    assert "TF32 on" not in text  # a CUDA setting, not claimed on a CPU
    ratios = [float(m.group(1)) for line in lines if (m := re.search(r", ratio ([\d.]+)", line))]
    assert len(ratios) >= 7 and all(r > 0 for r in ratios)


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


@pytest.mark.parametrize(("args", "message"), [
    (["--budget-s", "0"], "the budget must be a positive number of seconds"),
    (["--budget-s", "nan"], "the budget must be a positive number of seconds"),
    (["--budget-s", "abc"], "'abc' is not a number of seconds"),
    (["--workers", "-1"], "'-1': give a number of loader workers, 0 or more"),
    (["--device", "gpu"], "'gpu': give cuda, cuda:N or cpu"),
    (["--device", "mps"], "'mps': give cuda, cuda:N or cpu"),
    (["--skip"], "expected at least one argument"),
])
def test_bad_arguments_stop_before_anything_runs(args, message, capsys):
    from bench.gpu_check import main

    with pytest.raises(SystemExit) as stopped:
        main(args)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("usage: python -m bench.gpu_check")


def test_a_results_file_that_cannot_be_written_stops_first(tmp_path, capsys):
    """Refused at once (exit 2, naming the file), before the CUDA check and any measuring."""
    import os

    from bench.gpu_check import main

    targets = [tmp_path / "a-folder-not-a-file"]
    targets[0].mkdir()
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if not os.access(locked, os.W_OK):  # root writes into read-only folders: only the folder case then
        targets.append(locked / "R.md")
    try:
        for target in targets:
            with pytest.raises(SystemExit) as stopped:
                main(["--device", "cuda", "--results", str(target)])
            assert stopped.value.code == 2
            assert f"--results {target}: cannot write there" in capsys.readouterr().err
    finally:
        locked.chmod(0o755)


def test_the_recorded_command_can_be_run_again(monkeypatch):
    from bench.common import HERE, command

    monkeypatch.setattr(sys, "argv", [str(HERE / "gpu_check.py"), "--device", "cpu", "--quick"])
    assert command() == "python -m bench.gpu_check --device cpu --quick"



def test_the_budget_is_checked_before_every_line_not_only_every_section(monkeypatch):
    """A precision section can take many minutes on a GPU (each mode autotunes its first
    steps): once the budget is spent, each further line says it was skipped instead of
    running on into the device call's timeout."""
    import bench.gpu_check as check

    def slow_rate(*args, **kwargs):
        time.sleep(0.05)  # the baseline line alone outlasts the budget below
        return 100.0, None

    monkeypatch.setattr(check, "plain_rate", slow_rate)
    monkeypatch.setattr(check, "trainer_rate", lambda *a, **k: pytest.fail("the Trainer line ran past the budget"))
    lines = []
    report = types.SimpleNamespace(line=lines.append, compare=lambda *a, **k: lines.append("compared"))
    chosen = check.precisions(report, torch.device("cpu"), check.QUICK, False, time.perf_counter() + 0.02)
    assert chosen == {}
    assert lines == ["mobilenet_unet 64 px, batch 2, plain loop, 32-true: 100.0 images/s",
                     *(f"  {check.label(mode, torch.device('cpu'))}: skipped, the time budget (--budget-s) is spent"
                       for mode in check.QUICK.modes),
                     "  mobilenet_unet 64 px Lightning Trainer: skipped, the time budget (--budget-s) is spent"]


def test_a_spent_budget_skips_the_later_sections_and_still_ends_with_done(tmp_path):
    results = tmp_path / "RESULTS.md"
    result = gpu_check("--device", "cpu", "--quick", "--workers", "0", "--budget-s", "0.01", results=results)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line[4:] for line in results.read_text().splitlines() if line.startswith("    ")]
    for section in ("loader", "window", "demo", "memory"):
        assert f"{section}: skipped, the time budget (--budget-s) is spent" in lines
    assert not any(re.search(r"ratio [\d.]+", line) for line in lines)  # nothing measured
    assert re.fullmatch(r"gpu_check done in \d+ s", lines[-1])
