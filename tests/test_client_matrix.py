"""The client matrix of MCP 2026-07-28: every SDK client, both fronts, servers of both eras.

Clients: the `mcp` SDK 2.3 client pinned to 2026-07-28 (``py-pinned``) and
in ``auto`` mode (``py-auto``), and the TypeScript SDK v2 client
(``@modelcontextprotocol/client``, pinned; ``ts-v2``, run by
``fixtures/ts_v2_matrix_client.mjs``). Fronts: ``mcpwall serve`` (HTTP) and
``mcpwall wrap`` (stdio). Servers (``fixtures/matrix_server.py``, the `mcp`
SDK's MCPServer): one of the new revision (stateless HTTP behind serve,
stdio behind wrap), and one of the 2025 revisions only (stdio; bridged:
``bridge = true`` behind serve, ``wrap --bridge``).

Each client runs one scenario per route (tools list and an allowed and a
denied call, resources, prompts, an MRTR elicitation, an MRTR sampling, a
listen stream, a task) and reports what it saw; each cell of
``test_cell`` asserts one feature of one run: what the client saw and the
audit rows of that caller (decision, rule, the call_id that links MRTR
rounds, task events). The cells that cannot work by design assert the
documented error (:data:`GAPS`, docs/protocol.md "Tested clients").
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from conftest import mcpwall_argv
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import ToolsListChanged
from pydantic import TypeAdapter

from tests.fixtures import conformance_harness as harness

pytestmark = pytest.mark.slow

MODERN = "2026-07-28"
FIXTURES = Path(__file__).resolve().with_name("fixtures")
SERVER = FIXTURES / "matrix_server.py"
TS_CLIENT = FIXTURES / "ts_v2_matrix_client.mjs"
# The TypeScript SDK v2 client lives in scripts/node (scripts/setup-node).
TS_MODULES = harness.NODE22.parents[2]
POLICY = {"version": "1", "default": "allow",
          "tools": {"danger": {"action": "deny", "reason": "too dangerous"}},
          "resources": {"res://secret": {"action": "deny", "reason": "not yours"}}}
CLIENTS = ("py-pinned", "py-auto", "ts-v2")
ROUTES = ("serve-new", "serve-2025", "wrap-new", "wrap-2025")
FEATURES = ("tools", "resources", "prompts", "elicitation", "sampling", "listen", "task")
TOKENS = {client: f"{client}-matrix-token" for client in CLIENTS}
# The cells that cannot work by design, and why (docs/protocol.md).
GAPS: dict[tuple[str, str], str] = {
    ("serve-2025", "task"): "a 2025 server has no tasks extension: the call completes inline",
    ("wrap-2025", "task"): "a 2025 server has no tasks extension: the call completes inline",
}


@dataclass
class Run:
    """One client's scenario on one route: what it saw, and its audit rows."""

    report: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)

    def decisions(self, **where: Any) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["kind"] == "decision"
                and all(r[k] == v for k, v in where.items())]

    def kind(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["kind"] == kind]


# -- the Python client's scenario -------------------------------------------------------
def _outcome_of(result: Any) -> dict[str, Any]:
    value = (result if isinstance(result, dict)
             else result.model_dump(by_alias=True, mode="json", exclude_none=True))
    content = (value.get("content") or (value.get("result") or {}).get("content")
               or value.get("contents") or [m["content"] for m in value.get("messages", [])])
    first = content[0] if isinstance(content, list) and content else {}
    return {"ok": True, "isError": value.get("isError") is True, "text": first.get("text"),
            "resultType": value.get("resultType"), "status": value.get("status"),
            "taskId": value.get("taskId")}


async def _outcome(call: Any) -> dict[str, Any]:
    try:
        return _outcome_of(await call)
    except MCPError as exc:
        return {"ok": False, "code": exc.error.code, "message": exc.error.message}


class _Raw(types.Request[dict[str, Any], str]):
    """A request the SDK has no typed call for (the tasks extension)."""


async def _python_scenario(target: Any, mode: str) -> dict[str, Any]:
    report: dict[str, Any] = {"calls": {}, "asked": [], "sampled": 0}

    async def elicit(ctx: Any, params: Any) -> types.ElicitResult:
        report["asked"].append(params.message)
        return types.ElicitResult(action="accept", content={"region": "eu"})

    async def sample(ctx: Any, params: Any) -> types.CreateMessageResult:
        report["sampled"] += 1
        return types.CreateMessageResult(role="assistant", model="test-model",
                                         content=types.TextContent(type="text", text="short"))

    calls = report["calls"]
    anything = TypeAdapter(dict[str, Any])
    with anyio.fail_after(90):
        async with Client(target, mode=mode, elicitation_callback=elicit,  # type: ignore[arg-type]
                          sampling_callback=sample,  # type: ignore[arg-type]
                          read_timeout_seconds=30) as client:
            report["version"] = client.protocol_version
            report["tools"] = sorted(t.name for t in (await client.list_tools()).tools)
            calls["echo"] = await _outcome(client.call_tool("echo", {"text": "hi"}))
            calls["danger"] = await _outcome(client.call_tool("danger", {}))
            report["resources"] = sorted(str(r.uri) for r in
                                         (await client.list_resources()).resources)
            calls["read_open"] = await _outcome(client.read_resource("res://open"))
            calls["read_secret"] = await _outcome(client.read_resource("res://secret"))
            report["prompts"] = sorted(p.name for p in (await client.list_prompts()).prompts)
            calls["prompt"] = await _outcome(client.get_prompt("greeting"))
            calls["ask"] = await _outcome(client.call_tool("ask", {}))
            calls["summarize"] = await _outcome(client.call_tool("summarize", {}))
            listen: dict[str, Any] = {"honored": None, "notified": False, "error": None}
            report["listen"] = listen
            try:
                async with client.listen(tools_list_changed=True) as sub:
                    listen["honored"] = sub.honored.model_dump(by_alias=True,
                                                               exclude_defaults=True)
                    calls["emit"] = await _outcome(client.call_tool("emit", {}))
                    with anyio.move_on_after(10):
                        async for event in sub:
                            if event == ToolsListChanged():
                                listen["notified"] = True
                                break
            except MCPError as exc:
                listen["error"] = {"code": exc.error.code, "message": exc.error.message}
            calls["job"] = await _outcome(client.session.send_request(
                _Raw(method="tools/call", params={"name": "job", "arguments": {}}), anything))
            if calls["job"].get("resultType") == "task":
                calls["task_get"] = await _outcome(client.session.send_request(
                    _Raw(method="tasks/get", params={"taskId": calls["job"]["taskId"]}),
                    anything))
    return report


def _run_ts(*args: str) -> dict[str, Any]:
    proc = subprocess.run([str(harness.NODE22), str(TS_CLIENT), "--modules", str(TS_MODULES),
                           "--mode", MODERN, *args],
                          capture_output=True, text=True, timeout=120, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no report (exit {proc.returncode}): {proc.stderr[-2000:]}"
    report: dict[str, Any] = json.loads(lines[-1])
    assert "error" not in report, report["error"]
    return report


def _ts_problem() -> str | None:
    if not (TS_MODULES / "@modelcontextprotocol" / "client" / "package.json").exists():
        return "the TypeScript SDK v2 client is not installed (scripts/node)"
    return harness.toolchain_problem()


# -- the audit trail ----------------------------------------------------------------------
_COLUMNS = ("seq", "kind", "call_id", "principal", "method", "direction", "tool", "uri",
            "prompt", "request_id", "decision", "rule", "reason", "status", "detail")


def _rows(db: Path, principal: str | None = None, after: int = 0) -> list[dict[str, Any]]:
    if not db.exists():
        return []
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = [dict(zip(_COLUMNS, row, strict=True)) for row in conn.execute(
            f"SELECT {', '.join(_COLUMNS)} FROM events WHERE seq > ? ORDER BY seq", (after,))]
    if principal is None:
        return rows
    # A caller's rows: its own, and the rows of its calls (outcomes, lifecycle).
    calls = {r["call_id"] for r in rows if r["principal"] == principal and r["call_id"]}
    return [r for r in rows if r["principal"] == principal or r["call_id"] in calls or (
        r["detail"] and any(c in r["detail"] for c in calls))]


def _last_seq(db: Path) -> int:
    rows = _rows(db)
    return rows[-1]["seq"] if rows else 0


def _settled(db: Path, principal: str, after: int) -> list[dict[str, Any]]:
    """The caller's rows past ``after`` once the group commits have landed
    (nothing new for 0.5 s)."""
    deadline, last, still = time.monotonic() + 15, -1, time.monotonic()
    while True:
        rows = _rows(db, principal, after)
        if len(rows) != last:
            last, still = len(rows), time.monotonic()
        if time.monotonic() - still > 0.5 or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


# -- the routes -----------------------------------------------------------------------------
class Matrix:
    """One mcpwall serve in front of both servers; wrap runs made on demand; runs cached."""

    def __init__(self, base: str, work: Path) -> None:
        self.base = base
        self.work = work
        self.runs: dict[tuple[str, str], Run] = {}

    def run(self, client: str, route: str) -> Run:
        if (client, route) not in self.runs:
            self.runs[client, route] = self._run(client, route)
        return self.runs[client, route]

    def _run(self, client: str, route: str) -> Run:
        front, era = route.split("-")
        if client == "ts-v2" and (problem := _ts_problem()):
            harness.skip_or_fail(problem)
        if front == "serve":
            db = self.work / "audit.db"
            after = _last_seq(db)  # the runs are one after another: this run's rows follow
            url = harness.endpoint(self.base, "new" if era == "new" else "old")
            if client == "ts-v2":
                report = _run_ts("--url", url, "--token", TOKENS[client])
            else:
                import httpx2
                from mcp.client.streamable_http import streamable_http_client

                http = httpx2.AsyncClient(timeout=30, headers={
                    "authorization": f"Bearer {TOKENS[client]}"})
                target = streamable_http_client(url, http_client=http)
                report = anyio.run(_python_scenario, target, _mode(client), backend="asyncio")
            return Run(report, _settled(db, client, after))
        db = self.work / f"wrap-{client}-{era}.db"
        policy = self.work / "policy.json"
        argv = [*mcpwall_argv(), "wrap", "--audit-db", str(db), "--policy", str(policy),
                "--principal", client, *(["--bridge"] if era == "2025" else []), "--",
                sys.executable, str(SERVER), "--stdio" if era == "new" else "--legacy"]
        if client == "ts-v2":
            report = _run_ts("--stdio", json.dumps(argv))
        else:
            params = StdioServerParameters(command=argv[0], args=argv[1:])
            report = anyio.run(_python_scenario, params, _mode(client), backend="asyncio")
        return Run(report, _rows(db))


def _mode(client: str) -> str:
    return "auto" if client == "py-auto" else MODERN


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Matrix]:
    work = tmp_path_factory.mktemp("matrix")
    (work / "policy.json").write_text(json.dumps(POLICY))
    port = harness.free_port()
    with harness.background([sys.executable, str(SERVER), "--port", str(port)],
                            work / "server.log") as server:
        harness.wait_for_port(port, server, work / "server.log")
        front = harness.free_port()
        lines = ["[listen]", 'host = "127.0.0.1"', f"port = {front}", "",
                 "[policy]", f"files = [{json.dumps(str(work / 'policy.json'))}]", "",
                 "[audit]", f"path = {json.dumps(str(work / 'audit.db'))}", ""]
        for client, token in TOKENS.items():
            lines += ["[[auth.tokens]]",
                      f'sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"',
                      f'principal = "{client}"', f'grant = "{client}-grant"', ""]
        lines += ["[servers.new]", 'transport = "http"',
                  f"url = {json.dumps(f'http://127.0.0.1:{port}/mcp')}", "",
                  "[servers.old]", 'transport = "stdio"', "bridge = true",
                  f"command = {json.dumps(sys.executable)}",
                  f"args = [{json.dumps(str(SERVER))}, \"--legacy\"]", ""]
        config = work / "mcpwall.toml"
        config.write_text("\n".join(lines))
        log = work / "mcpwall.log"
        with harness.background([sys.executable, "-m", "firewall", "serve", str(config)],
                                log, cwd=work) as proc:
            harness.wait_for_port(front, proc, log)
            yield Matrix(f"http://127.0.0.1:{front}", work)


# -- the cells ------------------------------------------------------------------------------
def refused(outcome: dict[str, Any]) -> bool:
    """A call mcpwall refused: a JSON-RPC error, or a tool result saying so."""
    return (not outcome["ok"]) or (outcome["isError"] and
                                   "Refused by mcpwall" in (outcome.get("text") or ""))


def one_call(run: Run, tool: str) -> list[dict[str, Any]]:
    """The decisions of the one call of ``tool``, in order (all its rounds)."""
    ids = {r["call_id"] for r in run.decisions(tool=tool, direction="client")}
    assert len(ids) == 1, f"{tool}: {len(ids)} calls"
    return [r for r in run.rows if r["kind"] == "decision" and r["call_id"] in ids]


def outcome_of(run: Run, rows: list[dict[str, Any]]) -> list[str]:
    return [r["status"] for r in run.kind("outcome") if r["call_id"] == rows[0]["call_id"]]


def check_tools(run: Run, route: str) -> None:
    calls = run.report["calls"]
    assert "danger" not in run.report["tools"] and "echo" in run.report["tools"]
    assert calls["echo"]["ok"] and not calls["echo"]["isError"]
    assert calls["echo"]["text"] == "echo: hi"
    assert refused(calls["danger"])
    [echo] = one_call(run, "echo")
    assert echo["decision"] == "allow"
    [danger] = one_call(run, "danger")
    assert (danger["decision"], danger["rule"]) == ("deny", "tools.danger")
    assert run.decisions(method="tools/list") and all(
        r["decision"] == "allow" for r in run.decisions(method="tools/list"))


def check_resources(run: Run, route: str) -> None:
    calls = run.report["calls"]
    assert "res://open" in run.report["resources"]
    assert calls["read_open"]["ok"] and calls["read_open"]["text"] == "open"
    secret = calls["read_secret"]
    assert not secret["ok"] and secret["code"] == -32001, secret
    assert "Refused by mcpwall" in secret["message"]
    reads = {r["uri"]: r for r in run.decisions(method="resources/read")}
    assert reads["res://open"]["decision"] == "allow"
    assert (reads["res://secret"]["decision"], reads["res://secret"]["rule"]) == (
        "deny", "resources.res://secret")


def check_prompts(run: Run, route: str) -> None:
    assert run.report["prompts"] == ["greeting"]
    prompt = run.report["calls"]["prompt"]
    assert prompt["ok"] and prompt["text"] == "hello"
    [get] = run.decisions(method="prompts/get")
    assert (get["prompt"], get["decision"]) == ("greeting", "allow")


def _check_input(run: Run, route: str, tool: str, method: str, said: str) -> None:
    result = run.report["calls"][tool]
    rows = one_call(run, tool)
    # Both eras give the client the same answer: the server's question went
    # to the client (an MRTR round), and its answer back to the server.
    state = "asked during the call" if route.endswith("2025") else (
        "state ask-1" if tool == "ask" else "state sum-1")
    assert result["ok"] and not result["isError"], result
    assert result["text"] == f"{said} ({state})"
    # One call over two rounds, one call_id: round 1, the input request
    # (decided as the server's), round 2; one outcome; an input_required event.
    assert [(r["method"], r["direction"], r["decision"]) for r in rows] == [
        ("tools/call", "client", "allow"), (method, "server", "allow"),
        ("tools/call", "client", "allow")]
    assert outcome_of(run, rows) == ["ok"]
    assert [e for e in run.kind("input_required") if rows[0]["call_id"] in (e["detail"] or "")]


def check_elicitation(run: Run, route: str) -> None:
    _check_input(run, route, "ask", "elicitation/create", "region eu")
    assert run.report["asked"] == ["Which region?"]


def check_sampling(run: Run, route: str) -> None:
    _check_input(run, route, "summarize", "sampling/createMessage", "summary short")
    assert run.report["sampled"] == 1


def check_listen(run: Run, route: str) -> None:
    listen = run.report["listen"]
    [decision] = run.decisions(method="subscriptions/listen")
    assert decision["decision"] == "allow"
    assert listen["error"] is None, listen
    assert listen["honored"] == {"toolsListChanged": True}
    assert listen["notified"]
    [start] = run.kind("listen_start")
    assert json.loads(start["detail"])["honoured"] == {"toolsListChanged": True}
    ends = [json.loads(e["detail"]) for e in run.kind("listen_end")]
    assert ends and ends[0]["relayed"] >= 1


def check_task(run: Run, route: str) -> None:
    calls = run.report["calls"]
    job = calls["job"]
    [call] = one_call(run, "job")[:1]
    if route.endswith("2025"):
        # GAPS: the server knows no tasks: an ordinary call, its outcome at once.
        assert job["ok"] and job["text"] == "job done inline" and job["resultType"] != "task"
        assert not run.kind("task")
        assert outcome_of(run, [call]) == ["ok"]
        return
    # The handle, then each tasks/get, is a task event of the call.
    events = [json.loads(e["detail"]) for e in run.kind("task")]
    assert {(e["task_id"], e["call_id"]) for e in events} == {("job-1", call["call_id"])}
    if "task_get" not in calls:
        # The TypeScript SDK v2 client (2.4.0) refuses a task handle itself:
        # mcpwall relayed it (the task is recorded, its outcome left open).
        assert not job["ok"] and job["code"] == "UNSUPPORTED_RESULT_TYPE", job
        assert [(e["method"], e["status"]) for e in events] == [("tools/call", "working")]
        assert not outcome_of(run, [call])
        return
    assert [(e["method"], e["status"]) for e in events] == [
        ("tools/call", "working"), ("tasks/get", "completed")]
    assert job["resultType"] == "task" and job["status"] == "working"
    done = calls["task_get"]
    assert done["ok"] and done["status"] == "completed" and done["text"] == "job done as a task"
    [poll] = run.decisions(method="tasks/get")
    assert poll["call_id"] == call["call_id"] and poll["decision"] == "allow"
    assert outcome_of(run, [call]) == ["ok"]


CHECKS = {"tools": check_tools, "resources": check_resources, "prompts": check_prompts,
          "elicitation": check_elicitation, "sampling": check_sampling,
          "listen": check_listen, "task": check_task}


@pytest.mark.parametrize("feature", FEATURES)
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("client", CLIENTS)
def test_cell(matrix: Matrix, client: str, route: str, feature: str) -> None:
    run = matrix.run(client, route)
    assert run.report["version"] == MODERN
    CHECKS[feature](run, route)



DOC_ROUTES = {"`serve`, new revision": "serve-new",
              "`serve`, 2025 only (`bridge = true`)": "serve-2025",
              "`wrap`, new revision": "wrap-new",
              "`wrap`, 2025 only (`--bridge`)": "wrap-2025"}


def test_the_documented_table_is_the_one_tested_here() -> None:
    """docs/protocol.md "Tested clients": a cell other than "pass" is a gap asserted above."""
    text = (Path(__file__).parents[1] / "docs" / "protocol.md").read_text()
    table = text.split("## Tested clients", 1)[1]
    found: dict[tuple[str, str], str] = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] in DOC_ROUTES:
            for feature, cell in zip(FEATURES, cells[1:], strict=True):
                found[DOC_ROUTES[cells[0]], feature] = cell.rstrip("¹²³⁴")
    assert len(found) == len(ROUTES) * len(FEATURES)
    assert {cell for cell, said in found.items() if said != "pass"} == set(GAPS)
