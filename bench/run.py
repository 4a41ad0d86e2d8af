"""Run every ``bench/bench_*.py`` in turn, each in its own process (each prints its ratios
against a baseline and appends them, with the machine, to ``bench/RESULTS.md``)."""

import subprocess
import sys
import time
from pathlib import Path

here = Path(__file__).resolve().parent
failed = []
started = time.perf_counter()
for script in sorted(here.glob("bench_*.py")):
    print(f"== {script.name}", flush=True)
    result = subprocess.run([sys.executable, "-m", f"bench.{script.stem}"], cwd=here.parent)
    if result.returncode:
        failed.append(script.name)
print(f"== all benchmarks: {time.perf_counter() - started:.0f} s; results appended to {here / 'RESULTS.md'}")
if failed:
    sys.exit(f"failed: {', '.join(failed)}")
