"""``mcpwall check``, ``explain``, ``schema`` and ``hash-token``.

All four are in :data:`COMMANDS`; :mod:`firewall.cli` names each by module.
Each command prints text for people and, with ``--json``, one JSON document
for programs. Exit codes are in each command's ``--help``.
"""

from __future__ import annotations

import json
import sys
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click
import msgspec
from tabulate import tabulate

from firewall.config import ConfigError, load_config
from firewall.identity import IdentityError, TokenTable, hash_token, new_token
from firewall.policy.compiler import CompiledPolicy, compile_policies
from firewall.policy.convert import convert as convert_document
from firewall.policy.decision import ALLOW, Caller
from firewall.policy.engine import Engine
from firewall.policy.foreign import FORMATS
from firewall.policy.lint import Finding, lint
from firewall.policy.schema import (
    Counter,
    LoadedPolicy,
    PolicyError,
    TargetEntry,
    ToolEntry,
    join_key,
    json_schema,
    load_policy,
    read_document,
)
from firewall.protocol import mcp

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_REFUSED = 3


def _echo_json(obj: Any) -> None:
    click.echo(msgspec.json.format(msgspec.json.encode(obj), indent=2).decode())


def _load_all(paths: tuple[Path, ...]) -> list[LoadedPolicy]:
    return [load_policy(p) for p in paths]


def _read_tools(path: Path) -> list[dict[str, Any]]:
    """A tools/list result, a JSON-RPC response holding one, or a bare array of tools."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise click.BadParameter(f"{path}: {exc}", param_hint="--tools") from None
    if isinstance(data, dict) and isinstance(data.get("result"), dict):
        data = data["result"]
    if isinstance(data, dict):
        data = data.get("tools")
    if not isinstance(data, list) or not all(isinstance(t, dict) for t in data):
        raise click.BadParameter(
            f"{path}: expected a tools/list result ({{\"tools\": [...]}}) or an array of tools",
            param_hint="--tools")
    return data


@click.command("check")
@click.argument("policies", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tools", "tools_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A tools/list JSON of the server the policy is for: lint names and arguments.")
@click.option("--strict", is_flag=True, help="Exit 1 on warnings too.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def check(policies: tuple[Path, ...], tools_path: Path | None, strict: bool,
          as_json: bool) -> None:
    """Validate policy files (or a gateway config) and lint them.

    Several files are checked together, as they would apply to one server.
    Each counter the files declare is listed (an Intercept file's
    ``rate_limit`` and ``state`` blocks as mcpwall reads them).
    Given a gateway config (a TOML file with [servers], [policy]...), every
    policy file it names is checked, each server's with the fleet-wide ones,
    and so are its [[auth.tokens]].

    \b
    Examples:
        mcpwall check rules/virtualization.json --tools virtualization.tools.json
        mcpwall check mcpwall.toml

    \b
    Exit codes:
        0  valid (warnings are printed but do not fail without --strict)
        1  invalid (the error names file, key path and expectation),
           or warnings with --strict
        2  usage error (bad option, unreadable --tools file)
    """
    tools = _read_tools(tools_path) if tools_path else None
    try:
        if len(policies) == 1 and _is_gateway_config(policies[0]):
            loaded, compiled, findings = _check_config(policies[0], tools)
        else:
            loaded = _load_all(policies)
            compiled = compile_policies(loaded)
            findings = lint(loaded, tools)
    except (PolicyError, ConfigError, IdentityError) as exc:
        if as_json:
            _echo_json({"valid": False, "error": str(exc), "findings": []})
        else:
            click.echo(f"invalid: {exc}", err=True)
        sys.exit(EXIT_INVALID)
    warnings = [f for f in findings if f.level != "info"]
    counters = _counters_of(loaded)
    if as_json:
        _echo_json({"valid": True, "files": compiled.digests, "findings": findings,
                    "formats": {f.source: f.format for f in loaded},
                    "counters": counters,
                    "rules": {k: len(compiled.fleet.index(k)) for k in
                              ("tools", "prompts", "resources", "methods")}})
    else:
        for f in findings:
            click.echo(f"{f.level}: {f.where}: {f.message}")
        for c in counters:
            adds = (f"adds {c['increment_from']}" if c["increment_from"]
                    else f"adds {c['increment']}")
            bound = "no max" if c["max"] is None else f"max {c['max']}"
            click.echo(f"counter: {c['where']}: {c['counter']} ({bound} per {c['window']}, "
                       f"scope {c['scope']}, {adds}){': ' + c['reason'] if c['reason'] else ''}")
        counts = ", ".join(f"{len(compiled.fleet.index(k))} {k}"
                           for k in ("tools", "prompts", "resources", "methods"))
        formats = ", ".join(sorted({f.format for f in loaded}))
        click.echo(f"ok: {len(loaded)} file(s) ({formats} format), entries: {counts}; "
                   f"{len(warnings)} warning(s)")
    sys.exit(EXIT_INVALID if strict and warnings else EXIT_OK)


def _counters_of(loaded: Sequence[LoadedPolicy]) -> list[dict[str, Any]]:
    """Every counter the files declare, where (an Intercept file's ``rate_limit``
    and ``state`` blocks included, as mcpwall reads them)."""
    out: list[dict[str, Any]] = []

    def add(counters: Sequence[Counter], where: str) -> None:
        for i, c in enumerate(counters):
            out.append({"where": f"{where}.counters[{i}]", "counter": c.counter,
                        "window": c.window, "scope": c.scope, "max": c.max,
                        "increment": c.increment, "increment_from": c.increment_from,
                        "reason": c.reason})

    for f in loaded:
        policy = f.policy
        if policy.all_tools is not None:
            add(policy.all_tools.counters, f"{f.source}: all_tools")
        for kind in ("tools", "prompts", "resources", "methods"):
            table: Mapping[str, ToolEntry | TargetEntry] = getattr(policy, kind)
            for key, entry in table.items():
                where = f"{f.source}: {join_key(kind, key)}"
                add(entry.counters, where)
                if isinstance(entry, ToolEntry):
                    for j, rule in enumerate(entry.rules):
                        add(rule.counters, f"{where}.rules[{j}]")
    return out


_CONFIG_KEYS = frozenset({"servers", "listen", "policy", "auth", "audit", "log"})


def _is_gateway_config(path: Path) -> bool:
    """A TOML file with the gateway config's sections, rather than a policy."""
    if path.suffix.lower() != ".toml":
        return False
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(_CONFIG_KEYS.intersection(data))


def _check_config(path: Path, tools: list[dict[str, Any]] | None
                  ) -> tuple[list[LoadedPolicy], CompiledPolicy, list[Finding]]:
    """Check a gateway config: its tokens, and every policy file it names, each
    server's files together with the fleet-wide ones."""
    config = load_config(path)
    TokenTable(config.auth.tokens)
    fleet = _load_all(tuple(Path(p) for p in config.policy.files))
    own = {name: _load_all(tuple(Path(p) for p in server.policy))
           for name, server in config.servers.items() if server.policy}
    if tools is not None and len(config.servers) > 1:
        raise click.UsageError("--tools lints one server's policies: give the policy files, "
                               "not a config of several servers")
    compiled = compile_policies(fleet, own)
    findings = lint(fleet, tools) if not own else []
    for files in own.values():
        findings.extend(f for f in lint([*files, *fleet], tools) if f not in findings)
    loaded = list(compiled.files)
    return loaded, compiled, findings


def _parse_args(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--args") from None
    if not isinstance(value, dict):
        raise click.BadParameter("expected a JSON object", param_hint="--args")
    return value


@click.command("explain")
@click.argument("policies", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tool", help="A tools/call of this tool.")
@click.option("--uri", help="A resources/read of this URI.")
@click.option("--prompt", help="A prompts/get of this prompt.")
@click.option("--method", help="Any other method, e.g. sampling/createMessage.")
@click.option("--args", "args_json", default="{}", show_default=True,
              help="The call's arguments, a JSON object.")
@click.option("--principal", default="anonymous", show_default=True)
@click.option("--grant", default=None, help="The grant id (default: the principal).")
@click.option("--group", "groups", multiple=True, help="A group of the caller; repeatable.")
@click.option("--server", default="default", show_default=True,
              help="The server name (with --server-policy).")
@click.option("--server-policy", "server_policies", multiple=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A policy file of --server only (the POLICIES are fleet-wide); repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def explain(policies: tuple[Path, ...], tool: str | None, uri: str | None, prompt: str | None,
            method: str | None, args_json: str, principal: str, grant: str | None,
            groups: tuple[str, ...], server: str, server_policies: tuple[Path, ...],
            as_json: bool) -> None:
    """Show the decision on one call and the trace of rules tried.

    Rate limits are shown as they stand for a fresh process: nothing is debited.

    \b
    Example:
        mcpwall explain rules/virtualization.json --tool vm_management \\
            --args '{"action": "delete", "vm_name": "ci-7"}' --principal ci-bot

    \b
    Exit codes:
        0  the call would be allowed
        1  a policy file is invalid
        2  usage error (no target, bad --args)
        3  the call would be refused (deny, approval, rate limit, bad arguments)
    """
    if sum(x is not None for x in (tool, uri, prompt, method)) != 1:
        raise click.UsageError("give exactly one of --tool, --uri, --prompt, --method")
    args = _parse_args(args_json)
    if tool is not None:
        call = mcp.Call(mcp.TOOLS_CALL, tool=tool, arguments=args)
    elif uri is not None:
        call = mcp.Call(mcp.RESOURCES_READ, uri=uri)
    elif prompt is not None:
        call = mcp.Call(mcp.PROMPTS_GET, prompt=prompt, arguments=args)
    else:
        assert method is not None
        direction = "server" if method in mcp.SERVER_REQUESTS else "client"
        call = mcp.Call(method, direction)
    caller = Caller(principal, grant or principal, groups)
    try:
        compiled = compile_policies(
            _load_all(policies),
            {server: _load_all(server_policies)} if server_policies else None)
    except PolicyError as exc:
        click.echo(f"invalid: {exc}", err=True)
        sys.exit(EXIT_INVALID)
    result = Engine(compiled).explain(call, caller, server)
    foreign = [f"{f.source} is in {f.format}'s format" for f in compiled.files
               if f.format != "mcpwall"]
    if foreign:
        result = msgspec.structs.replace(result, trace=[*foreign, *result.trace])
    if as_json:
        _echo_json(result)
    else:
        for i, step in enumerate(result.trace, 1):
            click.echo(f"{i:>3}. {step}")
        d = result.decision
        rows = [["action", d.action], ["rule", d.rule], ["reason", d.reason or ""]]
        if d.retry_after is not None:
            rows.append(["retry_after", f"{d.retry_after:g} s"])
        if d.dry_run:
            rows.append(["dry_run", "yes: recorded, not enforced"])
        click.echo(tabulate(rows, tablefmt="plain"))
    sys.exit(EXIT_OK if result.decision.action == ALLOW else EXIT_REFUSED)


@click.command("schema")
def schema() -> None:
    """Print the JSON Schema of policy files, for editor completion.

    \b
    Example:
        mcpwall schema > policy.schema.json
        # then in a policy: {"$schema": "./policy.schema.json", ...}

    \b
    Exit codes:
        0  always
    """
    _echo_json(json_schema())


@click.command("hash-token", short_help="Hash a bearer token for [[auth.tokens]].")
@click.argument("token", required=False)
@click.option("--new", "generate", is_flag=True, help="Generate a fresh random token.")
@click.option("--principal", default="agent", show_default=True,
              help="The principal to put in the printed config entry.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def hash_token_command(token: str | None, generate: bool, principal: str,
                       as_json: bool) -> None:
    """Print the SHA-256 of a bearer token, as the gateway config stores it.

    Without TOKEN and --new, the token is read from standard input (so it
    stays out of shell history).

    \b
    Example:
        mcpwall hash-token --new --principal ci-bot
        printf %s "$TOKEN" | mcpwall hash-token

    \b
    Exit codes:
        0  printed
        2  usage error (both TOKEN and --new, or an empty token)
    """
    if generate and token:
        raise click.UsageError("give TOKEN or --new, not both")
    if generate:
        token = new_token()
    elif token is None:
        token = sys.stdin.read().strip()
    if not token:
        raise click.UsageError("empty token")
    digest = hash_token(token)
    if as_json:
        _echo_json({"sha256": digest, "token": token if generate else None})
        return
    if generate:
        click.echo(f"# token (give it to the agent; it is not stored anywhere): {token}")
    click.echo("[[auth.tokens]]")
    click.echo(f'sha256 = "{digest}"')
    click.echo(f"principal = {json.dumps(principal)}")


@click.command("convert", short_help="Write a policy in mcpwall, policylayer or intercept format.")
@click.argument("policy", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--to", "to", type=click.Choice(FORMATS), required=True,
              help="The format to write.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write here (default: standard output). .yaml/.yml writes YAML.")
@click.option("--yaml", "as_yaml", is_flag=True, help="Write YAML (default: JSON).")
@click.option("--allow-lossy", is_flag=True,
              help="Write even when something cannot be expressed (it is listed).")
def convert(policy: Path, to: str, output: Path | None, as_yaml: bool,
            allow_lossy: bool) -> None:
    """Write a policy in another format: mcpwall, policylayer (PolicyLayer's
    hosted policy.json) or intercept (Intercept's YAML policy).

    The input format is recognised by its shape. What the target format cannot
    express is listed on standard error, one line each; unless --allow-lossy,
    nothing is written then (a dropped rule could allow what the policy denies).

    \b
    Example:
        mcpwall convert rules/git.json --to mcpwall --yaml

    \b
    Exit codes:
        0  written; the two documents decide alike
        1  the policy is invalid, or something cannot be expressed
        2  usage error
    """
    try:
        doc = read_document(policy.read_bytes(), str(policy))
        converted, notes = convert_document(doc, to, str(policy))  # type: ignore[arg-type]
        if to == "mcpwall":
            from firewall.policy.schema import parse_policy
            parse_policy(json.dumps(converted), str(policy))  # it must load
    except (OSError, PolicyError) as exc:
        click.echo(f"invalid: {exc}", err=True)
        sys.exit(EXIT_INVALID)
    for note in notes:
        click.echo(f"cannot be expressed in {to}'s format: {note}", err=True)
    if notes and not allow_lossy:
        click.echo("nothing written (use --allow-lossy to write what can be expressed)",
                   err=True)
        sys.exit(EXIT_INVALID)
    yaml_out = as_yaml or (output is not None and output.suffix.lower() in (".yaml", ".yml"))
    if yaml_out:
        import yaml
        text = yaml.safe_dump(converted, sort_keys=False, allow_unicode=True)
    else:
        text = json.dumps(converted, indent=2, ensure_ascii=False) + "\n"
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
    sys.exit(EXIT_INVALID if notes else EXIT_OK)


COMMANDS: list[click.Command] = [check, explain, schema, hash_token_command, convert]

__all__ = ["COMMANDS", "Finding"]
