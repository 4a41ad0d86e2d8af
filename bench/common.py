"""What every benchmark shares: the machine's description, one printed line per
comparison, and appending the results to ``bench/RESULTS.md``."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import resource
import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "RESULTS.md"
# the real samples: ../shared/realdata beside the repository, or $SEGKIT_REALDATA (a GPU box
# that receives only the repository gets them copied in and pointed to)
REALDATA = Path(os.environ.get("SEGKIT_REALDATA") or ROOT.parent / "shared" / "realdata")


def machine() -> str:
    """CPU model, cores, GPU (or none), Python / torch / key library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    versions = [f"Python {platform.python_version()}", f"torch {torch.__version__}"]
    for name in ("lightning", "segmentation_models_pytorch", "albumentations", "numpy", "cv2"):
        try:
            module = __import__(name)
            versions.append(f"{name} {module.__version__}")
        except (ImportError, AttributeError):
            pass
    return f"{cpu}, {os.cpu_count()} cores, {gpu}; " + ", ".join(versions)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB: ``VmHWM`` (Linux; unlike
    ``ru_maxrss`` it is not inherited from the parent across fork + exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class Report:
    """Comparison lines of one benchmark; printed as they come, appended to RESULTS.md at the
    end — or, ``live``, each line as soon as it is measured (indented, so a run cut off
    mid-way leaves valid markdown holding what it measured)."""

    title: str
    rows: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    markdown: list[str] = field(default_factory=list)  # written as is after the lines (tables)
    live: bool = False
    results: Path | None = RESULTS  # None: print only
    _opened: bool = False

    def _header(self) -> list[str]:
        stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
        return [f"\n### {self.title} — {stamp}", "", f"Machine: {machine()}.", f"Command: `{command()}`", ""]

    def _row(self, text: str) -> None:
        print(text, flush=True)
        self.rows.append(text)
        if not self.live or os.environ.get("SEGKIT_BENCH_NO_SAVE") or self.results is None:
            return
        lines = [] if self._opened else self._header()
        self._opened = True
        with self.results.open("a") as f:
            f.write("\n".join([*lines, *("    " + part for part in text.splitlines())]) + "\n")

    def compare(self, name: str, ours: float, baseline: float, unit: str, target: str = "", higher_is_better: bool = True) -> float:
        """Print ``name: ours X, baseline Y, ratio Z``; the ratio is > 1 when ours is better."""
        ratio = ours / baseline if higher_is_better else baseline / ours
        line = f"{name}: ours {_fmt(ours)} {unit}, baseline {_fmt(baseline)} {unit}, ratio {ratio:.2f}"
        if target:
            line += f" (target {target}{_verdict(ratio, target)})"
        self._row(line)
        return ratio

    def line(self, text: str) -> None:
        self._row(text)

    def note(self, text: str) -> None:
        print(f"  note: {text}", flush=True)
        self.notes.append(text)

    def save(self) -> None:
        if os.environ.get("SEGKIT_BENCH_NO_SAVE") or self.results is None:
            return
        if self.live:  # the lines are there already
            text = [""] if self.notes or self.markdown else []
        else:
            text = [*self._header(), "```", *self.rows, "```"]
        text += [f"- {n}" for n in self.notes]
        text += self.markdown
        if not text:
            return
        with self.results.open("a") as f:
            f.write("\n".join(text) + "\n")


def command() -> str:
    """This process's command line as one can run it again: ``python -m bench.<name> ...`` for
    a benchmark module (run as a file it could not import ``bench``)."""
    script = Path(sys.argv[0])
    if script.suffix == ".py" and script.resolve().parent == HERE:
        return " ".join(["python -m bench." + script.stem, *sys.argv[1:]])
    return " ".join(sys.argv)


def _verdict(ratio: float, target: str) -> str:
    """`` ✓`` / `` ✗`` for a target of the form ``>= x`` or ``<= x``; ``""`` for any other text."""
    parts = target.split()
    if len(parts) != 2 or parts[0] not in (">=", "<="):
        return ""
    try:
        bound = float(parts[1])
    except ValueError:
        return ""
    met = ratio >= bound if parts[0] == ">=" else ratio <= bound
    return " ✓" if met else " ✗"


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.4g}"
