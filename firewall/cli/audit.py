"""``mcpwall audit ...``: the forensic command line.

Every command takes one or more audit files (a file brings its later segment
files ``NAME.000002.db``...; a directory brings every ``*.db`` in it) and
merges them in time order. Without files, the ``[audit] path`` of
``--config FILE`` is read, else ``mcpwall-audit.db`` in the working directory
(where ``mcpwall serve`` without a config writes it). Output: a table for
people (the default), ``--json`` (one JSON document), ``--nl`` (one JSON
object a line) or ``--csv`` for programs.

What an agent sent never acts on the reader: a table shows control, bidi and
separator characters as visible escapes (``\\x1b``, ``\\u202e``), a CSV cell
that a spreadsheet would evaluate gets a leading ``'`` (``--raw-csv`` opts
out), a CEF record is one line. ``--json``, ``--nl`` and ``export --format
jsonl`` carry every value exactly.

Exit codes: 0 success; 1 an audit file could not be read, or (``verify``)
tampering was found; 2 usage error (bad option or value).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Final

import click
import msgspec
from tabulate import tabulate

from firewall.audit import export as export_fmt
from firewall.audit.escaping import json_text, visible
from firewall.audit.query import (
    STAT_COLUMNS,
    Filters,
    QueryError,
    Record,
    Sources,
    calls,
    events,
    last_seqs,
    parse_time,
    stats,
    timeline,
)
from firewall.audit.store import StoreError, expand_paths
from firewall.audit.verify import ChainReport, count_rows, verify_paths
from firewall.config import ConfigError, load_config
from firewall.settings.audit import AuditSettings

_json = msgspec.json.Encoder()

CALL_COLUMNS: Final = ("ts", "instance", "session", "principal", "grant", "server", "target",
                       "decision", "rule", "status", "latency_ms")
TIMELINE_COLUMNS: Final = ("ts", "kind", "server", "target", "arguments", "decision", "rule",
                           "status", "latency_ms")
TAIL_COLUMNS: Final = ("ts", "instance", "kind", "session", "principal", "server", "target",
                       "decision", "rule", "status")
_MAX_CELL = 60

DECISIONS: Final = ("allow", "deny", "limited", "pending", "approved", "rejected",
                    "invalid_arguments")
STATUSES: Final = ("ok", "tool_error", "jsonrpc_error", "timeout", "upstream_failure",
                   "cancelled", "none")


class _Time(click.ParamType):  # type: ignore[type-arg]
    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_time(str(value))
        except QueryError as exc:
            self.fail(str(exc), param, ctx)


TIME: Final = _Time()


def _files_arg(f: Any) -> Any:
    """FILES... (optional) and ``--config``: see :func:`_files`."""
    f = click.option("--config", "config_path", default=None,
                     type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="Without FILES: read this gateway config's [audit] path.")(f)
    return click.argument("files", nargs=-1, required=False,
                          type=click.Path(exists=True, path_type=Path))(f)


def _files(files: tuple[Path, ...], config_path: Path | None) -> tuple[Path, ...]:
    """FILES as given; else the config's [audit] path; else mcpwall-audit.db here."""
    if files:
        return files
    if config_path is not None:
        try:
            path = Path(load_config(config_path).audit.path)
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from None
    else:
        path = Path(AuditSettings().path)
    if not path.exists():
        raise click.UsageError(f"{path}: no audit database here; give FILES or --config")
    return (path,)


def _output_options(f: Any) -> Any:
    f = click.option("--raw-csv", is_flag=True,
                     help="With --csv: cells as stored, without the leading ' that keeps "
                          "spreadsheets from evaluating =, +, -, @ cells.")(f)
    f = click.option("--csv", "fmt", flag_value="csv", help="CSV with a header row.")(f)
    f = click.option("--nl", "fmt", flag_value="nl", help="One JSON object per line.")(f)
    f = click.option("--json", "fmt", flag_value="json", help="A JSON array.")(f)
    f = click.option("--table", "fmt", flag_value="table", default=True,
                     help="A table for people (default).")(f)
    return f


def _filter_options(f: Any) -> Any:
    opts = [
        click.option("--since", type=TIME,
                     help="From this time: ISO 8601, or an age (15m, 2h, 7d)."),
        click.option("--until", type=TIME, help="Before this time (same forms as --since)."),
        click.option("--principal", help="Only this principal."),
        click.option("--grant", help="Only this grant."),
        click.option("--session", help="Only this session."),
        click.option("--server", help="Only this upstream server."),
        click.option("--method", help="Only this MCP method (tools/call, resources/read, ...)."),
        click.option("--tool", help="Tool, resource URI or prompt name; a glob (delete_*)."),
        click.option("--decision", multiple=True, type=click.Choice(DECISIONS),
                     help="Only these decisions (repeatable)."),
        click.option("--outcome", multiple=True, type=click.Choice(STATUSES),
                     help="Only these outcomes (repeatable; 'none': no outcome recorded)."),
        click.option("--rule", help="Only calls decided by this rule."),
        click.option("--search", help="Full-text search in the arguments (a phrase)."),
        click.option("--limit", type=click.IntRange(min=0), default=1000, show_default=True,
                     help="At most this many rows (0: all)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _filters(kw: dict[str, Any]) -> Filters:
    return Filters(
        since_ns=kw.get("since"), until_ns=kw.get("until"), principal=kw.get("principal"),
        grant=kw.get("grant"), session=kw.get("session"), server=kw.get("server"),
        method=kw.get("method"), tool=kw.get("tool"), decision=list(kw.get("decision") or ()),
        outcome=list(kw.get("outcome") or ()), rule=kw.get("rule"), search=kw.get("search"),
        limit=kw.get("limit") or 0,
    )


def _open(files: tuple[Path, ...]) -> Sources:
    try:
        return Sources.open(files)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None


def _cell(value: Any) -> Any:
    if isinstance(value, str):
        value = visible(value)
        if len(value) > _MAX_CELL:
            return value[: _MAX_CELL - 1] + "…"
        return value
    if isinstance(value, float):
        return round(value, 3)
    return value


def _target(r: Record) -> str:
    return str(r.get("tool") or r.get("uri") or r.get("prompt") or r.get("method") or "")


def _emit(records: Iterable[Record], columns: tuple[str, ...], fmt: str,
          raw_csv: bool = False) -> int:
    """Print records; return how many. Table columns are ``columns``; JSON/CSV get all.

    Table cells go through :func:`visible`; JSON is exact; CSV cells are
    neutralised unless ``raw_csv``.
    """
    n = 0
    if fmt == "nl":
        for r in records:
            r.pop("_file", None)
            click.echo(json_text(_json.encode(r)))
            n += 1
        return n
    rows = list(records)
    for r in rows:
        r.pop("_file", None)
    n = len(rows)
    if fmt == "json":
        click.echo(json_text(_json.encode(rows)))
    elif fmt == "csv":
        cols = tuple(rows[0]) if rows else columns
        for chunk in export_fmt.csv_text(rows, cols, raw=raw_csv):
            click.echo(chunk, nl=False)
    else:
        table = [[_cell(_target(r) if c == "target" else r.get(c)) for c in columns]
                 for r in rows]
        if table:
            click.echo(tabulate(table, headers=list(columns), tablefmt="simple"))
        else:
            click.echo("(no rows)", err=True)
    return n


def _guard(run: Any) -> Any:
    try:
        return run()
    except QueryError as exc:
        raise click.UsageError(str(exc)) from None
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None


@click.group(short_help="Query, follow, export and verify the audit trail.")
def audit() -> None:
    """Query, follow, export and verify the audit trail.

    \b
    Example:
        mcpwall audit query mcpwall-audit.db --decision deny --since 1h
        mcpwall audit query --since 1h      # mcpwall-audit.db in the working directory

    \b
    Exit codes: 0 success; 1 an audit file could not be read; 2 usage error
    (bad option or value, no audit database).
    """


@audit.command()
@_files_arg
@_filter_options
@click.option("--latest", is_flag=True, help="The newest --limit calls instead of the oldest.")
@_output_options
def query(files: tuple[Path, ...], config_path: Path | None, fmt: str, latest: bool,
          raw_csv: bool, **kw: Any) -> None:
    """Calls (decision joined with outcome) matching the filters, in time order.

    \b
    Examples:
        mcpwall audit query audit.db --principal alice --since 2h
        mcpwall audit query gw1.db gw2.db --tool 'delete_*' --decision deny --json
        mcpwall audit query audit.db --search vm-prod-7 --csv > calls.csv
        mcpwall audit query --config mcpwall.toml --decision deny

    \b
    Exit codes: 0 success; 1 an audit file could not be read; 2 usage error
    (bad option or value, no audit database).
    """
    files = _files(files, config_path)
    filters = _filters(kw)
    with _open(files) as src:
        _guard(lambda: _emit(calls(src, filters, latest=latest), CALL_COLUMNS, fmt, raw_csv))


@audit.command("timeline")
@_files_arg
@click.option("--session", help="The session to follow.")
@click.option("--principal", help="Or: every session of this principal.")
@click.option("--since", type=TIME, help="From this time.")
@click.option("--until", type=TIME, help="Before this time.")
@click.option("--limit", type=click.IntRange(min=0), default=0, help="At most this many rows.")
@_output_options
def timeline_cmd(files: tuple[Path, ...], config_path: Path | None, session: str | None,
                 principal: str | None,
                 since: int | None, until: int | None, limit: int, fmt: str,
                 raw_csv: bool) -> None:
    """What one agent did, in order: calls with their outcomes, session and approval events.

    \b
    Examples:
        mcpwall audit timeline audit.db --session 5f1c...
        mcpwall audit timeline gw*.db --principal ci-bot --since 2025-06-01T03:00:00Z --json

    \b
    Exit codes: 0 success; 1 an audit file could not be read; 2 usage error
    (bad option or value, no audit database).
    """
    files = _files(files, config_path)
    if session is None and principal is None:
        raise click.UsageError("give --session or --principal")
    filters = Filters(session=session, principal=principal, since_ns=since, until_ns=until,
                      limit=limit)
    with _open(files) as src:
        _guard(lambda: _emit(timeline(src, filters), TIMELINE_COLUMNS, fmt, raw_csv))


@audit.command("stats")
@_files_arg
@_filter_options
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True,
              help="Rows per ranking.")
@click.option("--every", "every", default="1h", show_default=True,
              help="Bucket size of the over-time section: 1m, 15m, 1h, 1d.")
@_output_options
def stats_cmd(files: tuple[Path, ...], config_path: Path | None, top: int, every: str,
              fmt: str, raw_csv: bool,
              **kw: Any) -> None:
    """Top tools, principals, refusing rules, and calls/denials/errors over time.

    \b
    Examples:
        mcpwall audit stats audit.db --since 24h
        mcpwall audit stats gw1.db gw2.db --every 15m --json

    \b
    Exit codes: 0 success; 1 an audit file could not be read; 2 usage error
    (bad option or value, no audit database).
    """
    files = _files(files, config_path)
    seconds = _duration(every)
    kw["limit"] = 0
    filters = _filters(kw)
    with _open(files) as src:
        result = _guard(lambda: stats(src, filters, top=top, bucket_seconds=seconds))
    if fmt == "json":
        click.echo(json_text(_json.encode(result)))
        return
    if fmt in ("csv", "nl"):
        rows = [{"section": s, **r} for s, rs in result.items() for r in rs]
        _emit(rows, ("section", *STAT_COLUMNS), fmt, raw_csv)
        return
    titles = {"tools": "Top tools", "principals": "Top principals",
              "rules": "Refusals and rate limits by rule",
              "over_time": f"Over time (per {every})"}
    for section, rows in result.items():
        click.echo(f"\n{titles[section]}")
        _emit(rows, STAT_COLUMNS, "table")


def _duration(text: str) -> int:
    try:
        now = 10**18
        seconds = (now - parse_time(text, now)) // 1_000_000_000
    except QueryError:
        seconds = 0
    if seconds <= 0:
        raise click.BadParameter(f"{text!r}: expected a duration such as 1m, 15m, 1h, 1d",
                                 param_hint="--every")
    return int(seconds)


@audit.command()
@_files_arg
@click.option("-n", "--lines", type=click.IntRange(min=0), default=20, show_default=True,
              help="Events to show first.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new events as they come.")
@click.option("--interval", type=click.FloatRange(min=0.05), default=0.5, show_default=True,
              help="Seconds between polls with --follow.")
@click.option("--polls", type=int, default=0, hidden=True, help="Stop after N polls (tests).")
@click.option("--nl", "fmt", flag_value="nl", help="One JSON object per line.")
@click.option("--json", "fmt", flag_value="json",
              help="One JSON array (the first events only; not with -f).")
@click.option("--table", "fmt", flag_value="table", default=True,
              help="A table for people (default).")
def tail(files: tuple[Path, ...], config_path: Path | None, lines: int, follow: bool,
         interval: float, polls: int, fmt: str) -> None:
    """The latest events of every kind; with -f, follow new ones (also across segments).

    \b
    Examples:
        mcpwall audit tail audit.db -n 50
        mcpwall audit tail -f gw1.db gw2.db --nl | jq .

    \b
    Exit codes: 0 success; 1 an audit file could not be read; 2 usage error
    (bad option or value, no audit database).
    """
    files = _files(files, config_path)
    if follow and fmt == "json":
        raise click.UsageError("-f prints events as they come: use --nl, not --json")
    with _open(files) as src:
        _guard(lambda: _emit(events(src, Filters(limit=lines), latest=True), TAIL_COLUMNS, fmt)
               if lines else 0)
        seen = last_seqs(src)
    if not follow:
        return
    n = 0
    try:
        while polls <= 0 or n < polls:
            n += 1
            time.sleep(interval)
            with _open(files) as src:
                for path in expand_paths(list(files)):
                    seen.setdefault(str(path), 0)
                new = list(events(src, Filters(), after=seen))
                for r in new:
                    seen[r["_file"]] = max(seen.get(r["_file"], 0), r["seq"])
                if new:
                    _emit(new, TAIL_COLUMNS, fmt)
                    sys.stdout.flush()
    except KeyboardInterrupt:
        return


@audit.command("export")
@_files_arg
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv", "cef"]), default="jsonl",
              show_default=True, help="jsonl: every column; csv: with a header; cef: for SIEMs.")
@click.option("--since", type=TIME, help="From this time.")
@click.option("--until", type=TIME, help="Before this time.")
@click.option("--session", help="Only this session.")
@click.option("--principal", help="Only this principal.")
@click.option("--raw-csv", is_flag=True,
              help="With --format csv: cells as stored, without the leading ' that keeps "
                   "spreadsheets from evaluating =, +, -, @ cells.")
@click.option("-o", "--output", type=click.File("w"), default="-", help="File (default stdout).")
def export_cmd(files: tuple[Path, ...], config_path: Path | None, fmt: str, since: int | None,
               until: int | None,
               session: str | None, principal: str | None, raw_csv: bool, output: Any) -> None:
    """Every event (decisions, outcomes, lifecycle) in time order, for other tools.

    jsonl carries every value exactly; csv prefixes a cell that a spreadsheet
    would evaluate (=, +, -, @, tab, CR first) with ' unless --raw-csv; cef
    escapes per the CEF specification, one record a line.

    \b
    Examples:
        mcpwall audit export audit.db --format cef --since 24h > mcpwall.cef
        mcpwall audit export gw1.db gw2.db --format jsonl -o trail.jsonl

    \b
    Exit codes: 0 success; 1 an audit file could not be read; 2 usage error
    (bad option or value, no audit database).
    """
    files = _files(files, config_path)
    filters = Filters(since_ns=since, until_ns=until, session=session, principal=principal)
    with _open(files) as src:
        records = _guard(lambda: events(src, filters))
        lines: Iterator[str]
        if fmt == "jsonl":
            lines = (line + "\n" for line in export_fmt.jsonl_lines(records))
        elif fmt == "csv":
            lines = export_fmt.csv_text(records, raw=raw_csv)
        else:
            lines = (line + "\n" for line in export_fmt.cef_lines(records))
        for chunk in lines:
            output.write(chunk)


@audit.command()
@_files_arg
@click.option("--key", "keys", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Checkpoint key: HMAC hex file or Ed25519 .pub (default: beside the file).")
@click.option("--anchor", "anchors", multiple=True,
              type=click.Path(exists=True, path_type=Path),
              help="Anchor file(s) (default: NAME.anchor beside the first file).")
@click.option("--json", "as_json", is_flag=True, help="The reports as JSON.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar (default: on a TTY).")
def verify(files: tuple[Path, ...], config_path: Path | None, keys: tuple[Path, ...],
           anchors: tuple[Path, ...],
           as_json: bool, progress: bool | None) -> None:
    """Check the hash chain, signed checkpoints and anchor; report the first bad row.

    What is wrong is one of: edited, deleted, reordered, inserted, truncated,
    forged_checkpoint, missing_segment, broken_segment, unreadable.

    \b
    Exit codes: 0 intact; 1 tampering found (or a file is unreadable); 2 usage error.

    \b
    Examples:
        mcpwall audit verify audit.db
        mcpwall audit verify gw1.db gw2.db --key audit.db.key --json
    """
    files = _files(files, config_path)
    paths = expand_paths(list(files))
    show = sys.stderr.isatty() if progress is None else progress
    if show:
        total = count_rows(paths)
        with click.progressbar(length=total, label="verifying", file=sys.stderr) as bar:
            reports = verify_paths(paths, keys=list(keys) or None,
                                   anchors=list(anchors) or None, progress=bar.update)
    else:
        reports = verify_paths(paths, keys=list(keys) or None, anchors=list(anchors) or None)
    if as_json:
        click.echo(json_text(_json.encode([_report_dict(r) for r in reports])))
    else:
        for r in reports:
            _print_report(r)
    if not all(r.ok for r in reports):
        sys.exit(1)


def _report_dict(r: ChainReport) -> dict[str, Any]:
    d: dict[str, Any] = msgspec.to_builtins(r)
    d["ok"] = r.ok
    return d


def _print_report(r: ChainReport) -> None:
    files = visible(", ".join(r.files))
    if r.ok:
        signed = "signatures verified" if r.signatures_checked else "signatures NOT checked"
        click.echo(f"OK {files}: chain {r.chain[:12]}, instance {r.instance}, {r.rows} rows "
                   f"(seq {r.first_seq}..{r.last_seq}), {r.checkpoints} checkpoints, "
                   f"{signed}, signed up to seq {r.signed_upto}")
    else:
        p = r.problems[0]
        at = f" at seq {p.seq}" if p.seq is not None else ""
        click.echo(visible(f"TAMPERED {files}: {p.kind}{at} ({p.file}): {p.message}"))
    for w in r.warnings:
        click.echo(f"  warning: {w}", err=True)
