"""``mcpwall scan``: survey an MCP server, write a starter policy or check one.

The survey (handshake and lists) is :mod:`firewall.gateway.upstream.survey`;
the classification and the policy it writes, :mod:`firewall.policy.scaffold`;
the comparison with an existing policy, :mod:`firewall.policy.coverage`.
This module parses options, runs trio once, and prints.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import msgspec
import trio
import yaml
from tabulate import tabulate

from firewall.cli import CONTEXT
from firewall.gateway.upstream.survey import (
    Progress,
    Survey,
    SurveyError,
    survey_http,
    survey_stdio,
)
from firewall.log import configure
from firewall.policy.compiler import compile_policies
from firewall.policy.coverage import Coverage, coverage
from firewall.policy.scaffold import Scaffold, in_format, scaffold, to_json
from firewall.policy.schema import LoadedPolicy, PolicyError, load_policy, parse_policy_format

EXIT_OK = 0
EXIT_GAPS = 1

FORMATS = ("mcpwall", "policylayer", "intercept")


class ScanFailed(click.ClickException):
    """The server could not be scanned: exit 2, as a usage error."""

    exit_code = 2


def _echo_json(obj: Any) -> None:
    click.echo(msgspec.json.format(msgspec.json.encode(obj), indent=2).decode())


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise click.BadParameter(f"expected 'Name: value', got {text!r}", param_hint="--header")
    return name.strip(), value.strip()


def _survey(command: tuple[str, ...], upstream: str | None, headers: tuple[str, ...],
            timeout: float) -> Survey:
    if bool(command) == bool(upstream):
        raise click.UsageError("give a server: either -- COMMAND [ARGS...] or --upstream URL")
    if headers and not upstream:
        raise click.UsageError("--header goes with --upstream")
    pairs = [_header(h) for h in headers]
    where = upstream or repr(command[0])

    async def bounded() -> Survey:
        progress = Progress()
        with trio.move_on_after(timeout):
            if upstream:
                return await survey_http(upstream, pairs, progress=progress)
            return await survey_stdio(command, progress=progress)
        raise SurveyError(f"timed out after {timeout:g} s waiting for {progress.step} "
                          f"from {where}")

    try:
        return trio.run(bounded)
    except SurveyError as exc:
        raise ScanFailed(f"cannot scan: {exc}") from None


_SUFFIXES = {"mcpwall": (".yaml", ".yml", ".json"), "policylayer": (".json",),
             "intercept": (".yaml", ".yml")}


def _suffix(fmt: str, output: Path | None) -> str:
    """The file type to write (a usage error when --output names another)."""
    suffix = output.suffix.lower() if output is not None else _SUFFIXES[fmt][0]
    if suffix not in _SUFFIXES[fmt]:
        raise click.BadParameter(f"{fmt} policies are written as "
                                 f"{' or '.join(_SUFFIXES[fmt])}", param_hint="--output")
    return suffix


def _policy_text(result: Scaffold, fmt: str, output: Path | None) -> tuple[str, list[str]]:
    """The policy in the chosen format and the notes on what that format could
    not say, checked to load before anything is written."""
    suffix = _suffix(fmt, output)
    notes: list[str] = []
    if fmt == "mcpwall" and suffix == ".json":
        text = to_json(result)
    else:
        text, notes = in_format(result, fmt)
    # What we write must load and compile: a starter policy that does not is a bug here.
    source = f"scan{suffix}"
    policy, _ = parse_policy_format(text, source)
    compile_policies([LoadedPolicy(policy, source, "")])
    return text, notes


def _summary(result: Scaffold) -> list[list[str]]:
    rows = []
    for plan in result.tools:
        if plan.argument is None:
            rows.append([plan.name, plan.kind, plan.why])
        else:
            for kind, values in plan.values.items():
                shown = ", ".join(map(str, values))
                rows.append([plan.name, kind, f"{plan.argument} in [{shown}]: "
                                              f"{plan.value_why[kind]}"])
    return rows


def _against(paths: tuple[Path, ...], survey: Survey, as_json: bool) -> None:
    try:
        loaded = [load_policy(p) for p in paths]
        compile_policies(loaded)
    except PolicyError as exc:
        raise click.UsageError(str(exc)) from None
    report: Coverage = coverage(loaded, survey.tools, survey.prompts)
    if as_json:
        _echo_json({"fits": report.fits, "server": survey.server_info,
                    "default": report.default, "uncovered": report.uncovered,
                    "missing": report.missing, "findings": report.findings})
    else:
        rows = [["uncovered", f"{g.table}/{g.name}", g.detail] for g in report.uncovered]
        rows += [["missing", g.where or g.name, g.detail] for g in report.missing]
        rows += [[f.level, f.where, f.message] for f in report.findings]
        if rows:
            click.echo(tabulate(rows, headers=["gap", "where", "detail"], tablefmt="plain"))
        counts = (f"{len(report.uncovered)} uncovered, {len(report.missing)} missing, "
                  f"{len(report.findings)} other finding(s)")
        name = survey.server_info.get("name", "the server")
        click.echo(f"{'fits' if report.fits else 'gaps'}: {name}: {len(survey.tools)} tools, "
                   f"{len(survey.prompts)} prompts; {counts}")
    sys.exit(EXIT_OK if report.fits else EXIT_GAPS)


@click.command("scan", context_settings={**CONTEXT, "ignore_unknown_options": True,
                                        "allow_interspersed_args": False},
               short_help="Survey an MCP server; write a starter policy or check one.")
@click.option("--upstream", metavar="URL", help="A Streamable HTTP server to scan.")
@click.option("--header", "headers", multiple=True, metavar="'NAME: VALUE'",
              help="A header for --upstream (Authorization, say); repeatable.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="mcpwall",
              show_default=True, help="The policy format to write.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the policy here (.yaml or .json) instead of standard output.")
@click.option("--against", "against", multiple=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Check this policy against the server instead of writing one; repeatable "
                   "(files that apply together).")
@click.option("--name", "server_name", help="The policy's name (default: the server's).")
@click.option("--change-limit", type=click.IntRange(1), default=10, show_default=True,
              help="Calls a minute, per grant, each changing tool may make.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=30.0,
              show_default=True, help="Seconds the whole survey may take.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option("-v", "--verbose", is_flag=True, help="Log the server's stderr.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def scan(upstream: str | None, headers: tuple[str, ...], fmt: str, output: Path | None,
         against: tuple[Path, ...], server_name: str | None, change_limit: int,
         timeout: float, as_json: bool, verbose: bool, command: tuple[str, ...]) -> None:
    """Connect to an MCP server, list its tools, prompts and resources, and
    write a starter policy: each tool classified from its annotations, name
    and description (portmanteau tools split on their action argument), reads
    allowed, changes rate-limited, destructive, executing and unclassified
    tools held for approval, with the reason beside each. With --against,
    list the server's tools no entry covers and the entries naming tools the
    server lacks.

    The scan sends only the handshake and the list requests: it calls no tool.

    \b
    Examples:
      mcpwall scan -- mcpwall demo
      mcpwall scan -o git.yaml -- mcp-server-git --repository .
      mcpwall scan --upstream https://mcp.example.com/mcp --header 'Authorization: Bearer T'
      mcpwall scan --against rules/virtualization.json -- mcpwall demo
    \b
    Exit codes:
      0  the policy was written (with --against: it fits the server)
      1  with --against: gaps (uncovered tools or entries naming missing ones)
      2  usage error, or the server could not be scanned (command not found,
         the server exited, an HTTP error such as 401, not MCP, timed out)
    """
    configure("info" if verbose else "error", "console")
    if not against:
        _suffix(fmt, output)  # before the scan: a usage error costs no server start
    survey = _survey(command, upstream, headers, timeout)
    if against:
        _against(against, survey, as_json)
        return
    name = server_name or str(survey.server_info.get("name") or
                              (Path(command[0]).name if command else "server"))
    result = scaffold(survey.tools, survey.prompts, survey.resources, survey.templates,
                      server=name, change_limit=change_limit)
    text, notes = _policy_text(result, fmt, output)
    if not as_json:
        for note in notes:
            click.echo(f"note: {note}", err=True)
    if output is not None:
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise click.BadParameter(f"{output}: {exc.strerror}", param_hint="--output") from None
    if as_json:
        _echo_json({"server": survey.server_info, "protocol_version": survey.protocol_version,
                    "tools": result.tools, "prompts": len(survey.prompts),
                    "resources": len(survey.resources) + len(survey.templates),
                    "format": fmt, "notes": notes,
                    "policy": result.policy if fmt == "mcpwall" else yaml.safe_load(text),
                    "output": str(output) if output else None})
    elif output is not None:
        click.echo(tabulate(_summary(result), headers=["tool", "class", "why"],
                            tablefmt="plain"))
        click.echo(f"wrote {output}: {len(result.tools)} tools; check it with "
                   f"mcpwall check {output}")
    else:
        click.echo(text, nl=False)


__all__ = ["scan"]
