"""A real `mcpwall serve` with an operator listener, for the admin API and console tests."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from serve_process import start_serve, stop_serve

from firewall.identity import hash_token
from tests.fixtures import conformance_harness as harness

# How long a test waits for the gateway to come up, answer or record something: a
# guard against a hang, not a timing claim (a loaded CI machine can stall for seconds).
WAIT_SECONDS = 30
ALICE = "alice-operator-token"
VIEWER = "viewer-token"
HOLD_POLICY = {
    "version": "1", "name": "admin-test", "default": "allow",
    "tools": {"vm_management": {"rules": [
        {"name": "hold-deletes", "when": {"action": {"const": "delete"}},
         "action": "require_approval", "reason": "deleting a VM destroys its disks"}]}},
}


@dataclass
class Gateway:
    """A running gateway: the agents' base URL, the operator base URL, its files."""

    base: str
    admin: str
    tmp: Path

    @property
    def mcp_url(self) -> str:
        return f"{self.base}/servers/vm/mcp"

    def audit_rows(self, sql: str, *params: Any) -> list[sqlite3.Row]:
        conn = sqlite3.connect(f"file:{self.tmp / 'audit.db'}?mode=ro", uri=True)
        conn.row_factory = sqlite3.Row
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    async def audit_until(self, sql: str, *params: Any, count: int = 1) -> list[sqlite3.Row]:
        """Poll the audit trail until ``sql`` returns at least ``count`` rows."""
        with trio.fail_after(WAIT_SECONDS):
            while True:
                rows = self.audit_rows(sql, *params)
                if len(rows) >= count:
                    return rows
                await trio.sleep(0.1)


def bearer(token: str = ALICE) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def config_text(tmp: Path, admin_port: int, servers: str | None = None,
                extra_admin: str = "") -> str:
    policy = tmp / "policy.json"
    policy.write_text(json.dumps(HOLD_POLICY))
    servers = servers if servers is not None else (
        f'[servers.vm]\ntransport = "stdio"\ncommand = "{sys.executable}"\n'
        'args = ["-m", "firewall.demo"]\n')
    return (f'[policy]\nfiles = ["{policy}"]\n'
            f'[audit]\npath = "{tmp / "audit.db"}"\n'
            f'[approvals]\npath = "{tmp / "approvals.db"}"\npoll_seconds = 0.1\n'
            f'[admin]\nport = {admin_port}\n{extra_admin}'
            f'[[admin.tokens]]\nsha256 = "{hash_token(ALICE)}"\noperator = "alice"\n'
            f'[[admin.tokens]]\nsha256 = "{hash_token(VIEWER)}"\noperator = "vic"\n'
            'role = "viewer"\n' + servers)


@contextlib.asynccontextmanager
async def gateway(tmp: Path, servers: str | None = None, extra: str = "",
                  extra_admin: str = "") -> AsyncIterator[Gateway]:
    """`mcpwall serve` with the hold-deletes policy and an operator listener.

    ``extra``: TOML tables added to the config (``[kill_switch]``, say);
    ``extra_admin``: keys added to its ``[admin]`` table.
    """
    admin_port = harness.free_port()
    config = tmp / "gw.toml"
    config.write_text(extra + config_text(tmp, admin_port, servers, extra_admin))
    proc, base = await start_serve(tmp, config, tmp / "serve.log")
    admin = f"http://127.0.0.1:{admin_port}"
    try:
        async with httpx.AsyncClient(timeout=WAIT_SECONDS) as http:
            with trio.fail_after(WAIT_SECONDS):
                while True:
                    try:
                        if (await http.get(f"{admin}/healthz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await trio.sleep(0.05)
        yield Gateway(base, admin, tmp)
    finally:
        with trio.CancelScope(shield=True):
            await stop_serve(proc)


@contextlib.asynccontextmanager
async def connected(tmp: Path) -> AsyncIterator[tuple[Gateway, httpx.AsyncClient, ClientSession]]:
    """A gateway, an HTTP client for its operator API and an initialized SDK session."""
    async with (
        gateway(tmp) as gw,
        httpx.AsyncClient(timeout=WAIT_SECONDS) as http,
        streamable_http_client(gw.mcp_url) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield gw, http, session


async def pending_approval(gw: Gateway) -> dict[str, Any]:
    """Wait until the API lists a pending approval; return the newest."""
    async with httpx.AsyncClient(timeout=WAIT_SECONDS) as http:
        with trio.fail_after(WAIT_SECONDS):
            while True:
                answer = (await http.get(f"{gw.admin}/api/approvals", headers=bearer())).json()
                if answer["approvals"]:
                    return answer["approvals"][0]  # type: ignore[no-any-return]
                await trio.sleep(0.1)
