"""The documentation tells the truth: every command and flag is in the CLI page's usage lines (docs/cli.md), the
README's commands and demo output are real, and the docs site (mkdocs.yml, docs/) builds without a warning."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import REPO

from studio.cli import commands as cli
from studio.cli import flags as cli_flags

COMMANDS = sorted(cli_flags.build_parser()._subparsers._group_actions[0].choices)
CLI_PAGE = REPO / "docs" / "cli.md"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_and_is_in_the_docs(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    assert len(capsys.readouterr().out) > 100
    assert f"studio {command}" in CLI_PAGE.read_text()


def _usage(command: str) -> str:
    """The CLI page's usage lines of one command (the page's first code block, from `studio COMMAND`)."""
    text = CLI_PAGE.read_text()
    block = text[text.index("# CLI") :].split("```")[1]
    lines = block.strip().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"studio {command} "))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("studio ")), len(lines))
    return "\n".join(lines[start:end])


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_is_in_the_docs_usage(command):
    """Each command's flags, as argparse knows them, are listed in the CLI page's usage of that command."""
    parser = cli_flags.build_parser()._subparsers._group_actions[0].choices[command]
    flags = [o for a in parser._actions for o in a.option_strings if o.startswith("--") and o != "--help"]
    usage = _usage(command)
    assert flags and [f for f in flags if f"[{f}" not in usage and f" {f}" not in usage] == []


def test_the_docs_site_builds_without_a_warning(tmp_path):
    """`mkdocs build --strict`: a broken link or anchor, a page missing from the nav, a mkdocstrings object
    that does not resolve (a module renamed under the API reference) fails the build."""
    pytest.importorskip("mkdocs", reason="mkdocs is in the test extra: pip install -e '.[test]'")
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-6000:]
    assert "WARNING" not in output, output[-6000:]
    assert (tmp_path / "site" / "index.html").is_file() and (tmp_path / "site" / "api" / "index.html").is_file()


def _code_blocks(text: str) -> list[str]:
    return text.split("```")[1::2]


def test_the_readme_gives_the_fresh_machine_commands_ci_runs():
    """The README's two commands: one sets up and starts the app, one sets up and runs the tests, and that
    one is exactly what .ci/run runs."""
    readme = (REPO / "README.md").read_text()
    blocks = [b.removeprefix("bash\n").strip() for b in _code_blocks(readme)]
    assert "bash .ci/setup && .venv/bin/studio app" in blocks
    assert "bash .ci/setup --test && .venv/bin/python -m pytest -q" in blocks
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert ci[-2:] == ["bash .ci/setup --test", ".venv/bin/python -m pytest -q"]
    assert len(readme.splitlines()) <= 300  # the front door; everything else is in docs/


def test_the_readme_links_point_at_files():
    readme = (REPO / "README.md").read_text()
    targets = [t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", readme) if "://" not in t]
    assert targets and [t for t in targets if t and not (REPO / t).exists()] == []


def _shape(line: str) -> str:
    """A summary line with its numbers and paths replaced, spaces collapsed: what a rerun keeps."""
    line = " ".join("PATH" if "/" in word and not word.startswith("(") else word for word in line.split())
    return re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "N", line)


def test_the_readme_demo_output_is_real(tmp_path):
    """The README's ten CLI lines are what `studio convert --demo` prints today (numbers and paths aside)."""
    block = next(b for b in _code_blocks((REPO / "README.md").read_text()) if "$ studio convert --demo" in b)
    shown = [line for line in block.strip().splitlines()[1:] if line != "..."]
    run = subprocess.run(
        [sys.executable, "-m", "studio", "convert", "--demo", "--out", str(tmp_path / "demo-out")]
        + ["--latency-budget", "0.2"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    real = {_shape(line) for line in run.stdout.splitlines()}
    assert len(shown) >= 9 and [line for line in shown if _shape(line) not in real] == []
