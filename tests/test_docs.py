"""The documentation tells the truth: every command and flag is in the CLI page's usage lines (docs/cli.md)."""

from __future__ import annotations

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
