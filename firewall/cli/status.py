"""``mcpwall status``: the instances running here, and what their audit trails say.

Each ``serve`` and ``wrap`` keeps an entry in the registry of running
instances (:mod:`firewall.gateway.operator.instances`) while it runs. For each
one, and for audit files named with ``--audit`` (or ``--config``'s
``[audit] path``), the activity of the last ``--since``: calls, denials and
the denial rate, rate limits, errors, the rules that refused most and the
latest refusals. The numbers are those of ``mcpwall audit stats`` and
``audit query`` (:mod:`firewall.audit.query`), for the rows that instance
wrote.

Exit codes: 0 something to report; 1 no instance running (and no --audit or
--config), or an audit file named with --audit could not be read; 2 usage
error.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Final

import click
import msgspec
from tabulate import tabulate

from firewall.audit.escaping import json_text, visible
from firewall.audit.query import Filters, QueryError, Sources, calls, format_ts, stats
from firewall.audit.store import REFUSALS, StoreError
from firewall.cli import CONTEXT
from firewall.cli.audit import TIME
from firewall.config import ConfigError, load_config
from firewall.gateway.operator.instances import (
    ENV,
    Instance,
    RegistryError,
    registry_dir,
    running,
)

_json = msgspec.json.Encoder()
# Refusals in the "recent" list: the policy's, the argument checks', a person's
# and the rate limits'.
_REFUSED: Final = [*REFUSALS, "limited"]
_RECENT_FIELDS: Final = ("ts", "principal", "server", "target", "decision", "rule", "reason")
# One bucket for the whole window: stats' over-time section sums it up.
_WHOLE: Final = 10**9


def activity(files: list[Path], since_ns: int, *, instance: str | None = None,
             top: int = 3, recent: int = 5) -> dict[str, Any]:
    """Calls, denials, denial rate, top refusing rules and recent refusals since
    ``since_ns`` in ``files`` (only the rows of ``instance`` when given).

    Raises StoreError (a file cannot be read) or QueryError.
    """
    filters = Filters(since_ns=since_ns, instance=instance)
    with Sources.open(files) as src:
        sections = stats(src, filters, top=top, bucket_seconds=_WHOLE)
        refused = list(calls(src, msgspec.structs.replace(
            filters, decision=_REFUSED, limit=recent), latest=True))
    totals = {k: sum(r[k] for r in sections["over_time"])
              for k in ("calls", "allowed", "denials", "rate_limited", "errors")}
    return {
        **totals,
        "denial_rate": round(totals["denials"] / totals["calls"], 4) if totals["calls"] else 0.0,
        "top_rules": [{"rule": r["name"], "refusals": r["calls"]} for r in sections["rules"]],
        "recent_refusals": [
            {"ts": r["ts"], "principal": r["principal"], "server": r["server"],
             "target": r.get("tool") or r.get("uri") or r.get("prompt") or r["method"],
             "decision": r["decision"], "rule": r["rule"], "reason": r["reason"]}
            for r in reversed(refused)],  # newest first
    }


def _report(files: list[Path], since_ns: int, instance: str | None, top: int,
            recent: int) -> dict[str, Any] | None:
    """The activity, or an ``error`` entry for a trail that cannot be read now."""
    if not files or not files[0].exists():
        return None  # not written yet (or no audit trail)
    try:
        return activity(files, since_ns, instance=instance, top=top, recent=recent)
    except (StoreError, QueryError) as exc:
        return {"error": str(exc)}


@click.command("status", context_settings=CONTEXT,
               short_help="Running instances, calls, denial rate, top refusing rules.")
@click.option("--registry", "registry", type=click.Path(file_okay=False, path_type=Path),
              envvar=ENV, default=None,
              help=f"Registry of running instances (default: ${ENV}, else "
                   "$XDG_RUNTIME_DIR/mcpwall, else mcpwall-UID in the temporary directory).")
@click.option("--audit", "audit_files", multiple=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Also report on this audit file (repeatable), running or not.")
@click.option("--config", "config_path", default=None,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Also report on this gateway config's [audit] path.")
@click.option("--since", type=TIME, default="1h", show_default=True,
              help="The window: ISO 8601, or an age (15m, 2h, 7d).")
@click.option("--top", type=click.IntRange(min=1), default=3, show_default=True,
              help="Refusing rules to list.")
@click.option("--recent", type=click.IntRange(min=0), default=5, show_default=True,
              help="Latest refusals to list.")
@click.option("--nl", "fmt", flag_value="nl", help="One JSON object per instance or file.")
@click.option("--json", "fmt", flag_value="json", help="One JSON document.")
@click.option("--table", "fmt", flag_value="table", default=True,
              help="Text for people (default).")
def status(registry: Path | None, audit_files: tuple[Path, ...], config_path: Path | None,
           since: int, top: int, recent: int, fmt: str) -> None:
    """The mcpwall instances running here and their activity since --since.

    Per instance: what it is (serve or wrap, pid, uptime, addresses, servers,
    audit file) and, from its audit trail, calls, denials and the denial
    rate, rate limits, errors, the rules that refused most and the latest
    refusals.

    \b
    Examples:
        mcpwall status
        mcpwall status --since 24h --json
        mcpwall status --audit mcpwall-audit.db --recent 10
    \b
    Exit codes: 0 something to report; 1 no instance running (and no --audit
    or --config), or an --audit file could not be read; 2 usage error.
    """
    try:
        found = running(registry_dir(registry))
    except RegistryError as exc:
        raise click.UsageError(f"registry: {exc}") from None
    now = time.time_ns()
    instances = [{**msgspec.to_builtins(entry),
                  "uptime_seconds": round((now - entry.started_ns) / 1e9, 1),
                  "activity": _report([Path(entry.audit)] if entry.audit else [], since,
                                      entry.instance, top, recent)}
                 for entry in found]
    files = list(audit_files)
    if config_path is not None:
        try:
            files.append(Path(load_config(config_path).audit.path))
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from None
    audits = [{"file": str(f), "activity": _report([f], since, None, top, recent)}
              for f in files]
    doc = {"since": format_ts(since), "instances": instances, "audits": audits}
    if fmt == "json":
        click.echo(json_text(_json.encode(doc)))
    elif fmt == "nl":
        for item in [*instances, *audits]:
            click.echo(json_text(_json.encode(item)))
    else:
        _print(doc, found)
    if any(a["activity"] is None or "error" in a["activity"] for a in audits):
        sys.exit(1)  # an --audit file said nothing (a --config path not written yet too)
    if not instances and not audits:
        click.echo("no mcpwall instance is running here (registry: "
                   f"{registry_dir(registry)})", err=True)
        sys.exit(1)


def _print(doc: dict[str, Any], found: list[Instance]) -> None:
    for item, entry in zip(doc["instances"], found, strict=True):
        where = ", ".join(entry.listen) or entry.upstream or ""
        click.echo(visible(f"{entry.kind} pid {entry.pid}, up {_age(item['uptime_seconds'])}"
                           f", {where}"))
        if entry.operator:
            click.echo(visible(f"  operator API: {', '.join(entry.operator)}"))
        if entry.servers:
            click.echo(visible(f"  servers: {', '.join(entry.servers)}"))
        click.echo(visible(f"  audit: {entry.audit or '(none)'}"))
        _print_activity(item["activity"], doc["since"])
    for item in doc["audits"]:
        click.echo(visible(f"audit file {item['file']}"))
        _print_activity(item["activity"], doc["since"])


def _print_activity(act: dict[str, Any] | None, since: str) -> None:
    if act is None:
        click.echo("  no audit trail (yet)")
        return
    if "error" in act:
        click.echo(visible(f"  audit trail unreadable: {act['error']}"))
        return
    click.echo(f"  since {since}: {act['calls']} calls, {act['denials']} denied "
               f"({act['denial_rate']:.1%}), {act['rate_limited']} rate-limited, "
               f"{act['errors']} errors")
    if act["top_rules"]:
        click.echo("  top refusing rules: " + visible(", ".join(
            f"{r['rule']} ({r['refusals']})" for r in act["top_rules"])))
    if act["recent_refusals"]:
        rows = [[visible(str(r[c] if r[c] is not None else ""))[:60] for c in _RECENT_FIELDS]
                for r in act["recent_refusals"]]
        for line in tabulate(rows, headers=list(_RECENT_FIELDS), tablefmt="simple").splitlines():
            click.echo("    " + line)
    click.echo("")


def _age(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d"


__all__ = ["activity", "status"]
