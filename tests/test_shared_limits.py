"""Token buckets in Redis (firewall.gateway.shared_limits) against a real redis-server.

The Lua limiter must agree with MemoryLimiter (the reference) step for step on
random sequences under an explicit clock; then all-or-nothing, retry_after,
expiry, look-only calls, Redis's own clock shared by two limiters, failures
(down, silent, wrong password) and recovery, the engine's pending limits, and
the ``[limits]`` config table.
"""

from __future__ import annotations

import json
import secrets
import ssl
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis_process import RedisProcess, TlsFiles, redis_server

from firewall.config import ConfigError, load_config, parse_config
from firewall.gateway.runtime import shared_limiter
from firewall.gateway.shared_limits import RedisLimiter
from firewall.policy.compiler import compile_policy
from firewall.policy.decision import DENY, LIMITED, Caller, Decision
from firewall.policy.engine import Engine
from firewall.policy.limits import (
    BucketSpec,
    MemoryLimiter,
    PendingLimit,
    StoreUnavailable,
)
from firewall.policy.schema import parse_policy
from firewall.protocol import mcp
from firewall.protocol.resp import (
    NEED_DATA,
    ReplyParser,
    RespError,
    RespProtocolError,
    encode_command,
)
from firewall.settings.limits import LimitSettings, parse_url

SPECS = [BucketSpec("a", "grant", 3, 60.0), BucketSpec("b", "session", 5, 10.5),
         BucketSpec("c", "agent", 1, 3600.0), BucketSpec("d", "grant", 2, 86400.0)]


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


class Clock:
    """An explicit clock both limiters read."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def limiter(redis: RedisProcess, clock: Clock | None = None, **kw: object) -> RedisLimiter:
    # Correctness tests, not timeout tests: a loaded machine can stall a reply well past
    # the production default of 0.25 s, which would turn into a refusal here.
    kw.setdefault("timeout", 10.0)
    kw.setdefault("key_prefix", f"t{secrets.token_hex(6)}:")
    return RedisLimiter(parse_url(redis.url), clock=clock, **kw)  # type: ignore[arg-type]


# -- the RESP codec ----------------------------------------------------------------------

def test_resp_replies_arrive_whole_however_the_bytes_are_split() -> None:
    wire = (b"+OK\r\n-NOSCRIPT No matching script\r\n:42\r\n$-1\r\n$3\r\nabc\r\n"
            b"*2\r\n$1\r\nx\r\n:7\r\n")
    parser = ReplyParser()
    got = []
    for i in range(len(wire)):  # one byte at a time
        parser.feed(wire[i:i + 1])
        while (reply := parser.next_reply()) is not NEED_DATA:
            got.append(reply)
    assert got == [b"OK", RespError("NOSCRIPT No matching script"), 42, None, b"abc",
                   [b"x", 7]]
    assert got[1].kind == "NOSCRIPT"
    assert encode_command("GET", b"k", 3) == b"*3\r\n$3\r\nGET\r\n$1\r\nk\r\n$1\r\n3\r\n"


def _wire(reply: object) -> bytes:
    # The reference encoder for replies: what redis-server sends.
    if reply is None:
        return b"$-1\r\n"
    if isinstance(reply, int):
        return b":%d\r\n" % reply
    if isinstance(reply, bytes):
        return b"$%d\r\n%s\r\n" % (len(reply), reply)
    if isinstance(reply, RespError):
        return b"-%s\r\n" % reply.message.encode()
    assert isinstance(reply, list)
    return b"*%d\r\n" % len(reply) + b"".join(_wire(r) for r in reply)


replies = st.recursive(
    st.none() | st.integers(-(2**63), 2**63 - 1) | st.binary(max_size=40)
    | st.sampled_from(["NOSCRIPT No matching script", "ERR wrong", "BUSY"]).map(RespError),
    lambda inner: st.lists(inner, max_size=4), max_leaves=8)


@settings(max_examples=80, deadline=None)
@given(st.lists(replies, min_size=1, max_size=4), st.data())
def test_resp_parser_reads_back_any_split_of_any_replies(sent: list[object],
                                                         data: st.DataObject) -> None:
    wire = b"".join(_wire(r) for r in sent)
    cuts = sorted(data.draw(st.sets(st.integers(0, len(wire)), max_size=6)))
    parser = ReplyParser()
    got: list[object] = []
    for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        parser.feed(wire[a:b])
        while (reply := parser.next_reply()) is not NEED_DATA:
            got.append(reply)
    assert got == sent


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=60))
def test_resp_parser_garbage_is_a_protocol_error_or_more_data(junk: bytes) -> None:
    parser = ReplyParser()
    parser.feed(junk)
    try:
        while parser.next_reply() is not NEED_DATA:
            pass
    except RespProtocolError:
        pass


# -- agreement with the reference ------------------------------------------------------

steps = st.lists(st.tuples(st.floats(0, 120, allow_nan=False),   # time passes
                           st.sets(st.integers(0, 3), min_size=1, max_size=3),  # buckets
                           st.sampled_from(["g1", "g2"]),          # scope value
                           st.booleans()),                         # debit
                 min_size=1, max_size=40)


@pytest.mark.slow
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps)
def test_lua_limiter_agrees_with_memory_limiter(redis: RedisProcess,
                                                seq: list[tuple[float, set[int], str, bool]]
                                                ) -> None:
    clock = Clock()
    memory = MemoryLimiter(clock=clock)
    shared = limiter(redis, clock)

    async def run() -> None:
        for dt, which, value, debit in seq:
            clock.now += dt
            requests = [(SPECS[i].key(value), SPECS[i]) for i in sorted(which)]
            want = memory.acquire(requests, debit=debit)
            got = await shared.acquire(requests, debit=debit)
            assert (got is None) == (want is None), (got, want)
            if want is not None:
                assert got == pytest.approx(want, rel=1e-12)
        await shared.aclose()

    trio.run(run)


# -- the rules, one by one ----------------------------------------------------------------

@pytest.mark.slow
async def test_all_or_nothing_and_retry_after(redis: RedisProcess) -> None:
    clock = Clock()
    shared = limiter(redis, clock)
    two = BucketSpec("pair", "grant", 2, 60.0)     # 2 a minute: a token every 30 s
    many = BucketSpec("many", "grant", 100, 60.0)
    both = [(two.key("g"), two), (many.key("g"), many)]
    assert await shared.acquire(both) is None
    assert await shared.acquire(both) is None
    assert await shared.acquire(both) == pytest.approx(30.0)
    # The refused call took nothing from the bucket that could pay: 98 left.
    for _ in range(98):
        assert await shared.acquire([(many.key("g"), many)]) is None
    assert await shared.acquire([(many.key("g"), many)]) == pytest.approx(0.6)
    clock.now += 30.0
    assert await shared.acquire([(two.key("g"), two)]) is None
    assert await shared.acquire([(two.key("g"), two)]) == pytest.approx(30.0)
    await shared.aclose()


@pytest.mark.slow
async def test_look_only_takes_nothing_and_writes_nothing(redis: RedisProcess) -> None:
    shared = limiter(redis, Clock())
    spec = BucketSpec("peek", "grant", 1, 60.0)
    req = [(spec.key("g"), spec)]
    for _ in range(3):
        assert await shared.acquire(req, debit=False) is None
    assert redis.command("EXISTS", shared.key_prefix + spec.key("g")) == "0"
    assert await shared.acquire(req) is None
    assert await shared.acquire(req, debit=False) == pytest.approx(60.0)
    await shared.aclose()


@pytest.mark.slow
async def test_keys_expire_a_window_after_the_last_debit(redis: RedisProcess) -> None:
    shared = limiter(redis)  # Redis's own clock
    # A window long enough that redis-cli reads the TTL before the key goes, even
    # when a loaded machine takes a while to start it (a 0.2 s window did not).
    spec = BucketSpec("short", "grant", 1, 2.0)
    key = shared.key_prefix + spec.key("g")
    assert await shared.acquire([(spec.key("g"), spec)]) is None
    assert 0 < int(redis.command("PTTL", key)) <= 2000
    hour = BucketSpec("long", "grant", 10, 3600.0)
    assert await shared.acquire([(hour.key("g"), hour)]) is None
    assert 3_590_000 < int(redis.command("PTTL", shared.key_prefix + hour.key("g"))) <= 3_600_000
    await trio.sleep(2.1)  # past the window: Redis expires on its own clock, whatever the load
    assert redis.command("EXISTS", key) == "0"  # full again: the same as absent
    assert await shared.acquire([(spec.key("g"), spec)]) is None
    await shared.aclose()


@pytest.mark.slow
async def test_two_limiters_share_buckets_on_redis_time(redis: RedisProcess) -> None:
    one = limiter(redis)
    other = limiter(redis, key_prefix=one.key_prefix)
    spec = BucketSpec("fleet", "grant", 3, 60.0)  # a token every 20 s
    req = [(spec.key("g"), spec)]
    started = trio.current_time()
    assert await one.acquire(req) is None
    assert await other.acquire(req) is None
    assert await one.acquire(req) is None
    wait = await other.acquire(req)
    # 20 s less what Redis's clock refilled since the first debit (at most the time
    # these four round trips took, which a loaded machine can stretch).
    elapsed = trio.current_time() - started
    assert wait is not None and 20.0 - elapsed - 0.01 <= wait <= 20.0
    assert await other.acquire([(spec.key("another grant"), spec)]) is None
    await one.aclose()
    await other.aclose()


# -- failures -----------------------------------------------------------------------------

VM_POLICY = parse_policy(json.dumps({"version": "1", "default": "deny", "tools": {
    "vm_management": {"limits": [{"counter": "vm", "window": "minute", "max": 2,
                                  "scope": "grant"}]},
    "free": {}}}))


def call(tool: str) -> mcp.Call:
    return mcp.Call(mcp.TOOLS_CALL, tool=tool, arguments={})


@pytest.mark.slow
async def test_store_down_refuses_then_recovers_after_restart(tmp_path: Path) -> None:
    with redis_server(tmp_path) as redis:
        # A clock that stands still: the retry-after at the end is exactly 30 s, however
        # long a loaded machine takes between the calls.
        shared = limiter(redis, Clock())
        engine = Engine(compile_policy(VM_POLICY), shared)
        alice = Caller("alice", "grant-a")
        pending = engine.decide(call("vm_management"), alice, "vm", "s1")
        assert type(pending) is PendingLimit and not pending.enforced_allow
        assert (await pending.settle()).action == "allow"
        redis.stop()
        refused = await engine.decide(call("vm_management"), alice, "vm", "s1").settle()  # type: ignore[attr-defined]
        assert refused.action == DENY and refused.rule == "tools.vm_management"
        assert refused.reason is not None
        assert refused.reason.startswith("rate limit store unavailable (cannot reach Redis")
        shared.on_error = "allow"
        passed = await engine.decide(call("vm_management"), alice, "vm", "s1").settle()  # type: ignore[attr-defined]
        assert passed.action == "allow" and "allowed without a limit check" in (passed.reason or "")
        shared.on_error = "deny"
        redis.start()  # same port, empty: no buckets, no scripts (NOSCRIPT -> EVAL)
        for _ in range(2):
            assert (await engine.decide(call("vm_management"), alice, "vm", "s1")  # type: ignore[attr-defined]
                    .settle()).action == "allow"
        limited = await engine.decide(call("vm_management"), alice, "vm", "s1").settle()  # type: ignore[attr-defined]
        assert limited.action == LIMITED and limited.retry_after == pytest.approx(30.0)
        await shared.aclose()


async def test_a_silent_store_times_out() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    accepted = []

    async def hold(stream: trio.SocketStream) -> None:
        accepted.append(stream)
        await trio.sleep_forever()  # reads nothing, answers nothing

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, hold, listeners)
        shared = RedisLimiter(parse_url(f"redis://127.0.0.1:{port}"), timeout=0.1)
        spec = BucketSpec("x", "grant", 1, 60.0)
        with pytest.raises(StoreUnavailable, match=r"no answer within 0.1 s"):
            await shared.acquire([(spec.key("g"), spec)])
        assert accepted and not shared._idle  # the connection was dropped, not reused
        busy = RedisLimiter(parse_url(f"redis://127.0.0.1:{port}"), timeout=0.1,
                            max_connections=1)
        busy._slots.acquire_nowait()  # another call holds the only connection
        with pytest.raises(StoreUnavailable, match=r"all 1 connections busy for 0.1 s"):
            await busy.acquire([(spec.key("g"), spec)])
        nursery.cancel_scope.cancel()


@pytest.mark.slow
async def test_password_from_the_environment_and_never_shown(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    secret = f"pw-{secrets.token_hex(8)}"
    with redis_server(tmp_path, "--requirepass", secret) as redis:
        spec = BucketSpec("x", "grant", 1, 60.0)
        monkeypatch.setenv("TEST_REDIS_PASSWORD", secret)
        # Not a timeout test: a loaded machine can stall a reply past the 0.25 s default.
        settings = LimitSettings(backend="redis", url=redis.url,
                                 password_env="TEST_REDIS_PASSWORD", timeout_seconds=10.0)
        good = shared_limiter(settings, "gw.toml")
        assert good is not None
        assert await good.acquire([(spec.key("g"), spec)]) is None
        assert secret not in repr(good.address)
        await good.aclose()
        wrong = RedisLimiter(parse_url(f"redis://:not-{secret}@127.0.0.1:{redis.port}/0"),
                             timeout=10.0)
        with pytest.raises(StoreUnavailable) as caught:
            await wrong.acquire([(spec.key("g"), spec)])
        assert "refused the password" in str(caught.value) and secret not in str(caught.value)
        monkeypatch.delenv("TEST_REDIS_PASSWORD")
        with pytest.raises(ConfigError, match="TEST_REDIS_PASSWORD is not set"):
            shared_limiter(settings, "gw.toml")


# -- the engine -------------------------------------------------------------------------

def test_calls_without_limits_never_reach_the_store() -> None:
    # Nothing listens on this address: any round trip would fail.
    shared = RedisLimiter(parse_url("redis://127.0.0.1:1/0"))
    engine = Engine(compile_policy(VM_POLICY), shared)
    decision = engine.decide(call("free"), Caller(), "vm", "s")
    assert type(decision) is Decision and decision.action == "allow"
    assert engine.decide(call("other"), Caller(), "vm", "s").action == DENY


@pytest.mark.slow
async def test_explain_with_shared_limits_debits_nothing(redis: RedisProcess) -> None:
    shared = limiter(redis)
    engine = Engine(compile_policy(VM_POLICY), shared)
    for _ in range(5):
        explained = engine.explain(call("vm_management"), Caller("a", "g"), "vm")
        assert explained.decision.action == "allow"
        assert type(explained.decision) is Decision
    assert any("limits are shared" in line for line in explained.trace)
    assert redis.command("KEYS", f"{shared.key_prefix}*") == ""


# -- the [limits] table -----------------------------------------------------------------

def test_limits_table_is_checked_and_names_the_key() -> None:
    config = parse_config('[limits]\nbackend = "redis"\nurl = "redis://r.internal:6380/2"\n'
                          'on_error = "allow"\ntimeout_seconds = 0.5\n', "gw.toml")
    assert config.limits.backend == "redis" and config.limits.on_error == "allow"
    assert parse_config("", "gw.toml").limits.backend == "memory"
    address = parse_url("redis://user:s3cret@r.internal:6380/2")
    assert (address.host, address.port, address.db, address.username) == (
        "r.internal", 6380, 2, "user")
    assert "s3cret" not in repr(address)
    bad = {
        'backend = "redis"': "limits.url: required",
        'backend = "redis"\nurl = "http://r:1"': "limits.url: expected a redis:// or rediss://",
        'backend = "redis"\nurl = "redis://r"\ntls_ca_file = "ca.pem"':
            "limits.tls_ca_file: only with a rediss:// URL",
        'backend = "redis"\nurl = "rediss://r"\ntls_key_file = "k.pem"':
            "limits.tls_key_file: needs tls_cert_file",
        'backend = "redis"\nurl = "redis://:s3cret@r:1/x"': "the database is a number",
        'backend = "redis"\nurl = "redis://r"\ntimeout_seconds = 0': "limits.timeout_seconds",
        'on_error = "maybe"': "limits.on_error",
        'backnd = "redis"': "backnd",
    }
    for body, message in bad.items():
        with pytest.raises(ConfigError) as caught:
            parse_config(f"[limits]\n{body}\n", "gw.toml")
        assert message in str(caught.value) and "s3cret" not in str(caught.value)


# -- TLS (rediss://) --------------------------------------------------------------------

@pytest.mark.slow
async def test_tls_verifies_redis_and_shows_a_client_certificate(tmp_path: Path) -> None:
    """rediss:// to a redis-server that listens with TLS only and asks clients
    for a certificate: with the CA and the client certificate the buckets work;
    without the certificate, trusting another CA, or in plain text, the call
    fails with a reason (the store is unavailable) and nothing is debited."""
    files = TlsFiles(tmp_path)
    (tmp_path / "other").mkdir()
    other = TlsFiles(tmp_path / "other")
    spec = BucketSpec("x", "grant", 2, 60.0)
    bucket = [(spec.key("g"), spec)]
    with redis_server(tmp_path, tls=files, clients_need_certs=True) as redis:
        # Not a timeout test: a loaded machine can stall a reply past the 0.25 s default.
        settings = LimitSettings(backend="redis", url=redis.url, timeout_seconds=10.0,
                                 tls_ca_file=str(files.ca), tls_cert_file=str(files.client_cert),
                                 tls_key_file=str(files.client_key))
        good = shared_limiter(settings, "gw.toml")
        assert good is not None and good.tls is not None
        assert good.address.display == f"rediss://127.0.0.1:{redis.port}/0"
        assert good.tls.check_hostname and good.tls.verify_mode == ssl.CERT_REQUIRED
        assert await good.acquire(bucket) is None
        assert await good.acquire(bucket) is None
        assert (await good.acquire(bucket) or 0) > 0  # the third of two: limited
        await good.aclose()
        debited = redis.command("KEYS", "mcpwall:*")
        assert debited

        refused = {
            "no client certificate": msgspec.structs.replace(
                settings, tls_cert_file=None, tls_key_file=None),
            "another CA": msgspec.structs.replace(settings, tls_ca_file=str(other.ca)),
        }
        for case, changed in refused.items():
            limiter_ = shared_limiter(changed, "gw.toml")
            assert limiter_ is not None
            with pytest.raises(StoreUnavailable) as caught:
                await limiter_.acquire(bucket)
            # Without a certificate, TLS 1.3 completes the handshake; Redis then
            # sends an alert or resets the connection, whichever the client reads.
            expected = {"another CA": ("TLS with Redis failed: its certificate is not trusted (",),
                        "no client certificate": (
                            "Redis reset the TLS connection",
                            "TLS with Redis failed: Redis requires a client certificate")}[case]
            assert str(caught.value).startswith(expected), caught.value
            await limiter_.aclose()
        plain = RedisLimiter(parse_url(redis.url.replace("rediss://", "redis://")), timeout=10.0)
        with pytest.raises(StoreUnavailable):
            await plain.acquire(bucket)
        assert redis.command("KEYS", "mcpwall:*") == debited


def test_tls_files_are_checked_at_start_and_resolved_against_the_config(
        tmp_path: Path) -> None:
    files = TlsFiles(tmp_path)
    (tmp_path / "gw.toml").write_text(
        '[limits]\nbackend = "redis"\nurl = "rediss://127.0.0.1:1/0"\n'
        'tls_ca_file = "ca.pem"\ntls_cert_file = "client.pem"\ntls_key_file = "client.key"\n',
        encoding="utf-8")
    config = load_config(tmp_path / "gw.toml")
    assert config.limits.tls_ca_file == str(files.ca)
    assert config.limits.tls_key_file == str(files.client_key)
    assert shared_limiter(config.limits, "gw.toml") is not None
    missing = msgspec.structs.replace(config.limits, tls_ca_file=str(tmp_path / "none.pem"))
    with pytest.raises(ConfigError, match=r"gw.toml: limits.tls_ca_file: .*none.pem: cannot be "
                                          r"used \(No such file or directory\)"):
        shared_limiter(missing, "gw.toml")
    swapped = msgspec.structs.replace(config.limits, tls_cert_file=str(files.ca),
                                      tls_key_file=str(files.ca))
    with pytest.raises(ConfigError, match=r"limits\.tls_cert_file: .*cannot be used"):
        shared_limiter(swapped, "gw.toml")
