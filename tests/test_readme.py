"""The README's Quickstart, run as written on fixture data: the README and the code cannot
drift apart. Each command keeps its own words; paths that name the user's data
(``/data/airbus``, ``<run>``, ``images/``) point at fixtures, and settings the command does
not give are appended to keep it small (two batches, tiny images)."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.fixtures.airbus import write_airbus
from tests.fixtures.carvana import write_carvana
from tests.helpers import TINY_DATA, run_segkit

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block(heading: str) -> list[str]:
    """The command lines of the first ```bash block after ``heading`` (comments dropped)."""
    text = README.read_text()
    start = text.index(f"\n{heading}\n")
    block = re.search(r"```bash\n(.*?)```", text[start:], re.S).group(1)
    lines = []
    for line in block.splitlines():
        command = line.split("  #")[0].strip()
        if command.startswith("segkit-"):
            lines.append(command)
    return lines


QUICKSTART = readme_block("## Quickstart")


def test_the_quickstart_block_is_what_this_test_covers():
    apps = [c.split()[0] for c in QUICKSTART]
    assert apps.count("segkit-train") >= 8 and {"segkit-prepare", "segkit-predict", "segkit-eval", "segkit-export"} <= set(apps)


def _keys(args: list[str]) -> set[str]:
    return {a.split("=", 1)[0].lstrip("+~") for a in args if "=" in a}


def _small(args: list[str], run_dir: Path) -> list[str]:
    """Settings appended to a segkit-train command that does not give them itself."""
    keys = _keys(args)
    dataset = next((a.split("=", 1)[1] for a in args if a.startswith("dataset=")), None)
    experiment = next((a.split("=", 1)[1] for a in args if a.startswith("experiment=")), None)
    extra = ["trainer.fast_dev_run=2", "data.batch_size=2", "data.num_workers=0"]
    if dataset is None and experiment is None:
        extra += TINY_DATA
    elif "data.image_size" not in keys:
        extra.append("data.image_size=128")  # segnet's multiple; the fixtures are 64-72 px
    if "-m" in args:
        extra.append(f"hydra.sweep.dir={run_dir}")
    else:
        extra.append(f"hydra.run.dir={run_dir}")
    return [a for a in extra if a.split("=", 1)[0] not in keys]


def check_sweep(sweep: Path, args: list[str]) -> None:
    """Each job of a multirun in its own run directory with its own config; summary.csv /
    summary.md list them all, best first."""
    import csv
    import itertools
    import json

    grid = [a.split("=", 1) for a in args if "=" in a and "," in a]
    jobs = list(itertools.product(*[[f"{key}={v}" for v in values.split(",")] for key, values in grid]))
    for job, overrides in enumerate(jobs):
        metrics = json.loads((sweep / str(job) / "metrics.json").read_text())
        assert metrics["run_dir"] == str(sweep / str(job)) and (sweep / str(job) / "checkpoints" / "best.ckpt").is_file()
        config = OmegaConf.load(sweep / str(job) / "config.yaml")
        for override in overrides:
            key, value = override.split("=", 1)
            got = OmegaConf.select(config, key) if "." in key else config[key].name
            assert got == (float(value) if "." in key else value), (override, job, got)
    with (sweep / "summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    def parsed(overrides):  # Hydra writes 1e-3 back as 0.001
        pairs = (o.split("=", 1) for o in overrides)
        return tuple(sorted((k, float(v) if v.replace(".", "").replace("e-", "").isdigit() else v) for k, v in pairs))

    assert sorted(parsed(r["overrides"].split()) for r in rows) == sorted(parsed(o) for o in jobs)
    assert [float(r["best"]) for r in rows] == sorted((float(r["best"]) for r in rows), reverse=True)
    assert "Command: `segkit-train -m " in (sweep / "summary.md").read_text()  # with what the overrides leave out


@pytest.fixture(scope="module")
def user_tree(tmp_path_factory):
    """A working folder laid out as the Quickstart assumes: data of its own, images to predict."""
    work = tmp_path_factory.mktemp("quickstart")
    airbus = write_airbus(work / "data" / "airbus", n_ship=6, n_background=6)
    write_carvana(work / "data" / "carvana", n_cars=3, views=2)
    (work / "images").mkdir()
    for image in sorted((airbus.root / "train_v2").glob("*.jpg"))[:2]:
        shutil.copy(image, work / "images" / image.name)
    return work


def _prepared(command: str, n: int, work: Path, demo_run: Path | None) -> tuple[str, list[str], Path]:
    """``(app, arguments, run dir)`` of the Quickstart's ``n``-th command, pointed at the fixtures."""
    app, *args = shlex.split(command)
    args = [a.replace("/data/", f"{work}/data/") for a in args]
    args = [f"resume={demo_run}" if a.startswith("resume=") else a.replace("<run>", str(demo_run)) for a in args]
    run_dir = work / "runs" / f"{n:02d}"
    if app == "segkit-train":
        args += _small(args, run_dir)
    return app, args, run_dir


def _needs_a_run(command: str) -> bool:
    return "<run>" in command or "resume=" in command


def test_every_quickstart_command_runs_as_written(user_tree):
    """The commands that need no earlier run go two at a time (as two users' runs would:
    they share the dataset caches); then those that continue or use the demo run, in order."""
    from concurrent.futures import ThreadPoolExecutor

    work = user_tree
    demo_index = next(n for n, c in enumerate(QUICKSTART)
                      if c.startswith("segkit-train") and " -m " not in f" {c} " and "--cfg" not in c and not _needs_a_run(c))
    demo_run = work / "runs" / f"{demo_index:02d}"
    first = [n for n, c in enumerate(QUICKSTART) if not _needs_a_run(c)]
    then = [n for n, c in enumerate(QUICKSTART) if _needs_a_run(c)]

    def run(n: int):
        app, args, run_dir = _prepared(QUICKSTART[n], n, work, demo_run)
        return n, app, args, run_dir, run_segkit(app, *args, cwd=work)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(run, first))
    results += [run(n) for n in then]
    for n, app, args, run_dir, result in results:
        command = QUICKSTART[n]
        assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        if "--cfg" in args:
            assert "model:" in result.stdout and "data:" in result.stdout
        elif app == "segkit-train" and "-m" in args:
            check_sweep(run_dir, args)
    assert (demo_run / "checkpoints" / "best.ckpt").is_file()
    assert (work / "pred" / "overlays").is_dir() and len(list((work / "pred" / "masks").iterdir())) == 2
    assert (demo_run / "checkpoints" / "best.onnx").is_file()
    assert not (work / "outputs" / "prepare").exists()  # segkit-prepare leaves no run directory
