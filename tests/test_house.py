"""The house's layers (docs/architecture.md), as written in pyproject's [tool.importlinter]: a module imports only
from layers below its own, siblings on one layer not from each other. import-linter reads every import,
those inside functions too; a back edge fails with both module names and the line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_layers_hold():
    exe = Path(sys.executable).with_name("lint-imports")
    run = subprocess.run([str(exe), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "Contracts: 1 kept, 0 broken." in run.stdout, run.stdout[-2000:]
