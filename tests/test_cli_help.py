"""Every command and subcommand documents its exit codes and shows an example.

House style point 8 (a CLI like sqlite-utils): ``--help`` of each command has
an "Exit codes:" paragraph and an example line; ``mcpwall --help`` lists every
command with a description that is not cut short.
"""

from __future__ import annotations

import re

import click
import pytest
from click.testing import CliRunner

from firewall.cli import main


def _commands() -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = []

    def walk(group: click.Group, path: tuple[str, ...]) -> None:
        ctx = click.Context(group)
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            assert command is not None, name
            found.append((*path, name))
            if isinstance(command, click.Group):
                walk(command, (*path, name))

    walk(main, ())
    return found


COMMANDS = _commands()


def test_walk_finds_the_subcommands() -> None:
    assert ("audit", "query") in COMMANDS and ("kill-switch", "status") in COMMANDS
    assert ("approvals", "approve") in COMMANDS and ("wrap",) in COMMANDS


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_help_has_exit_codes_and_an_example(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Exit codes:" in result.output, result.output
    assert "Example" in result.output or re.search(r"^\s+mcpwall ", result.output, re.M), \
        result.output


def test_top_level_help_lists_every_command_untruncated() -> None:
    result = CliRunner().invoke(main, ["--help"], terminal_width=80)
    assert result.exit_code == 0
    assert "Exit codes:" in result.output
    listed = result.output.split("Commands:")[1]
    for name in {path[0] for path in COMMANDS}:
        line = next(x for x in listed.splitlines() if x.strip().startswith(name + " "))
        assert not line.rstrip().endswith("..."), line
