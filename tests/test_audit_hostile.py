"""Hostile values in the audit trail never act on the reader: CEF stays one record a
line, CSV cells are not formulas, tables show no raw control or bidi characters,
and ``--json`` / ``--nl`` / ``export --format jsonl`` still carry them exactly.

Every value is written through the public write path (:class:`Trail`) and read back
through the ``mcpwall audit`` command line.
"""

from __future__ import annotations

import csv
import io
import re
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from firewall.audit.escaping import cef_header, cef_value, csv_cell, json_text, visible
from firewall.audit.events import DecisionEvent, LifecycleEvent, OutcomeEvent
from firewall.audit.trail import Trail
from firewall.cli.audit import audit
from firewall.settings.audit import AuditSettings

T0 = 1_750_000_000_000_000_000
S = 1_000_000_000

CRLF_TOOL = "list\r\nCEF:0|mcpwall|mcpwall|9|decision:allow|forged|1|act=allow"
FORMULA_TOOL = '=HYPERLINK("http://x","y")'
TITLE_TOOL = "\x1b]0;owned\x07"
CLEAR_TOOL = "\x1b[2J"
BIDI_TOOL = "invoice\u202egpj.exe"
NEL_TOOL = "a\x85b\u2028c\x0bd"  # characters str.splitlines() also breaks on
TOOLS = (CRLF_TOOL, FORMULA_TOOL, TITLE_TOOL, CLEAR_TOOL, BIDI_TOOL, NEL_TOOL)
PRINCIPAL = "+cmd|' /C calc'!A0"
REASON = "@SUM(1+1)\x9b31m"  # a C1 CSI
ERROR = "-1\x1b[31m red \x7f"

# What must never reach a terminal, a CEF line or a header raw.
HOSTILE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u061c\u202a-\u202e\u2066-\u2069"
                     "\u2028\u2029]")


def _trail(tmp: Path) -> Path:
    db = tmp / "hostile.db"
    events: list[DecisionEvent | OutcomeEvent | LifecycleEvent] = [
        LifecycleEvent(ts_ns=T0, kind="session_start", session="s", principal=PRINCIPAL)]
    for i, tool in enumerate(TOOLS):
        ts = T0 + (i + 1) * S
        events.append(DecisionEvent(
            ts_ns=ts, call_id=f"c{i}", session="s", principal=PRINCIPAL, grant="g",
            server="vm", method="tools/call", tool=tool,
            arguments={"cmd": CLEAR_TOOL + "rm -rf /", "name": BIDI_TOOL},
            decision="deny" if i % 2 else "allow", rule="r", reason=REASON))
        if i % 2 == 0:
            events.append(OutcomeEvent(ts_ns=ts + 1, call_id=f"c{i}", session="s",
                                       server="vm", status="tool_error", error_message=ERROR,
                                       latency_ns=1000))
    with Trail(AuditSettings(path=str(db)), "gw") as trail:
        trail.append_batch(events)
    return db


def _run(*args: str) -> str:
    # color=True: click must not strip anything on our behalf, as on a real terminal.
    result = CliRunner().invoke(audit, list(args), color=True)
    assert result.exit_code == 0, result.output
    return result.stdout_bytes.decode("utf-8")  # .output would turn CRLF into LF


# -- CEF ----------------------------------------------------------------------------------

_UNESCAPE = {"\\": "\\", "=": "=", "|": "|", "n": "\n", "r": "\r"}


def _unescape(text: str) -> str:
    return re.sub(r"\\([\\=|nr])", lambda m: _UNESCAPE[m.group(1)], text)


def parse_cef(line: str) -> tuple[list[str], dict[str, str]]:
    """A CEF:0 record, read as a SIEM reads it: 7 header fields split on unescaped
    pipes, then ``key=value`` pairs whose keys start after a space and end at an
    unescaped ``=``."""
    fields = re.split(r"(?<!\\)\|", line, maxsplit=7)
    assert len(fields) == 8, line
    header, ext = fields[:7], fields[7]
    keys = list(re.finditer(r"(?:^| )([A-Za-z0-9_]+)=", ext))
    values: dict[str, str] = {}
    for k, m in enumerate(keys):
        end = keys[k + 1].start() if k + 1 < len(keys) else len(ext)
        raw = ext[m.end():end]
        assert not re.search(r"(?<!\\)(?:\\\\)*=", raw), (m.group(1), raw)  # no bare '='
        values[m.group(1)] = _unescape(raw)
    return [_unescape(h) for h in header], values


def test_cef_export_is_one_parseable_record_per_event(tmp_path: Path) -> None:
    db = _trail(tmp_path)
    out = _run("export", str(db), "--format", "cef")
    lines = out.split("\n")
    assert lines[-1] == "" and len(lines) - 1 == 1 + len(TOOLS) + 3
    assert out.splitlines() == lines[:-1]  # no other character breaks a line either
    assert not HOSTILE.search(out.replace("\n", ""))
    tools = []
    for line in lines[:-1]:
        assert line.startswith("CEF:0|mcpwall|mcpwall|")
        header, ext = parse_cef(line)
        assert header[:3] == ["CEF:0", "mcpwall", "mcpwall"] and header[6].isdigit()
        assert ext.get("suser", PRINCIPAL) == PRINCIPAL
        if "cs5" in ext:
            assert ext["cs5Label"] == "tool"
            tools.append(ext["cs5"])
            assert ext["reason"] == visible(REASON)
    # CR/LF, '|' and '=' round-trip through the CEF escapes; other controls show as \xHH.
    assert tools == [visible(t).replace("\\r", "\r").replace("\\n", "\n") for t in TOOLS]
    assert tools[0] == CRLF_TOOL
    assert tools[1] == FORMULA_TOOL
    crlf_header, _ = parse_cef(lines[1])
    assert crlf_header[5] == f"tools/call {CRLF_TOOL} allow"


# -- CSV ----------------------------------------------------------------------------------

def _cells(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


@pytest.mark.parametrize("args", [("export", "--format", "csv"), ("query", "--csv")])
def test_csv_cells_are_not_formulas(tmp_path: Path, args: tuple[str, ...]) -> None:
    db = _trail(tmp_path)
    command, *rest = args
    rows = _cells(_run(command, str(db), *rest))
    assert rows
    for row in rows:
        for column, cell in row.items():
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), (column, cell)
    calls = [r for r in rows if r.get("tool")]
    assert [r["tool"] for r in calls] == [
        "'" + t if t.startswith("=") else t for t in TOOLS]
    assert {r["principal"] for r in calls} == {"'" + PRINCIPAL}
    assert {r["reason"] for r in calls} == {"'" + REASON}
    assert {r["error_message"] for r in rows if r.get("error_message")} == {"'" + ERROR}
    # --raw-csv writes the stored values.
    raw = _cells(_run(command, str(db), *rest, "--raw-csv"))
    assert [r["tool"] for r in raw if r.get("tool")] == list(TOOLS)
    assert {r["principal"] for r in raw if r.get("tool")} == {PRINCIPAL}


# -- terminal -----------------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ("query",), ("query", "--decision", "deny"), ("tail", "-n", "50"),
    ("timeline", "--session", "s"), ("stats",)])
def test_tables_show_control_and_bidi_characters_as_escapes(tmp_path: Path,
                                                           args: tuple[str, ...]) -> None:
    db = _trail(tmp_path)
    command, *rest = args
    out = _run(command, str(db), *rest)
    assert not HOSTILE.search(out.replace("\n", "")), repr(out)
    assert "\\x1b[2J" in out  # the clear-screen tool, shown as text
    if "deny" not in args:
        assert "\\u202e" in out  # the bidi override, shown as text


@pytest.mark.slow
def test_a_real_terminal_stream_gets_no_escape_sequences(tmp_path: Path) -> None:
    """`python -m firewall audit tail` as a process: its stdout bytes are what a
    terminal would interpret."""
    db = _trail(tmp_path)
    done = subprocess.run([sys.executable, "-m", "firewall", "audit", "tail", str(db),
                           "-n", "50"], capture_output=True, check=True, timeout=60)
    text = done.stdout.decode("utf-8")
    assert not HOSTILE.search(text.replace("\n", ""))
    assert "\\x1b]0;owned\\x07" in text


def test_json_output_stays_exact_and_inert(tmp_path: Path) -> None:
    db = _trail(tmp_path)
    for args in (("query", "--json"), ("tail", "-n", "50", "--nl"), ("export",)):
        out = _run(args[0], str(db), *args[1:])
        # Exact values, yet no raw control, bidi or separator character in the text.
        assert not HOSTILE.search(out.replace("\n", "")), args
    rows = msgspec.json.decode(_run("query", str(db), "--json"))
    assert [r["tool"] for r in rows] == list(TOOLS)
    assert {r["principal"] for r in rows} == {PRINCIPAL}
    assert msgspec.json.decode(rows[0]["arguments"])["cmd"] == CLEAR_TOOL + "rm -rf /"
    tail = [msgspec.json.decode(line) for line in _run("tail", str(db), "-n", "50", "--nl")
            .splitlines()]
    assert [r["tool"] for r in tail if r["kind"] == "decision"] == list(TOOLS)
    exported = [msgspec.json.decode(line) for line in _run("export", str(db)).splitlines()]
    assert [r["error_message"] for r in exported if r["kind"] == "outcome"] == [ERROR] * 3


# -- the escapes themselves, on any text --------------------------------------------------

@given(st.text())
def test_escapes_hold_for_any_text(text: str) -> None:
    assert not HOSTILE.search(visible(text))
    assert not HOSTILE.search(cef_value(text)) and not HOSTILE.search(cef_header(text))
    assert "|" not in cef_header(text).replace("\\|", "")
    encoded = json_text(msgspec.json.encode(text))
    assert not HOSTILE.search(encoded) and msgspec.json.decode(encoded) == text
    cell = csv_cell(text)
    assert not cell.startswith(("=", "+", "-", "@", "\t", "\r"))
    assert cell == text or cell == "'" + text


def test_approvals_table_shows_escapes_and_json_stays_exact(tmp_path: Path) -> None:
    from firewall.cli import main
    from firewall.gateway.approvals.desk import ApprovalRequest, open_store

    db = tmp_path / "approvals.db"
    with open_store(db) as store:
        store.add(ApprovalRequest(id="abc", created_ns=1, expires_ns=2**62, instance="i",
                                  session="s", principal=PRINCIPAL, grant="g", server="vm",
                                  method="tools/call", target=TITLE_TOOL + BIDI_TOOL,
                                  arguments={"cmd": CLEAR_TOOL}))
    listed = CliRunner().invoke(main, ["approvals", "list", "--db", str(db)], color=True)
    assert listed.exit_code == 0, listed.output
    out = listed.stdout_bytes.decode()
    assert not HOSTILE.search(out.replace("\n", "")) and "\\x1b]0;owned\\x07" in out
    exact = CliRunner().invoke(main, ["approvals", "list", "--db", str(db), "--nl"])
    assert msgspec.json.decode(exact.stdout_bytes)["target"] == TITLE_TOOL + BIDI_TOOL
