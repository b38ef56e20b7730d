"""The operator plane through its public faces: a real `mcpwall serve`, real HTTP to the
operator listener, the real MCP SDK client for the agents, the `mcpwall` CLI."""

from __future__ import annotations

import json
import re
import socket
from typing import Any

import httpx
import pytest
import trio
from admin_gateway import (
    ALICE,
    VIEWER,
    WAIT_SECONDS,
    bearer,
    connected,
    gateway,
    pending_approval,
)
from conftest import mcpwall_argv
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures import conformance_harness as harness

pytestmark = pytest.mark.slow

LIST = {"action": "list"}
SECRET = "AKIAIOSFODNN7EXAMPLE"  # an AWS key id: the redaction rules mask it


def text_of(result: Any) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)


async def cli(*args: str, env_token: str = ALICE, check: bool = False
              ) -> trio.CompletedProcess[bytes]:
    import os

    env = {**os.environ, "MCPWALL_ADMIN_TOKEN": env_token}
    return await trio.run_process([*mcpwall_argv(), *args], capture_stdout=True,
                                  capture_stderr=True, check=check, env=env)


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` (0 if none)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


async def test_operator_requests_need_a_valid_token(tmp_path: Any) -> None:
    async with gateway(tmp_path) as gw, httpx.AsyncClient(timeout=WAIT_SECONDS) as http:
        for path in ("/api/approvals", "/api/kill-switch", "/api/sessions", "/metrics",
                     "/api/decisions"):
            anon = await http.get(gw.admin + path)
            assert anon.status_code == 401, path
            assert anon.headers["www-authenticate"].startswith("Bearer")
            assert "unauthorized" in anon.json()["error"]
            wrong = await http.get(gw.admin + path, headers=bearer("not-a-token"))
            assert wrong.status_code == 401
            assert wrong.json()["error"] == "unauthorized: unknown operator token"
        # A viewer reads but cannot change anything.
        assert (await http.get(f"{gw.admin}/api/kill-switch", headers=bearer(VIEWER))
                ).status_code == 200
        refused = await http.post(f"{gw.admin}/api/kill-switch", headers=bearer(VIEWER),
                                  json={"scope": "global"})
        assert refused.status_code == 403 and "viewer" in refused.json()["error"]
        # A web page elsewhere cannot drive the API, even with a token in hand.
        foreign = await http.post(f"{gw.admin}/api/kill-switch", json={"scope": "global"},
                                  headers={**bearer(), "Origin": "http://evil.example"})
        assert foreign.status_code == 403
        bad = await http.post(f"{gw.admin}/api/kill-switch", headers=bearer(),
                              json={"scope": "server"})
        assert bad.status_code == 400 and "name" in bad.json()["error"]
        assert (await http.get(f"{gw.admin}/api/kill-switch", headers=bearer())
                ).json() == {"switches": []}
        # The agents' listener has no operator endpoint, the operator one no MCP endpoint.
        assert (await http.get(f"{gw.base}/api/approvals", headers=bearer())).status_code == 404
        assert (await http.post(f"{gw.admin}/servers/vm/mcp", headers=bearer(), json={})
                ).status_code == 404
        assert (await http.get(f"{gw.admin}/healthz")).json() == {"status": "ok"}
        # The CLI says what went wrong and exits 2 with a refused token.
        done = await cli("kill-switch", "status", "--admin-url", gw.admin, env_token="nope")
        assert done.returncode == 2 and b"401" in done.stderr


async def test_kill_switch_denies_a_real_client_at_once_and_is_reversible(
        tmp_path: Any) -> None:
    async with connected(tmp_path) as (gw, http, session):
        assert not (await session.call_tool("vm_management", LIST)).is_error
        before = (await http.get(f"{gw.admin}/metrics", headers=bearer())).text
        on = await cli("kill-switch", "on", "--server", "vm", "--comment", "INC-42 runaway",
                       "--admin-url", gw.admin, check=True)
        assert on.stdout.decode().strip() == "kill switch on for server vm by alice: INC-42 runaway"
        denied = await session.call_tool("vm_management", LIST)
        assert denied.is_error
        assert "kill switch on for server vm by alice: INC-42 runaway" in text_of(denied)
        status = await cli("kill-switch", "status", "--json", "--admin-url", gw.admin,
                           check=True)
        switches = json.loads(status.stdout)["switches"]
        assert [(s["scope"], s["name"], s["by"]) for s in switches] == [("server", "vm", "alice")]
        after = (await http.get(f"{gw.admin}/metrics", headers=bearer())).text
        assert metric(after, "mcpwall_kill_switches") == 1
        deny = {"server": "vm", "tool": "vm_management", "decision": "deny"}
        assert metric(after, "mcpwall_calls_total", **deny) == \
            metric(before, "mcpwall_calls_total", **deny) + 1
        off = await http.request("DELETE", f"{gw.admin}/api/kill-switch", headers=bearer(),
                                 json={"scope": "server", "name": "vm", "comment": "fixed"})
        assert off.status_code == 200 and off.json()["state"] == "off"
        assert not (await session.call_tool("vm_management", LIST)).is_error
        again = await cli("kill-switch", "off", "--server", "vm", "--admin-url", gw.admin)
        assert again.returncode == 1 and b"not on" in again.stderr
        rows = await gw.audit_until(
            "SELECT json_extract(detail, '$.state') AS state, json_extract(detail, '$.by') AS by,"
            " server FROM events WHERE kind = 'kill_switch' ORDER BY seq", count=2)
        assert [(r["state"], r["by"], r["server"]) for r in rows] == [
            ("on", "alice", "vm"), ("off", "alice", "vm")]
        refused = gw.audit_rows("SELECT decision, reason FROM events WHERE kind = 'decision' "
                                "AND rule = 'kill-switch'")
        assert [r["decision"] for r in refused] == ["deny"]
        assert "by alice: INC-42 runaway" in refused[0]["reason"]


async def test_principal_and_global_switches(tmp_path: Any) -> None:
    async with connected(tmp_path) as (gw, http, session):
        other = await http.post(f"{gw.admin}/api/kill-switch", headers=bearer(),
                                json={"scope": "principal", "name": "someone-else"})
        assert other.status_code == 200
        assert not (await session.call_tool("vm_management", LIST)).is_error
        await http.post(f"{gw.admin}/api/kill-switch", headers=bearer(),
                        json={"scope": "principal", "name": "anonymous"})
        assert "principal anonymous" in text_of(await session.call_tool("vm_management", LIST))
        await http.request("DELETE", f"{gw.admin}/api/kill-switch?scope=principal&name=anonymous",
                           headers=bearer())
        await http.post(f"{gw.admin}/api/kill-switch", headers=bearer(), json={})
        assert "the whole firewall" in text_of(await session.call_tool("vm_management", LIST))
        assert (await http.request("DELETE", f"{gw.admin}/api/kill-switch", headers=bearer())
                ).status_code == 200
        assert not (await session.call_tool("vm_management", LIST)).is_error


async def test_approve_and_reject_through_the_api_release_held_calls(tmp_path: Any) -> None:
    results: list[Any] = []
    async with connected(tmp_path) as (gw, http, session):

        async def call(name: str) -> None:
            arguments = {"action": "delete", "vm_name": name, "use_case": f"key {SECRET}"}
            results.append(await session.call_tool("vm_management", arguments))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, "db-01")
            held = await pending_approval(gw)
            assert held["target"] == "vm_management" and held["server"] == "vm"
            assert held["arguments"]["vm_name"] == "db-01"
            assert SECRET not in json.dumps(held)  # redacted before it reaches anyone
            metrics = (await http.get(f"{gw.admin}/metrics", headers=bearer())).text
            assert metric(metrics, "mcpwall_approvals_pending") == 1
            listed = await cli("approvals", "list", "--admin-url", gw.admin, check=True)
            assert held["id"] in listed.stdout.decode()
            done = await cli("approvals", "approve", held["id"], "--comment", "ticket OPS-1",
                             "--admin-url", gw.admin, "--json", check=True)
            assert json.loads(done.stdout)["decided_by"] == "alice"
        assert not results[0].is_error
        twice = await http.post(f"{gw.admin}/api/approvals/{held['id']}/reject",
                                headers=bearer(), json={})
        assert twice.status_code == 409 and "already approved" in twice.json()["error"]
        unknown = await cli("approvals", "reject", "feedbeef", "--admin-url", gw.admin)
        assert unknown.returncode == 1 and b"no approval request" in unknown.stderr

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, "db-02")
            with trio.fail_after(20):
                while True:
                    pending = (await http.get(f"{gw.admin}/api/approvals",
                                              headers=bearer())).json()["approvals"]
                    if pending:
                        break
                    await trio.sleep(0.1)
            answer = await http.post(f"{gw.admin}/api/approvals/{pending[0]['id']}/reject",
                                     headers=bearer(), json={"comment": "use a snapshot",
                                                             "by": "bob"})
            assert answer.status_code == 200
            assert answer.json()["approval"]["decided_by"] == "bob via alice"
        assert results[1].is_error and "use a snapshot" in text_of(results[1])

        rows = await gw.audit_until(
            "SELECT json_extract(detail, '$.by') AS by FROM events WHERE kind = 'approval' "
            "AND json_extract(detail, '$.approval') IS NOT NULL ORDER BY seq", count=2)
        assert [r["by"] for r in rows] == ["alice", "bob via alice"]

        # An approval through the API may stand for the rest of the session.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, "db-03")
            ident = (await pending_approval(gw))["id"]
            bad = await http.post(f"{gw.admin}/api/approvals/{ident}/reject",
                                  headers=bearer(), json={"scope": "session"})
            assert bad.status_code == 400 and "one call" in bad.json()["error"]
            bad = await http.post(f"{gw.admin}/api/approvals/{ident}/approve",
                                  headers=bearer(), json={"scope": "forever"})
            assert bad.status_code == 400
            answer = await http.post(f"{gw.admin}/api/approvals/{ident}/approve",
                                     headers=bearer(), json={"scope": "session"})
            assert answer.status_code == 200 and answer.json()["approval"]["scope"] == "session"
        # Forwarded: the demo server itself answers (it has no such VM).
        assert "no VM named 'db-03'" in text_of(results[2])
        with trio.fail_after(20):
            await call("db-04")  # let through by the standing approval: nobody is asked
        assert "no VM named 'db-04'" in text_of(results[3])


async def test_metrics_parse_and_count_decisions_outcomes_and_sessions(tmp_path: Any) -> None:
    async with connected(tmp_path) as (gw, http, session):
        first = await http.get(f"{gw.admin}/metrics", headers=bearer())
        assert first.headers["content-type"].startswith("text/plain; version=0.0.4")
        for _ in range(3):
            await session.call_tool("vm_management", LIST)
        text = (await http.get(f"{gw.admin}/metrics", headers=bearer())).text
        families = {f.name: f.type for f in text_string_to_metric_families(text)}
        assert families["mcpwall_calls"] == "counter"
        assert families["mcpwall_call_latency_seconds"] == "histogram"
        assert families["mcpwall_audit_queue_depth"] == "gauge"
        allow = {"server": "vm", "tool": "vm_management", "decision": "allow"}
        assert metric(text, "mcpwall_calls_total", **allow) == \
            metric(first.text, "mcpwall_calls_total", **allow) + 3
        assert metric(text, "mcpwall_call_latency_seconds_count", server="vm") >= 3
        assert metric(text, "mcpwall_outcomes_total", server="vm", status="ok") >= 3
        assert metric(text, "mcpwall_sessions", server="vm") == 1
        assert metric(text, "mcpwall_call_latency_seconds_bucket", server="vm", le="+Inf") == \
            metric(text, "mcpwall_call_latency_seconds_count", server="vm")


async def test_sessions_policy_reload_decisions_search_and_events(tmp_path: Any) -> None:
    async with connected(tmp_path) as (gw, http, session):
        frames: list[str] = []
        decided = trio.Event()

        async def listen(task_status: trio.TaskStatus[None]) -> None:
            async with http.stream("GET", f"{gw.admin}/api/events", headers=bearer(),
                                   timeout=None) as stream:
                task_status.started()
                async for line in stream.aiter_lines():
                    frames.append(line)
                    if '"decision":"allow"' in line and '"tool":"vm_management"' in line:
                        decided.set()

        async with trio.open_nursery() as nursery:
            await nursery.start(listen)
            await session.call_tool("vm_management", {"action": "info", "vm_name": "web-7"})
            with trio.fail_after(WAIT_SECONDS):
                await decided.wait()
            nursery.cancel_scope.cancel()
        assert "event: hello" in frames
        assert not any("web-7" in f for f in frames)  # the feed carries no arguments

        found = (await http.get(f"{gw.admin}/api/audit/search", headers=bearer(),
                                params={"q": "web-7"})).json()["calls"]
        assert [c["tool"] for c in found] == ["vm_management"]
        recent = (await http.get(f"{gw.admin}/api/decisions?limit=2", headers=bearer())
                  ).json()["decisions"]
        assert len(recent) == 2 and recent[0]["ts_ns"] >= recent[1]["ts_ns"]
        bad = await http.get(f"{gw.admin}/api/decisions?limit=x", headers=bearer())
        assert bad.status_code == 400 and "limit" in bad.json()["error"]

        reload = await http.post(f"{gw.admin}/api/policy/reload", headers=bearer())
        assert reload.status_code == 200 and reload.json()["ok"] is True
        await gw.audit_until("SELECT 1 FROM events WHERE kind = 'policy_reload' "
                             "AND json_extract(detail, '$.by') = 'alice'")

        sessions = (await http.get(f"{gw.admin}/api/sessions", headers=bearer())).json()
        [one] = sessions["sessions"]
        assert one["server"] == "vm" and one["principal"] == "anonymous"
        ended = await http.delete(f"{gw.admin}/api/sessions/{one['id']}", headers=bearer())
        assert ended.status_code == 200
        assert (await http.delete(f"{gw.admin}/api/sessions/{one['id']}", headers=bearer())
                ).status_code == 404
        assert (await http.get(f"{gw.admin}/api/sessions", headers=bearer())
                ).json() == {"sessions": []}
        await gw.audit_until("SELECT 1 FROM events WHERE kind = 'session_end' "
                             "AND json_extract(detail, '$.reason') = 'ended by operator alice'")


async def test_readyz_reports_a_dead_upstream(tmp_path: Any) -> None:
    dead_port = harness.free_port()
    servers = (f'[servers.vm]\ntransport = "http"\nurl = "http://127.0.0.1:{dead_port}/mcp"\n'
               '[servers.gone]\ntransport = "stdio"\ncommand = "no-such-mcp-server-binary"\n')
    async with gateway(tmp_path, servers) as gw, \
            httpx.AsyncClient(timeout=WAIT_SECONDS) as http:
        anon = await http.get(f"{gw.admin}/readyz")
        assert anon.status_code == 503 and anon.json()["status"] == "unready"
        checks = anon.json()["checks"]
        assert checks["audit"] == {"ok": True} and checks["front"] == {"ok": True}
        assert checks["upstream:vm"] == {"ok": False}  # no details without a token
        detailed = (await http.get(f"{gw.admin}/readyz", headers=bearer())).json()["checks"]
        assert re.search(rf"127\.0\.0\.1:{dead_port}", detailed["upstream:vm"]["error"])
        assert "not found on PATH" in detailed["upstream:gone"]["error"]
        metrics = (await http.get(f"{gw.admin}/metrics", headers=bearer())).text
        assert "mcpwall_calls_total" in metrics


async def test_console_login_csrf_and_escaping_over_http(tmp_path: Any) -> None:
    payload = '<img src=x onerror="window.__xss=1">&"\'</td>'
    async with connected(tmp_path) as (gw, http, session):
        login_form = await http.get(f"{gw.admin}/")
        assert login_form.status_code == 200 and 'name="token"' in login_form.text
        refused = await http.post(f"{gw.admin}/login", data={"token": "wrong"})
        assert refused.status_code == 401 and "Unknown operator token" in refused.text
        assert "set-cookie" not in refused.headers
        ok = await http.post(f"{gw.admin}/login", data={"token": ALICE})
        assert ok.status_code == 303
        cookie = ok.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and ALICE not in cookie
        async with trio.open_nursery() as nursery:
            nursery.start_soon(session.call_tool, "vm_management",
                               {"action": "delete", "vm_name": payload})
            held = await pending_approval(gw)
            page = await http.get(f"{gw.admin}/")
            assert page.status_code == 200
            assert "script-src 'self'" in page.headers["content-security-policy"]
            assert payload not in page.text and "<img" not in page.text
            assert "&lt;img src=x onerror=" in page.text and "&lt;/td&gt;" in page.text
            csrf = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
            assert csrf is not None
            url = f"{gw.admin}/api/approvals/{held['id']}/reject"
            no_csrf = await http.post(url, json={})
            assert no_csrf.status_code == 403 and "CSRF" in no_csrf.json()["error"]
            not_json = await http.post(url, data={"a": "b"},
                                       headers={"X-CSRF-Token": csrf.group(1)})
            assert not_json.status_code == 415
            done = await http.post(url, json={"comment": "no"},
                                   headers={"X-CSRF-Token": csrf.group(1)})
            assert done.status_code == 200
        assert (await http.get(f"{gw.admin}/api/approvals")).json() == {"approvals": []}


async def test_an_operator_port_in_use_is_a_clear_error(tmp_path: Any) -> None:
    from admin_gateway import config_text

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "gw.toml"
        config.write_text(config_text(tmp_path, port))
        with trio.fail_after(30):
            done = await trio.run_process(
                [*mcpwall_argv(), "serve", str(config), "--port", str(harness.free_port())],
                capture_stdout=True, capture_stderr=True, check=False)
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port} ([admin])" in done.stderr.decode()
