"""MCP 2026-07-28 in the audit trail: each decision's protocol version,
clientInfo and capabilities; the chain over old and new files; the mediator
reading them per request (its ``_meta``) or per session (its initialize)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import msgspec
import pytest

from firewall.audit.chain import FORMAT, GENESIS, META, META_COLUMNS, PREV, event_row, stored
from firewall.audit.events import DecisionEvent, Event, LifecycleEvent, OutcomeEvent, Receipt
from firewall.audit.store import VIEWS
from firewall.audit.trail import Trail
from firewall.audit.verify import verify_paths
from firewall.gateway.mediator import Mediator
from firewall.policy.compiler import compile_policy
from firewall.policy.decision import Caller
from firewall.policy.engine import Engine
from firewall.policy.schema import parse_policy
from firewall.protocol import meta
from firewall.settings.audit import AuditSettings

V = "2026-07-28"


def _decision(seq: int, **extra: Any) -> DecisionEvent:
    return DecisionEvent(ts_ns=1_700_000_000_000_000_000 + seq, call_id=f"s.{seq}", session="s",
                         principal="alice", grant="g", server="vm", method="tools/call",
                         tool="echo", arguments={"text": "hi"}, decision="allow", **extra)


def _events() -> list[Event]:
    return [
        LifecycleEvent(ts_ns=1, kind="session_start", session="s", principal="alice"),
        _decision(2),
        OutcomeEvent(ts_ns=3, call_id="s.2", session="s", server="vm", status="ok",
                     latency_ns=5),
        _decision(4, protocol_version=V, client_info={"name": "cli", "version": "1"},
                  client_capabilities={"elicitation": {}}),
    ]


def test_rows_without_client_meta_hash_as_before_the_columns() -> None:
    """Chain rule 6: a row whose client-meta columns are NULL is hashed over
    the columns it had before them, so files written then verify unchanged."""
    row = stored(event_row(_decision(1), seq=1, instance="gw", prev_hash=GENESIS,
                           redactor=None))
    old = [FORMAT, *row[:META], row[PREV]]
    digest = hashlib.sha256(msgspec.json.encode(old)).hexdigest()
    assert row[-1] == digest
    with_meta = stored(event_row(_decision(1, protocol_version=V), seq=1, instance="gw",
                                 prev_hash=GENESIS, redactor=None))
    assert with_meta[-1] == hashlib.sha256(msgspec.json.encode(
        [FORMAT, *with_meta[:-1]])).hexdigest() != digest


def _write(path: Path, events: list[Event]) -> None:
    with Trail(AuditSettings(path=str(path), checkpoint_every_rows=2), "gw-1") as trail:
        trail.append_batch(events)


def test_new_columns_verify_and_an_edit_of_client_info_is_caught(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    _write(db, _events())
    [report] = verify_paths([db])
    assert report.ok and report.rows == 4, report.problems
    with sqlite3.connect(db) as conn:
        got = conn.execute("SELECT protocol_version, client_info, client_capabilities FROM "
                           "calls WHERE protocol_version IS NOT NULL").fetchall()
    assert got == [(V, '{"name":"cli","version":"1"}', '{"elicitation":{}}')]
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DROP TRIGGER events_no_update")
    conn.execute("UPDATE events SET client_info = '{\"name\":\"other\"}' WHERE seq = 4")
    conn.execute("UPDATE events SET protocol_version = '2025-11-25' WHERE seq = 2")
    conn.close()
    [report] = verify_paths([db])
    assert [(p.kind, p.seq) for p in report.problems] == [("edited", 2)]


def test_a_file_from_before_the_columns_verifies_and_is_continued(tmp_path: Path) -> None:
    """A file written before the client-meta columns (made here by dropping
    them) verifies; the writer adds them when it opens it, and the chain
    goes on verifiably with rows that use them."""
    db = tmp_path / "audit.db"
    _write(db, _events()[:3])
    conn = sqlite3.connect(db, isolation_level=None)
    for view in ("denials", "rate_limited", "errors", "calls"):
        conn.execute(f"DROP VIEW {view}")
    for column in META_COLUMNS:
        conn.execute(f"ALTER TABLE events DROP COLUMN {column}")
    old_calls = VIEWS["calls"].replace(
        "d.protocol_version, d.client_info, d.client_capabilities,", "")
    for view in ("calls", "denials", "rate_limited", "errors"):
        conn.execute(f"CREATE VIEW {view} AS "
                     f"{(old_calls if view == 'calls' else VIEWS[view]).strip()}")
    conn.close()
    [report] = verify_paths([db])
    assert report.ok and report.rows == 3, report.problems
    _write(db, _events()[3:])
    [report] = verify_paths([db])
    assert report.ok and report.rows == 4, report.problems
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM calls WHERE protocol_version = ?",
                            (V,)).fetchone() == (1,)


def test_meta_is_bounded() -> None:
    assert meta.bounded({"name": "x" * 5000}, meta.MAX_INFO_BYTES) == {"truncated": 5011,
                                                                        "members": ["name"]}
    assert meta.bounded("a string", 100) == {"value": "a string"}
    assert meta.audit_version("9" * 500) == "9" * meta.MAX_VERSION
    assert meta.audit_version(7) == "7"
    assert meta.of_params({"_meta": {"progressToken": 1}}) is meta.LEGACY
    got = meta.of_params({"_meta": {meta.VERSION_KEY: V, meta.CAPABILITIES_KEY: {
        "elicitation": {"form": {}}}}})
    assert got.modern and got.supported() and got.elicits()


# -- the mediator ------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    async def append(self, event: Event) -> Receipt:
        self.events.append(event)
        return _Done()


class _Done:
    async def committed(self) -> None:
        return None


POLICY = {"version": "1", "default": "allow", "tools": {"wipe": {"action": "deny"}}}


def _mediator(audit: Recorder, **kw: Any) -> Mediator:
    engine = Engine(compile_policy(parse_policy(json.dumps(POLICY))))
    return Mediator(server="vm", session="sess-1", caller=Caller("alice", "g-alice"),
                    policy=engine, audit=audit, **kw)


def _modern(rid: int, method: str, params: dict[str, Any], version: Any = V,
            info: Any = None) -> bytes:
    m: dict[str, Any] = {meta.VERSION_KEY: version, meta.CAPABILITIES_KEY: {}}
    if info is not None:
        m[meta.INFO_KEY] = info
    return json.dumps({"jsonrpc": "2.0", "id": rid, "method": method,
                       "params": {**params, "_meta": m}}, separators=(",", ":")).encode()


async def test_client_info_never_changes_the_principal() -> None:
    audit = Recorder()
    med = _mediator(audit)
    claim = {"name": "root-admin", "version": "1", "principal": "bob"}
    routed = await med.from_client(_modern(1, "tools/call", {"name": "echo", "arguments": {}},
                                           info=claim))
    assert routed.upstream is not None
    [event] = audit.events
    assert isinstance(event, DecisionEvent)
    assert (event.principal, event.grant) == ("alice", "g-alice")
    assert event.client_info == claim and event.protocol_version == V


async def test_a_denied_modern_call_is_a_complete_result_and_recorded() -> None:
    audit = Recorder()
    med = _mediator(audit)
    routed = await med.from_client(_modern(2, "tools/call", {"name": "wipe", "arguments": {}}))
    assert routed.upstream is None and routed.client is not None
    answer = json.loads(routed.client)
    assert answer["id"] == 2 and answer["result"]["isError"] is True
    assert answer["result"]["resultType"] == "complete"
    [event] = audit.events
    assert isinstance(event, DecisionEvent) and event.decision == "deny"


@pytest.mark.parametrize("version", ["2099-01-01", 2026, None])
async def test_an_unknown_revision_gets_unsupported_protocol_version(version: Any) -> None:
    audit = Recorder()
    med = _mediator(audit)
    routed = await med.from_client(_modern(3, "tools/list", {}, version=version))
    assert routed.upstream is None and routed.client is not None
    answer = json.loads(routed.client)
    assert answer["id"] == 3
    assert answer["error"]["code"] == meta.UNSUPPORTED_PROTOCOL_VERSION
    assert V in answer["error"]["data"]["supported"]
    [event] = audit.events
    assert isinstance(event, DecisionEvent)
    assert (event.decision, event.rule) == ("deny", "protocol")
    # The session goes on: a good request next passes.
    assert (await med.from_client(_modern(4, "tools/list", {}))).upstream is not None


async def test_a_2025_session_records_the_version_the_server_negotiated() -> None:
    audit = Recorder()
    med = _mediator(audit)
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {"roots": {}},
        "clientInfo": {"name": "old-cli", "version": "2"}}}
    assert (await med.from_client(json.dumps(init).encode())).upstream is not None
    await med.from_server(json.dumps({"jsonrpc": "2.0", "id": 1, "result": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "serverInfo": {"name": "s", "version": "1"}}}).encode())
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "echo", "arguments": {}}}
    await med.from_client(json.dumps(call).encode())
    first, second = (e for e in audit.events if isinstance(e, DecisionEvent))
    assert first.protocol_version == "2025-11-25"
    assert second.protocol_version == "2025-06-18"
    assert second.client_info == {"name": "old-cli", "version": "2"}
    assert second.client_capabilities == {"roots": {}}


async def test_discover_offers_only_the_revisions_mcpwall_mediates() -> None:
    audit = Recorder()
    med = _mediator(audit)
    assert (await med.from_client(_modern(5, "server/discover", {}))).upstream is not None
    answer = {"jsonrpc": "2.0", "id": 5, "result": {
        "supportedVersions": ["2027-01-01", V, "2025-11-25"], "capabilities": {},
        "resultType": "complete"}}
    routed = await med.from_server(json.dumps(answer).encode())
    assert routed.client is not None
    result = json.loads(routed.client)["result"]
    assert result["supportedVersions"] == [V, "2025-11-25"]
    assert result["resultType"] == "complete"
