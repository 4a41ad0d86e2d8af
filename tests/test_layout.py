"""The house rules of DESIGN.md that code can check: library code never imports an app."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
APPS = {"segkit.cli", "segkit.train", "segkit.prepare", "segkit.predict", "segkit.evaluate", "segkit.export", "segkit.sweep"}


def library_modules() -> list[str]:
    names = []
    for path in sorted((REPO / "segkit").rglob("*.py")) + sorted((REPO / "datamodules").glob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        module = module.removesuffix(".__init__")
        if module not in APPS:
            names.append(module)
    return names


def test_no_library_module_imports_an_app():
    modules = library_modules()
    assert "segkit.recipes" in modules and "segkit.stage" in modules and "segkit.predictor" in modules
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted(set(sys.modules) & set({sorted(APPS)!r}))))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
