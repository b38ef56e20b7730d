"""Held calls through real processes: scopes, progress keep-alives, elicitation,
a client that goes away, and a gateway killed while a call is held.

The SDK client (`mcp`) calls the demo server through `mcpwall wrap` (stdio) or
`mcpwall serve` (HTTP); people answer with `mcpwall approvals`; the audit
trail and the approvals database are read back with sqlite3.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import mcp_types as types
import msgspec
import pytest
import trio
from conftest import mcpwall_argv
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from sdk_scenarios import stdio_session
from serve_process import start_serve, stop_serve, tail
from test_approvals import DELETE_DB01, DEMO, PACK, decide, held_then

from firewall.gateway.approvals.desk import RESTARTED, open_store

pytestmark = pytest.mark.slow

# The virtualization pack's delete rule asks the desk; "stop" here asks the client.
ELICIT_POLICY = {"version": "1", "default": "deny", "tools": {"vm_management": {"rules": [
    {"name": "read", "when": {"action": ["list", "info"]}},
    {"name": "stop", "when": {"action": {"const": "stop"}}, "action": "require_approval",
     "approval": "client", "reason": "stopping a VM interrupts its users"}]}}}
STOP_WEB01 = {"action": "stop", "vm_name": "web-01"}
DELETE_WEB01 = {"action": "delete", "vm_name": "web-01"}


def write_config(tmp: Path, *, serve: bool = False, policy: Path = PACK,
                 progress: float = 15.0, desk: bool = True) -> Path:
    config = tmp / "gw.toml"
    text = (f'[audit]\npath = "{tmp / "audit.db"}"\n'
            f'[approvals]\nenabled = {"true" if desk else "false"}\n'
            f'path = "{tmp / "approvals.db"}"\n'
            f'poll_seconds = 0.1\nprogress_seconds = {progress}\n')
    if serve:
        text += (f'[policy]\nfiles = ["{policy}"]\n'
                 f'[servers.vm]\ntransport = "stdio"\ncommand = "{sys.executable}"\n'
                 'args = ["-m", "firewall.demo"]\n')
    config.write_text(text)
    return config


def wrap_argv(config: Path, policy: Path = PACK) -> list[str]:
    return [*mcpwall_argv(), "wrap", "--config", str(config), "--policy", str(policy), "--",
            *DEMO]


def audit_rows(tmp: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    with sqlite3.connect(tmp / "audit.db") as conn:
        return conn.execute(sql, args).fetchall()


def requests(tmp: Path) -> list[dict[str, Any]]:
    out = subprocess.run([*mcpwall_argv(), "approvals", "list", "--all", "--nl", "--db",
                          str(tmp / "approvals.db")], capture_output=True, check=True)
    return [json.loads(line) for line in out.stdout.decode().splitlines()]


async def held_request(db: Path) -> dict[str, Any]:
    """Wait until a request is pending; return it (read in-process: polling
    `mcpwall approvals list` would start a process every tenth of a second)."""
    with trio.fail_after(20):
        while True:
            if await trio.Path(db).exists():
                with open_store(db) as store:
                    pending = store.list()
                if pending:
                    return json.loads(msgspec.json.encode(pending[0]))  # type: ignore[no-any-return]
            await trio.sleep(0.05)


async def held_call(session: ClientSession, db: Path, verb: str, *extra: str) -> Any:
    """Call delete db-01; give the verdict (with ``extra`` options) once it is held."""
    return (await held_then(session, db, verb, *extra))[0]


@asynccontextmanager
async def http_session(base: str, **kw: Any) -> AsyncIterator[ClientSession]:
    async with (
        streamable_http_client(f"{base}/servers/vm/mcp") as (read, write),
        ClientSession(read, write, **kw) as session,
    ):
        await session.initialize()
        yield session


@asynccontextmanager
async def serving(tmp: Path, config: Path) -> AsyncIterator[tuple[trio.Process, str]]:
    proc, base = await start_serve(tmp, config, tmp / "serve.log")
    try:
        yield proc, base
    finally:
        with trio.CancelScope(shield=True):
            await stop_serve(proc)


# -- scopes ---------------------------------------------------------------------
async def test_session_scope_lets_later_calls_of_that_session_through(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    db = tmp_path / "approvals.db"
    async with stdio_session(wrap_argv(config)) as session:
        first = await held_call(session, db, "approve", "--scope", "session")
        assert not first.is_error
        with trio.fail_after(15):  # not held: nobody answers this one
            second = await session.call_tool("vm_management", DELETE_WEB01)
        # Forwarded: the demo's own answer (web-01 is running), not a refusal.
        assert "Refused by mcpwall" not in second.content[0].text
    (request,) = requests(tmp_path)  # the second call was never filed
    assert request["status"] == "approved" and request["scope"] == "session"
    assert request["scope_until_ns"] is not None  # the scope ended with the wrap session
    decisions = audit_rows(tmp_path, "SELECT decision, reason FROM events WHERE kind = "
                           "'decision' AND tool = 'vm_management' ORDER BY seq")
    assert [d for d, _ in decisions] == ["pending", "approved", "pending", "approved"]
    assert decisions[1][1] == "approved by oncall-alice (for the rest of the session)"
    assert decisions[3][1].startswith(f"approved by standing approval {request['id']} "
                                      "(oncall-alice, for the rest of the session)")
    # A new session (a new wrap process) is asked again.
    async with stdio_session(wrap_argv(config)) as session:
        third = await held_call(session, db, "reject", "--note", "not again")
    assert third.is_error and "not again" in third.content[0].text


async def test_minutes_scope_covers_later_sessions_of_that_principal(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    db = tmp_path / "approvals.db"
    async with stdio_session(wrap_argv(config)) as session:
        assert not (await held_call(session, db, "approve", "--scope", "minutes:10")).is_error
    async with stdio_session(wrap_argv(config)) as session:  # another process, same database
        with trio.fail_after(15):
            again = await session.call_tool("vm_management", DELETE_DB01)
    assert not again.is_error
    (request,) = requests(tmp_path)
    assert request["scope"] == "minutes"
    assert request["scope_until_ns"] - request["decided_ns"] == 10 * 60 * 10**9
    reasons = [r for (r,) in audit_rows(tmp_path, "SELECT reason FROM events WHERE "
                                        "decision = 'approved' ORDER BY seq")]
    assert reasons[1].startswith(f"approved by standing approval {request['id']} "
                                 "(oncall-alice, until ")


def test_cli_scope_errors() -> None:
    from click.testing import CliRunner

    from firewall.cli import main

    runner = CliRunner()
    bad = runner.invoke(main, ["approvals", "approve", "x", "--scope", "hours:2"])
    assert bad.exit_code == 2 and "expected call, session or minutes:N" in bad.output
    no_scope = runner.invoke(main, ["approvals", "reject", "x", "--scope", "session"])
    assert no_scope.exit_code == 2 and "No such option" in no_scope.output


# -- progress keep-alives -----------------------------------------------------------
async def progress_then_approve(session: ClientSession, db: Path) -> tuple[Any, list[str]]:
    """Call delete with a progress callback; approve after two keep-alives."""
    messages: list[str] = []
    two = trio.Event()
    result: list[Any] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")
        if len(messages) >= 2:
            two.set()

    async def call() -> None:
        result.append(await session.call_tool("vm_management", DELETE_DB01,
                                              progress_callback=on_progress))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call)
        request = await held_request(db)
        with trio.fail_after(20):
            await two.wait()
        await decide(db, "approve", str(request["id"]), "--note", "ok")
    assert set(messages) == {f"waiting for approval (request {request['id']})"}
    return result[0], messages


async def test_progress_keepalives_over_stdio(tmp_path: Path) -> None:
    config = write_config(tmp_path, progress=0.2)
    async with stdio_session(wrap_argv(config)) as session:
        done, _ = await progress_then_approve(session, tmp_path / "approvals.db")
    assert not done.is_error


async def test_progress_keepalives_over_http(tmp_path: Path) -> None:
    config = write_config(tmp_path, serve=True, progress=0.2)
    async with serving(tmp_path, config) as (_, base), http_session(base) as session:
        done, _ = await progress_then_approve(session, tmp_path / "approvals.db")
        assert not done.is_error
        # The session goes on normally after a held call.
        listing = await session.call_tool("vm_management", {"action": "list"})
        assert not listing.is_error and "web-01" in json.dumps(listing.model_dump(mode="json"))


async def test_a_session_scope_ends_when_the_http_session_does(tmp_path: Path) -> None:
    config = write_config(tmp_path, serve=True)
    db = tmp_path / "approvals.db"
    async with serving(tmp_path, config) as (_, base):
        async with http_session(base) as session:
            assert not (await held_call(session, db, "approve", "--scope", "session")).is_error
        (request,) = requests(tmp_path)
        assert request["scope"] == "session"
        with trio.fail_after(20):  # the client's DELETE ends the session
            while True:
                with open_store(db) as store:
                    if store.list(None)[0].scope_until_ns is not None:
                        break
                await trio.sleep(0.1)


# -- elicitation ------------------------------------------------------------------------
def answering(answers: list[types.ElicitResult], asked: list[types.ElicitRequestParams]
              ) -> Any:
    async def elicit(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params)
        return answers.pop(0)

    return elicit


async def elicitation_round(session: ClientSession, asked: list[Any]) -> tuple[Any, Any]:
    accepted = await session.call_tool("vm_management", STOP_WEB01)
    declined = await session.call_tool("vm_management", STOP_WEB01)
    assert len(asked) == 2
    message = asked[0].message
    assert "vm_management" in message and "stopping a VM interrupts its users" in message
    return accepted, declined


ACCEPT_THEN_DECLINE = [types.ElicitResult(action="accept", content={"approve": True}),
                       types.ElicitResult(action="decline")]


async def test_elicitation_through_wrap_without_a_desk(tmp_path: Path) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(ELICIT_POLICY))
    config = write_config(tmp_path, desk=False)
    asked: list[Any] = []
    params_argv = wrap_argv(config, policy)
    from mcp.client.stdio import StdioServerParameters, stdio_client

    async with (
        stdio_client(StdioServerParameters(command=params_argv[0], args=params_argv[1:]))
        as (read, write),
        ClientSession(read, write,
                      elicitation_callback=answering(list(ACCEPT_THEN_DECLINE), asked))
        as session,
    ):
        await session.initialize()
        with trio.fail_after(20):
            accepted, declined = await elicitation_round(session, asked)
    assert not accepted.is_error and "web-01" in json.dumps(accepted.model_dump(mode="json"))
    assert declined.is_error
    assert "rejected by client:" in declined.content[0].text
    rows = audit_rows(tmp_path, "SELECT decision, reason FROM events WHERE kind = 'decision' "
                      "AND tool = 'vm_management' ORDER BY seq")
    assert [d for d, _ in rows] == ["pending", "approved", "pending", "rejected"]
    assert rows[1][1].endswith("in the client") and rows[3][1].endswith("(declined)")
    vias = [json.loads(d)["via"] for (d,) in audit_rows(
        tmp_path, "SELECT detail FROM events WHERE kind = 'approval'")]
    assert vias == ["client", "client"]


async def test_elicitation_over_http(tmp_path: Path) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(ELICIT_POLICY))
    config = write_config(tmp_path, serve=True, policy=policy)
    asked: list[Any] = []
    async with serving(tmp_path, config) as (_, base), http_session(
            base, elicitation_callback=answering(list(ACCEPT_THEN_DECLINE), asked)) as session:
        with trio.fail_after(20):
            accepted, declined = await elicitation_round(session, asked)
    assert not accepted.is_error and declined.is_error
    assert not (tmp_path / "approvals.db").exists() or requests(tmp_path) == []


async def test_a_client_without_elicitation_is_asked_at_the_desk(tmp_path: Path) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(ELICIT_POLICY))
    config = write_config(tmp_path)
    async with stdio_session(wrap_argv(config, policy)) as session:  # no elicitation callback
        result: list[Any] = []

        async def call() -> None:
            result.append(await session.call_tool("vm_management", STOP_WEB01))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            request = await held_request(tmp_path / "approvals.db")
            assert request["rule"] == "tools.vm_management.rules[stop]"
            await decide(tmp_path / "approvals.db", "approve", str(request["id"]), "--note", "desk")
    assert not result[0].is_error


# -- the client goes away ----------------------------------------------------------------
def filed(db: Path, seconds: float = 20) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if db.exists():
            with open_store(db) as store:
                pending = store.list()
            if pending:
                return pending[0].id
        time.sleep(0.05)
    raise AssertionError("the call was never held")


def test_client_disconnecting_from_wrap_withdraws_the_call(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    proc = subprocess.Popen(wrap_argv(config), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "vm_management", "arguments": DELETE_DB01}}).encode() + b"\n")
    proc.stdin.flush()
    ident = filed(tmp_path / "approvals.db")
    proc.stdin.close()  # the client goes away
    assert proc.wait(timeout=20) == 0
    assert proc.stdout.read() == b""  # a withdrawn call gets no answer
    late = subprocess.run([*mcpwall_argv(), "approvals", "approve", ident, "--db",
                           str(tmp_path / "approvals.db")], capture_output=True)
    assert late.returncode == 1
    assert b"already expired (the call was withdrawn)" in late.stderr
    rows = audit_rows(tmp_path, "SELECT decision, reason FROM events WHERE kind = 'decision' "
                      "AND tool = 'vm_management' ORDER BY seq")
    assert rows == [("pending", "deleting a VM destroys its disks"),
                    ("rejected", "the client disconnected")]


async def initialize(http: httpx.AsyncClient, url: str) -> dict[str, str]:
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "test", "version": "1"}}}
    headers = {"accept": "application/json, text/event-stream",
               "content-type": "application/json"}
    reply = await http.post(url, json=init, headers=headers)
    reply.raise_for_status()
    headers = {**headers, "mcp-session-id": reply.headers["mcp-session-id"],
               "mcp-protocol-version": "2025-06-18"}
    done = await http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                           headers=headers)
    assert done.status_code == 202
    return headers


async def gone_from_pending(db: Path) -> None:
    """Return once no request is pending any more."""
    while True:
        with open_store(db) as store:
            if not store.list():
                return
        await trio.sleep(0.1)


DELETE_CALL = {"jsonrpc": "2.0", "id": 5, "method": "tools/call",
               "params": {"name": "vm_management", "arguments": DELETE_DB01}}



async def post_held_call(http: httpx.AsyncClient, url: str, headers: dict[str, str],
                         events: list[dict[str, Any]]) -> None:
    """POST the delete call (held); the answer is an SSE stream: collect its events."""
    async with http.stream("POST", url, json=DELETE_CALL, headers=headers) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        async for line in resp.aiter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))

async def test_client_disconnecting_over_http_withdraws_the_call(tmp_path: Path) -> None:
    config = write_config(tmp_path, serve=True)
    db = tmp_path / "approvals.db"
    async with serving(tmp_path, config) as (_, base):
        url = f"{base}/servers/vm/mcp"
        async with httpx.AsyncClient(timeout=20) as http:
            headers = await initialize(http, url)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(post_held_call, http, url, headers, [])
                request = await held_request(db)
                nursery.cancel_scope.cancel()  # drop the connection while held
        with trio.fail_after(20):
            await gone_from_pending(db)
        (after,) = requests(tmp_path)
        assert after["id"] == request["id"] and after["status"] == "expired"
        assert after["note"] == "the call was withdrawn"
        proc = await trio.run_process([*mcpwall_argv(), "approvals", "approve",
                                       str(request["id"]), "--db", str(db)],
                                      check=False, capture_stderr=True)
        assert proc.returncode == 1
    reasons = [r for (r,) in audit_rows(tmp_path, "SELECT reason FROM events WHERE "
                                        "decision = 'rejected'")]
    assert reasons == ["the client disconnected"]


# -- the gateway dies while a call is held --------------------------------------------------
async def test_restart_with_a_pending_call_abandons_it(tmp_path: Path) -> None:
    config = write_config(tmp_path, serve=True)
    db = tmp_path / "approvals.db"
    proc, base = await start_serve(tmp_path, config, tmp_path / "serve.log")
    lost: list[BaseException] = []
    try:
        url = f"{base}/servers/vm/mcp"
        async with httpx.AsyncClient(timeout=20) as http:
            headers = await initialize(http, url)
            async with trio.open_nursery() as nursery:

                async def post() -> None:
                    try:
                        async with http.stream("POST", url, json=DELETE_CALL,
                                               headers=headers) as resp:
                            async for _ in resp.aiter_bytes():
                                pass
                    except httpx.TransportError as exc:
                        lost.append(exc)

                nursery.start_soon(post)
                request = await held_request(db)
                os.kill(proc.pid, signal.SIGKILL)
                await proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    # The client saw its connection drop; the request is still marked pending.
    assert lost, "the client's held request ended without a connection error"
    assert requests(tmp_path)[0]["status"] == "pending"
    async with serving(tmp_path, config):
        (after,) = requests(tmp_path)
        assert after["id"] == request["id"] and after["status"] == "abandoned"
        assert after["note"] == RESTARTED
        late = await trio.run_process([*mcpwall_argv(), "approvals", "approve",
                                       str(request["id"]), "--db", str(db)],
                                      check=False, capture_stderr=True)
        assert late.returncode == 1
        assert f"already abandoned ({RESTARTED})".encode() in late.stderr
    call_id = after["call_id"]
    decisions = audit_rows(tmp_path, "SELECT decision, reason FROM events WHERE "
                           "kind = 'decision' AND call_id = ? ORDER BY seq", call_id)
    assert decisions == [("pending", "deleting a VM destroys its disks"),
                         ("rejected", RESTARTED)], tail(tmp_path / "serve.log")
    (detail,) = [json.loads(d) for (d,) in audit_rows(
        tmp_path, "SELECT detail FROM events WHERE kind = 'approval'")]
    assert detail["verdict"] == "abandoned" and detail["approval"] == request["id"]


async def test_sigterm_refuses_held_calls_and_says_so(tmp_path: Path) -> None:
    config = write_config(tmp_path, serve=True)
    db = tmp_path / "approvals.db"
    proc, base = await start_serve(tmp_path, config, tmp_path / "serve.log")
    events: list[dict[str, Any]] = []
    try:
        url = f"{base}/servers/vm/mcp"
        async with httpx.AsyncClient(timeout=20) as http:
            headers = await initialize(http, url)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(post_held_call, http, url, headers, events)
                request = await held_request(db)
                proc.terminate()
        with trio.fail_after(30):
            assert await proc.wait() == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    (answer,) = events
    assert answer["id"] == 5 and answer["result"]["isError"] is True
    assert "mcpwall is shutting down" in answer["result"]["content"][0]["text"]
    (after,) = requests(tmp_path)
    assert after["id"] == request["id"] and after["status"] == "abandoned"
    assert after["note"] == "mcpwall stopped while the call was held"
    rows = audit_rows(tmp_path, "SELECT decision, reason FROM events WHERE kind = 'decision' "
                      "AND tool = 'vm_management' ORDER BY seq")
    assert rows == [("pending", "deleting a VM destroys its disks"),
                    ("rejected", "mcpwall is shutting down")]


# -- an HTTP upstream (front/http_endpoint) --------------------------------------------------------
@pytest.mark.parametrize("json_response", [False, True], ids=["sse", "json"])
async def test_held_calls_to_an_http_upstream(tmp_path: Path, json_response: bool) -> None:
    from tests.fixtures import conformance_harness as harness

    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"version": "1", "default": "allow", "tools": {
        "test_simple_text": {"action": "require_approval", "reason": "desk"},
        "test_error_handling": {"action": "require_approval", "approval": "client"}}}))
    asked: list[Any] = []
    with harness.fixture_http(tmp_path, json_response=json_response) as url:
        config = write_config(tmp_path, progress=0.2)
        config.write_text(config.read_text() + f'[policy]\nfiles = ["{policy}"]\n'
                          f'[servers.fixture]\ntransport = "http"\nurl = "{url}"\n')
        async with (
            serving(tmp_path, config) as (_, base),
            streamable_http_client(f"{base}/servers/fixture/mcp") as (read, write),
            ClientSession(read, write, elicitation_callback=answering(
                [types.ElicitResult(action="accept", content={"approve": True})], asked))
            as session,
        ):
            await session.initialize()
            messages: list[str] = []
            two = trio.Event()
            result: list[Any] = []

            async def on_progress(value: float, total: float | None,
                                  message: str | None) -> None:
                messages.append(message or "")
                if len(messages) == 2:
                    two.set()

            async def call() -> None:
                result.append(await session.call_tool("test_simple_text", {},
                                                      progress_callback=on_progress))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(call)
                request = await held_request(tmp_path / "approvals.db")
                with trio.fail_after(20):
                    await two.wait()
                await decide(tmp_path / "approvals.db", "approve", str(request["id"]),
                             "--note", "ok")
            assert not result[0].is_error and result[0].content[0].text
            with trio.fail_after(20):
                elicited = await session.call_tool("test_error_handling", {})
    assert len(asked) == 1
    assert elicited.is_error  # the tool's own error: the call reached the upstream
    assert "Refused by mcpwall" not in elicited.content[0].text
    rows = audit_rows(tmp_path, "SELECT tool, decision FROM events WHERE kind = 'decision' "
                      "AND tool LIKE 'test_%' ORDER BY seq")
    assert rows == [("test_simple_text", "pending"), ("test_simple_text", "approved"),
                    ("test_error_handling", "pending"), ("test_error_handling", "approved")]


def test_wrap_killed_while_holding_a_call_then_restarted(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    first = subprocess.Popen(wrap_argv(config), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL)
    assert first.stdin is not None and first.stdout is not None
    first.stdin.write(json.dumps(DELETE_CALL).encode() + b"\n")
    first.stdin.flush()
    ident = filed(tmp_path / "approvals.db")
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=20) != 0
    assert first.stdout.read() == b""  # the client saw its server go away, no answer
    first.stdin.close()
    # A new wrap process (the client restarting its server) opens the same database.
    second = subprocess.run(wrap_argv(config), input=b"", capture_output=True, timeout=30)
    assert second.returncode == 0
    with open_store(tmp_path / "approvals.db") as store:
        request = store.get(ident)
    assert request is not None and (request.status, request.note) == ("abandoned", RESTARTED)
    rows = audit_rows(tmp_path, "SELECT decision, reason FROM events WHERE kind = 'decision' "
                      "AND call_id = ? ORDER BY seq", request.call_id)
    assert rows == [("pending", "deleting a VM destroys its disks"), ("rejected", RESTARTED)]


async def test_json_only_client_gets_the_verdict_as_json(tmp_path: Path) -> None:
    config = write_config(tmp_path, serve=True)
    db = tmp_path / "approvals.db"
    async with serving(tmp_path, config) as (_, base):
        url = f"{base}/servers/vm/mcp"
        async with httpx.AsyncClient(timeout=20) as http:
            headers = {**await initialize(http, url), "accept": "application/json"}
            answers: list[httpx.Response] = []

            async def post(call_id: int, verb: str) -> None:
                answers.append(await http.post(url, json={**DELETE_CALL, "id": call_id},
                                               headers=headers))

            for call_id, verb in ((6, "reject"), (7, "approve")):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(post, call_id, verb)
                    request = await held_request(db)
                    await decide(db, verb, str(request["id"]), "--note", "json")
    refused, approved = answers
    assert refused.headers["content-type"] == "application/json"
    assert refused.json()["id"] == 6 and refused.json()["result"]["isError"] is True
    assert "rejected by oncall-alice: json" in refused.json()["result"]["content"][0]["text"]
    assert approved.headers["content-type"] == "application/json"
    assert approved.json()["id"] == 7 and not approved.json()["result"].get("isError")
