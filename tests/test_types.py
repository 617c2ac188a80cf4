"""The type checker is clean over studio/ with pyproject's [tool.mypy] (the strictness and why are written there),
as ruff is (tests/test_lint.py). The suite's mypy keeps its own cache, .mypy_cache/suite (ignored by git through
the .gitignore mypy writes into it; a run by hand with other flags does not invalidate it), so a rerun after a
small change takes seconds; a cold run about 50 s on two idle cores."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_finds_no_errors_in_studio():
    pytest.importorskip("mypy", reason="mypy is in the test extra: pip install -e '.[test]'")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--cache-dir",
            str(ROOT / ".mypy_cache" / "suite"),
            "--no-error-summary",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    errors = [line for line in run.stdout.splitlines() if ": error:" in line]
    assert run.returncode == 0 and not errors, "\n".join(run.stdout.splitlines()[-200:]) + run.stderr[-2000:]
    # the config really was read: its files = ["studio"] is what makes mypy check anything with no path given
    assert "unused section" not in run.stdout + run.stderr, run.stdout + run.stderr
