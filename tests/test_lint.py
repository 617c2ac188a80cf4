"""The project's lint and format rules (pyproject's [tool.ruff]) hold for every Python file in the repository."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _ruff(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if exe is None:
        pytest.fail("ruff is not installed (it is in the test extra: pip install -e '.[test]')")
    return subprocess.run([exe, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_check_passes():
    run = _ruff("check", "--no-cache", ".")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]


def test_ruff_format_leaves_every_file_as_it_is():
    run = _ruff("format", "--check", "--no-cache", ".")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]


# a guard against accidents, not a target: a module ends where its job ends (docs/architecture.md)
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 800, 120


def test_every_module_and_function_reads_in_a_sitting():
    """No module in studio/ over 800 lines, no function over 120 (as formatted): far past where a job ends."""
    import ast

    too_long = []
    for path in sorted((ROOT / "studio").rglob("*.py")):
        text = path.read_text()
        name = path.relative_to(ROOT)
        if len(text.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}:{node.lineno} {node.name}: {lines} lines")
    assert not too_long, too_long
