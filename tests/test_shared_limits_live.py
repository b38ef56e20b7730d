"""Rate limits shared by a fleet, end to end: two `mcpwall serve` and one redis-server.

Two real `mcpwall serve` processes (each on a free 127.0.0.1 port, in front of
the bundled demo server) name the same redis-server (password-protected, the
password in an environment variable) in their ``[limits]`` table, with the
seed policy verbatim (10 vm_management calls a minute per grant). Agents are
the `mcp` SDK's streamable HTTP client. The grant's 10 calls are spread over
both instances; the 11th is refused on either with a retry-after; another
grant has its own 10. Then redis-server is killed: the instance with
``on_error = "deny"`` refuses naming the store, the one with
``on_error = "allow"`` lets calls through and says so in the audit trail, both
live on; redis-server restarted on the same port, calls pass again.

`wrap` reads the same table: two clients that each launch the demo server
through `mcpwall wrap --config` under one grant share its ten calls.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from conftest import mcpwall_argv
from redis_process import RedisProcess, TlsFiles, redis_server
from sdk_scenarios import stdio_session
from serve_process import start_serve, stop_serve, tail
from test_serve_policy import (
    CALLERS,
    LIST,
    RULE,
    SEED_POLICY,
    START_SECONDS,
    Gateway,
    agent,
    rows,
    spend_ten_then_limited,
    stop_gracefully,
    text_of,
    write_config,
)

pytestmark = pytest.mark.slow

STORE_DOWN = "rate limit store unavailable"
PASSWORD_ENV = "MCPWALL_TEST_REDIS_PASSWORD"


@asynccontextmanager
async def instance(workdir: Path, redis: RedisProcess, prefix: str, tokens: dict[str, str],
                   on_error: str) -> AsyncIterator[Gateway]:
    """One `mcpwall serve` whose buckets live in ``redis``.

    ``timeout_seconds`` is generous: nothing here tests the timeout (a killed store
    refuses connections at once), and a loaded machine can stall a reply for a second.
    """
    workdir.mkdir()  # noqa: ASYNC240 (a test fixture, once)
    config = write_config(workdir, SEED_POLICY, tokens)
    with config.open("a", encoding="utf-8") as out:
        out.write(f"\n[limits]\nbackend = \"redis\"\nurl = {json.dumps(redis.url)}\n"
                  f"key_prefix = {json.dumps(prefix)}\ntimeout_seconds = 10.0\n"
                  f"on_error = {json.dumps(on_error)}\npassword_env = \"{PASSWORD_ENV}\"\n")
    log = workdir / "serve.log"
    proc, base = await start_serve(workdir, config, log, START_SECONDS)
    try:
        yield Gateway(proc, base, tokens, workdir / "audit.db", log)
    finally:
        with trio.CancelScope(shield=True):
            await stop_serve(proc)


async def call_text(gw: Gateway, key: str) -> tuple[bool, str]:
    """One vm_management call by caller ``key`` in a new session: (is_error, text)."""
    async with agent(gw, key) as session:
        result = await session.call_tool("vm_management", LIST)
        return bool(result.is_error), text_of(result)


async def test_two_instances_share_each_grants_ten_and_survive_the_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = {key: f"tok-{key}-{secrets.token_urlsafe(24)}" for key in CALLERS}
    prefix = f"fleet-{secrets.token_hex(4)}:"
    password = f"pw-{secrets.token_hex(12)}"
    monkeypatch.setenv(PASSWORD_ENV, password)  # the serve processes inherit it
    with redis_server(tmp_path, "--requirepass", password) as redis:
        async with (
            instance(tmp_path / "one", redis, prefix, tokens, "deny") as one,
            instance(tmp_path / "two", redis, prefix, tokens, "allow") as two,
        ):
            # Grant A: five calls through each instance, then both refuse.
            async with agent(one, "A") as a1, agent(two, "A") as a2:
                for i in range(5):
                    for session in (a1, a2):
                        result = await session.call_tool("vm_management", LIST)
                        assert not result.is_error, f"round {i + 1}: {text_of(result)}"
                        assert "web-01" in text_of(result)
                for session in (a1, a2):
                    refused = await session.call_tool("vm_management", LIST)
                    text = text_of(refused)
                    assert refused.is_error and text.startswith(
                        f"Rate limited by mcpwall policy (rule {RULE})"), text
                    assert "Retry after " in text
            # Grant B has its own ten, wherever it calls.
            async with agent(two, "B") as b:
                retry_after = await spend_ten_then_limited(b)
                assert 0 < retry_after <= 6.0
            keys = redis.command("KEYS", f"{prefix}*").splitlines()
            assert len(keys) == 2 and all("grant-a" in k or "grant-b" in k for k in keys)

            # The store dies: "deny" refuses naming it, "allow" passes; both live on.
            redis.stop()
            failed, text = await call_text(one, "C")
            assert failed and STORE_DOWN in text and "limits.on_error = deny" in text, text
            failed, text = await call_text(two, "C")
            assert not failed and "web-01" in text, text
            assert one.proc.poll() is None and two.proc.poll() is None
            for gw in (one, two):
                assert "rate_limit_store_failed" in gw.log.read_text(), tail(gw.log)
                assert password not in gw.log.read_text()

            # Back (empty, same port): grant C pays again through the store.
            redis.start()
            for gw in (one, two):
                failed, text = await call_text(gw, "C")
                assert not failed and "web-01" in text, text
            assert redis.command("KEYS", f"{prefix}*").count("grant-c") == 1

            await stop_gracefully(one)
            await stop_gracefully(two)

    # Audited like any decision: the refusal and the unchecked pass say why.
    denied = rows(one.db, "SELECT decision, reason FROM events WHERE kind = 'decision' "
                          "AND method = 'tools/call' AND reason LIKE ?", f"{STORE_DOWN}%")
    assert [r["decision"] for r in denied] == ["deny"]
    passed = rows(two.db, "SELECT decision, reason FROM events WHERE kind = 'decision' "
                          "AND method = 'tools/call' AND reason LIKE ?", f"{STORE_DOWN}%")
    assert [r["decision"] for r in passed] == ["allow"]
    assert "allowed without a limit check" in passed[0]["reason"]
    limited = rows(one.db, "SELECT retry_after FROM events WHERE kind = 'decision' "
                           "AND decision = 'limited'")
    assert len(limited) == 1 and 0 < limited[0]["retry_after"] <= 6.0


def wrap_config(workdir: Path, redis: RedisProcess, prefix: str) -> Path:
    """A `wrap --config` file: the seed policy, buckets in ``redis``, its own trail.
    With a TLS redis-server: the CA and the client certificate, named relative
    to the file (resolved against its directory, not the working directory)."""
    workdir.mkdir()
    config = workdir / "gw.toml"
    tls = ""
    if redis.tls is not None:
        tls = "".join(f"{key} = {json.dumps(os.path.relpath(path, workdir))}\n" for key, path in (
            ("tls_ca_file", redis.tls.ca), ("tls_cert_file", redis.tls.client_cert),
            ("tls_key_file", redis.tls.client_key)))
    config.write_text(
        f"[policy]\nfiles = [{json.dumps(str(SEED_POLICY))}]\n\n"
        f"[audit]\npath = {json.dumps(str(workdir / 'audit.db'))}\n\n"
        f"[limits]\nbackend = \"redis\"\nurl = {json.dumps(redis.url)}\n"
        f"key_prefix = {json.dumps(prefix)}\ntimeout_seconds = 5.0\n"
        f"password_env = \"{PASSWORD_ENV}\"\n{tls}", encoding="utf-8")
    return config


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "mutual-tls"])
async def test_two_wrapped_clients_share_a_grants_ten(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      tls: bool) -> None:
    """`wrap` reads the same [limits] table: two clients launching their own wrapped
    server under one grant share its ten calls a minute through redis-server
    (also over rediss://, to a redis-server that asks for client certificates)."""
    password = f"pw-{secrets.token_hex(12)}"
    monkeypatch.setenv(PASSWORD_ENV, password)
    env = dict(os.environ)  # the SDK passes only a minimal environment otherwise
    prefix = f"wrap-{secrets.token_hex(4)}:"
    files = TlsFiles(tmp_path) if tls else None
    with redis_server(tmp_path, "--requirepass", password, tls=files,
                      clients_need_certs=tls) as redis:
        configs = [wrap_config(tmp_path / name, redis, prefix) for name in ("one", "two")]
        argv = [[*mcpwall_argv(), "wrap", "--config", str(c), "--grant", "grant-w",
                 "--principal", "agent-w", "--", sys.executable, "-m", "firewall.demo"]
                for c in configs]
        async with stdio_session(argv[0], env) as one, stdio_session(argv[1], env) as two:
            for i in range(5):
                for session in (one, two):
                    result = await session.call_tool("vm_management", LIST)
                    assert not result.is_error, f"round {i + 1}: {text_of(result)}"
            for session in (one, two):
                refused = await session.call_tool("vm_management", LIST)
                text = text_of(refused)
                assert refused.is_error and text.startswith(
                    f"Rate limited by mcpwall policy (rule {RULE})"), text
        keys = redis.command("KEYS", f"{prefix}*").splitlines()
        assert len(keys) == 1 and "grant-w" in keys[0], keys
    for config in configs:  # each trail holds its own five calls and its refusal
        decisions = [r["decision"] for r in rows(
            config.parent / "audit.db",
            "SELECT decision FROM events WHERE kind = 'decision' AND method = 'tools/call' "
            "ORDER BY seq")]
        assert decisions == ["allow"] * 5 + ["limited"], decisions
