"""Slow clients and connection floods against a real `mcpwall serve`, with each parser.

A slowloris client (a request head that never ends, a body that trickles) is
cut with 408 after the configured deadline; with the agents' listener at its
``max_connections``, a new connection gets 503 with ``Retry-After``, ``/healthz``
still answers (on the reserve), and so does the operator listener (its own
budget); an MCP client still gets answers while slow connections are open.
Timing is never asserted: ``fail_after`` scopes only guard against a hang.
"""

from __future__ import annotations

import contextlib
import json
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

from tests.fixtures import conformance_harness as harness

WAIT_SECONDS = 30  # a guard against a hang, not a timing claim
ALLOW_ALL = {"version": "1", "name": "slow-clients", "default": "allow", "tools": {}}


@dataclass
class Gateway:
    host: str
    port: int
    admin_port: int
    log: Path

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"


@contextlib.asynccontextmanager
async def gateway(tmp: Path, parser: str, *, head: float, max_connections: int = 1024,
                  reserve: int = 16) -> AsyncIterator[Gateway]:
    """`mcpwall serve` with the demo server, an operator listener and these limits."""
    policy = tmp / "policy.json"
    policy.write_text(json.dumps(ALLOW_ALL))
    admin_port = harness.free_port()
    config = tmp / "gw.toml"
    config.write_text(
        f'[http]\nparser = "{parser}"\nhead_timeout_seconds = {head}\n'
        f'body_timeout_seconds = {head}\nbody_min_bytes_per_second = 1000\n'
        f'reserve_connections = {reserve}\n'
        f'[listen]\nmax_connections = {max_connections}\n'
        f'[policy]\nfiles = ["{policy}"]\n'
        f'[audit]\npath = "{tmp / "audit.db"}"\n'
        f'[approvals]\npath = "{tmp / "approvals.db"}"\n'
        f'[kill_switch]\npath = "{tmp / "switches.db"}"\n'
        f'[admin]\nport = {admin_port}\ninsecure_no_auth = true\n'
        f'[servers.vm]\ntransport = "stdio"\ncommand = "{sys.executable}"\n'
        'args = ["-m", "firewall.demo"]\n')
    log = tmp / "serve.log"
    proc, base = await start_serve(tmp, config, log)
    try:
        yield Gateway("127.0.0.1", int(base.rsplit(":", 1)[1]), admin_port, log)
    finally:
        with trio.CancelScope(shield=True):
            await stop_serve(proc)


async def connect(gw: Gateway, port: int | None = None) -> trio.SocketStream:
    return await trio.open_tcp_stream(gw.host, port or gw.port)


async def read_all(stream: trio.SocketStream) -> bytes:
    """Everything the server sends until it closes the connection."""
    out = b""
    try:
        while data := await stream.receive_some(65536):
            out += data
    except trio.BrokenResourceError:  # a reset after the answer: what came is kept
        pass
    return out


async def exchange(gw: Gateway, request: bytes, port: int | None = None) -> bytes:
    """One request on a fresh connection that the server closes after answering."""
    async with await connect(gw, port) as stream:
        await stream.send_all(request)
        return await read_all(stream)


def health_request(host: str) -> bytes:
    return f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()


def body_of(response: bytes) -> dict[str, Any]:
    return json.loads(response.split(b"\r\n\r\n", 1)[1])  # type: ignore[no-any-return]


async def test_a_request_head_that_never_ends_is_cut_with_408(
        tmp_path: Path, http_parser: str) -> None:
    async with gateway(tmp_path, http_parser, head=1) as gw:
        with trio.fail_after(WAIT_SECONDS):
            # A fresh connection that sends nothing, and one whose head trickles.
            async with await connect(gw) as silent, await connect(gw) as trickle:
                await trickle.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                answers: list[bytes] = []

                async def drip() -> None:
                    with contextlib.suppress(trio.BrokenResourceError):
                        while True:
                            await trickle.send_all(b"X-A: b\r\n")
                            await trio.sleep(0.2)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(drip)
                    answers.append(await read_all(trickle))
                    nursery.cancel_scope.cancel()
                answers.append(await read_all(silent))
        for answer in answers:
            assert answer.startswith(b"HTTP/1.1 408 "), answer
            assert b"connection: close" in answer.lower()
        # The process lives on and says why it closed them.
        assert (await exchange(gw, health_request(gw.host))).startswith(b"HTTP/1.1 200 ")
        log = gw.log.read_text()
        assert log.count('"request_timeout"') >= 2 and '"owed": "head"' in log


async def test_a_request_body_that_trickles_is_cut_with_408(
        tmp_path: Path, http_parser: str) -> None:
    async with gateway(tmp_path, http_parser, head=1) as gw:
        head = (f"POST /servers/vm/mcp HTTP/1.1\r\nHost: {gw.host}\r\n"
                "Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
                "Content-Length: 100000\r\n\r\n").encode()
        with trio.fail_after(WAIT_SECONDS):
            async with await connect(gw) as stream:
                await stream.send_all(head + b'{"jsonrpc"')
                answer = await read_all(stream)
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert '"owed": "body"' in gw.log.read_text()


async def test_at_the_cap_new_connections_get_503_and_health_still_answers(
        tmp_path: Path, http_parser: str) -> None:
    cap, reserve = 8, 2
    async with gateway(tmp_path, http_parser, head=60, max_connections=cap,
                       reserve=reserve) as gw, contextlib.AsyncExitStack() as held:
        with trio.fail_after(WAIT_SECONDS):
            for _ in range(cap):  # slowloris connections: a head that does not end
                stream = await held.enter_async_context(await connect(gw))
                await stream.send_all(b"GET / HTTP/1.1\r\n")
            # /healthz answers beyond the cap, on the reserve, and says so.
            while True:
                report = body_of(await exchange(gw, health_request(gw.host)))
                if report["connections"]["reserve_open"] >= 1:
                    break
                await trio.sleep(0.05)
            assert report["status"] == "ok"
            assert report["connections"]["open"] == cap
            # Anything else gets 503 with Retry-After, and the connection closes.
            refused = await exchange(gw, (
                f"POST /servers/vm/mcp HTTP/1.1\r\nHost: {gw.host}\r\n"
                "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}").encode())
            assert refused.startswith(b"HTTP/1.1 503 "), refused
            assert b"retry-after: 5" in refused.lower()
            # The operator listener has its own budget: it answers, and its API works.
            async with httpx.AsyncClient(timeout=WAIT_SECONDS) as http:
                admin = f"http://{gw.host}:{gw.admin_port}"
                assert (await http.get(f"{admin}/healthz")).status_code == 200
                assert (await http.get(f"{admin}/readyz")).status_code == 200
            # With the reserve taken too, a new connection is closed at once.
            for _ in range(reserve):
                await held.enter_async_context(await connect(gw))
            while True:
                try:
                    answer = await exchange(gw, health_request(gw.host))
                except (trio.BrokenResourceError, OSError):
                    break
                if not answer.startswith(b"HTTP/1.1 200 "):
                    assert answer in (b"",) or answer.startswith(b"HTTP/1.1 503 "), answer
                    break
                await trio.sleep(0.05)  # the reserve connections are not all accepted yet
        await held.aclose()
        # Once the slow clients are gone, the front serves again.
        with trio.fail_after(WAIT_SECONDS):
            while True:
                # While the closed connections are still being counted down,
                # an answer may be the 503 of a full front: ask again.
                with contextlib.suppress(trio.BrokenResourceError, OSError):
                    answer = await exchange(gw, health_request(gw.host))
                    if (answer.startswith(b"HTTP/1.1 200 ")
                            and body_of(answer)["connections"]["reserve_open"] == 0):
                        break
                await trio.sleep(0.05)


async def test_an_mcp_client_is_answered_while_slowloris_connections_are_open(
        tmp_path: Path, http_parser: str) -> None:
    slow = 200
    async with gateway(tmp_path, http_parser, head=60) as gw, \
            contextlib.AsyncExitStack() as held:
        with trio.fail_after(WAIT_SECONDS * 2):
            for i in range(slow):
                stream = await held.enter_async_context(await connect(gw))
                await stream.send_all(f"POST /servers/vm/mcp HTTP/1.1\r\nX-{i}: ".encode())
            async with (streamable_http_client(f"{gw.base}/servers/vm/mcp") as (read, write),
                        ClientSession(read, write) as session):
                await session.initialize()
                tools = await session.list_tools()
                assert tools.tools
                await session.send_ping()
            report = body_of(await exchange(gw, health_request(gw.host)))
            assert report["connections"]["open"] >= slow
