"""Session admission: the per-principal and per-server caps, and that slots come back.

Pure accounting first (:class:`firewall.gateway.front.admission.Admission`, with a
hypothesis run against a plain model), then the front's session table under
trio's MockClock: a session that is deleted, reaped for idleness, or whose
child never started gives its slot back.
"""

from __future__ import annotations

from collections import Counter

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from firewall.config import ConfigError, ListenSettings, StdioServer, parse_config
from firewall.gateway.front.admission import (
    FULL,
    PRINCIPAL_CAP,
    Admission,
    Refusal,
    ServerCaps,
    Slot,
)
from firewall.gateway.front.sessions import FrontContext, Session
from firewall.policy.decision import AllowAll, Caller

VM = ServerCaps(total=4, per_principal=2, key="servers.vm")
WEB = ServerCaps(total=None, per_principal=None, key="servers.web")
ALICE, BOB = Caller("alice", "grant-a"), Caller("bob", "grant-b")


def slot(got: Slot | Refusal) -> Slot:
    assert isinstance(got, Slot), got
    return got


def refusal(got: Slot | Refusal) -> Refusal:
    assert isinstance(got, Refusal), got
    return got


def test_a_principal_at_its_cap_gets_429_and_others_still_get_in() -> None:
    admission = Admission(max_sessions=100, sessions_per_principal=50)
    mine = [slot(admission.admit("vm", "alice", VM)) for _ in range(2)]
    refused = refusal(admission.admit("vm", "alice", VM))
    assert (refused.status, refused.reason, refused.cap) == (PRINCIPAL_CAP, "principal_children", 2)
    assert refused.limit == "servers.vm.max_children_per_principal"
    assert "Too Many Requests" in refused.message() and refused.limit in refused.message()
    # A refusal takes nothing; another principal gets in.
    assert admission.count("vm") == 2 and admission.count("vm", "alice") == 2
    theirs = [slot(admission.admit("vm", "bob", VM)) for _ in range(2)]
    # The server is full now: a third principal gets 503, the first still 429.
    full = refusal(admission.admit("vm", "carol", VM))
    assert (full.status, full.reason) == (FULL, "children_full")
    assert full.limit == "servers.vm.max_children"
    assert refusal(admission.admit("vm", "alice", VM)).status == PRINCIPAL_CAP
    # A closed session frees its slot, once.
    mine[0].release()
    mine[0].release()
    assert admission.count("vm", "alice") == 1 and admission.count() == 3
    slot(admission.admit("vm", "carol", VM))
    for s in [*mine, *theirs]:
        s.release()
    assert admission.count("vm", "carol") == 1 and admission.count("vm") == 1


def test_the_front_wide_cap_counts_a_principal_on_every_server() -> None:
    admission = Admission(max_sessions=10, sessions_per_principal=3)
    slot(admission.admit("vm", "alice", VM))
    slot(admission.admit("web", "alice", WEB))
    slot(admission.admit("web", "alice", WEB))
    refused = refusal(admission.admit("vm", "alice", VM))
    assert (refused.status, refused.reason, refused.limit) == (
        PRINCIPAL_CAP, "principal_sessions", "listen.max_sessions_per_principal")
    assert not refused.server_scope
    slot(admission.admit("web", "bob", WEB))
    assert admission.count(principal="alice") == 3 and admission.count("web") == 3


def test_without_authentication_only_the_shared_caps_apply() -> None:
    admission = Admission(max_sessions=5, sessions_per_principal=1, per_principal=False)
    held = [slot(admission.admit("vm", "anonymous", VM)) for _ in range(4)]
    assert refusal(admission.admit("vm", "anonymous", VM)).reason == "children_full"
    slot(admission.admit("web", "anonymous", WEB))
    assert refusal(admission.admit("web", "anonymous", WEB)).reason == "sessions_full"
    held[0].release()
    slot(admission.admit("web", "anonymous", WEB))


OPS = st.lists(st.tuples(st.sampled_from(["admit", "release"]),
                         st.sampled_from(["vm", "web"]), st.sampled_from(["a", "b", "c"]),
                         st.integers(0, 20)), max_size=80)


@settings(max_examples=200, deadline=None)
@given(OPS)
def test_the_counts_match_a_model_and_never_pass_a_cap(
        ops: list[tuple[str, str, str, int]]) -> None:
    admission = Admission(max_sessions=7, sessions_per_principal=3)
    caps = {"vm": VM, "web": WEB}
    held: list[Slot] = []
    for op, server, principal, pick in ops:
        if op == "admit":
            got = admission.admit(server, principal, caps[server])
            if isinstance(got, Slot):
                held.append(got)
        elif held:
            held.pop(pick % len(held)).release()
        pairs = Counter((s.server, s.principal) for s in held)
        assert admission.count() == len(held) <= 7
        for (srv, who), n in pairs.items():
            assert admission.count(srv, who) == n
        for who in "abc":
            assert admission.count(principal=who) == sum(
                n for (_, p), n in pairs.items() if p == who) <= 3
        assert admission.count("vm") == sum(n for (s, _), n in pairs.items() if s == "vm") <= 4
        assert all(pairs[("vm", who)] <= 2 for who in "abc")


def test_config_defaults_and_errors_name_the_key() -> None:
    config = parse_config('[servers.vm]\ntransport = "stdio"\ncommand = "x"\nmax_children = 10\n')
    server = config.servers["vm"]
    assert isinstance(server, StdioServer)
    assert server.children_per_principal() == 2  # a quarter
    assert config.listen.sessions_per_principal() == 256
    assert StdioServer(command="x", max_children=2).children_per_principal() == 1
    assert ListenSettings(max_sessions_per_principal=9).sessions_per_principal() == 9
    bad = {
        '[listen]\nmax_sessions_per_principal = 0\n': "listen.max_sessions_per_principal",
        '[listen]\nmax_sessions = 8\nmax_sessions_per_principal = 9\n':
            "listen.max_sessions_per_principal: expected 1..8",
        '[servers.vm]\ntransport = "stdio"\ncommand = "x"\nmax_children_per_principal = 33\n':
            "servers.vm.max_children_per_principal: expected 1..32",
        '[servers.vm]\ntransport = "stdio"\ncommand = "x"\nmax_children = 0\n':
            "servers.vm.max_children",
        '[servers.vm]\ntransport = "stdio"\ncommand = "x"\nmax_children_per_principle = 3\n':
            "servers.vm: Object contains unknown field `max_children_per_principle`",
    }
    for text, expected in bad.items():
        with pytest.raises(ConfigError, match=expected.replace(".", r"\.")):
            parse_config(text, "gw.toml")


# -- the front's session table ----------------------------------------------


@pytest.fixture
def mock_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def front(idle: float = 60.0) -> FrontContext:
    listen = ListenSettings(max_sessions=10, max_sessions_per_principal=3,
                            session_idle_seconds=idle)
    return FrontContext(listen, AllowAll(), None, per_principal=True)


async def open_session(ctx: FrontContext, caller: Caller, name: str = "vm",
                       idle: float = 60.0) -> Session | Refusal:
    got = ctx.admit(name, caller, VM)
    if isinstance(got, Refusal):
        return got
    sid = f"{caller.principal}-{ctx.table.admission.count()}"
    session = Session(sid=sid, server=name, caller=caller,
                      mediator=ctx.mediator(name, sid, caller), idle_limit=idle)
    session.slot = got
    await ctx.start_session(session)
    return session


async def test_ending_a_session_frees_its_slot(mock_clock: trio.testing.MockClock) -> None:
    ctx = front()
    first, second = [await open_session(ctx, ALICE) for _ in range(2)]
    assert isinstance(first, Session) and isinstance(second, Session)
    assert isinstance(await open_session(ctx, ALICE), Refusal)
    assert isinstance(await open_session(ctx, BOB), Session)
    await ctx.end_session(first, "deleted by the client")
    await ctx.end_session(first, "deleted by the client")  # twice: still one slot back
    assert ctx.table.admission.count("vm", "alice") == 1 and len(ctx.table) == 2
    assert isinstance(await open_session(ctx, ALICE), Session)
    assert isinstance(await open_session(ctx, ALICE), Refusal)


async def test_idle_sessions_are_reaped_and_the_429_says_when(
        mock_clock: trio.testing.MockClock) -> None:
    ctx = front()
    first = await open_session(ctx, ALICE, idle=60)
    await trio.sleep(20)
    second = await open_session(ctx, ALICE, idle=60)
    assert isinstance(first, Session) and isinstance(second, Session)
    refused = await open_session(ctx, ALICE)
    assert isinstance(refused, Refusal)
    # The first session can expire 40 s from now: that is the Retry-After.
    assert ctx.table.retry_after(refused, "alice", "vm", trio.current_time()) == 40
    with second.busy():  # a request in flight: not idle, not reaped
        await trio.sleep(45)
        assert await ctx.table.reap(trio.current_time()) == 1
    assert first.closed and not second.closed
    assert ctx.table.admission.count("vm", "alice") == 1
    assert isinstance(await open_session(ctx, ALICE), Session)


async def test_a_child_that_never_started_gives_its_slot_back(
        mock_clock: trio.testing.MockClock) -> None:
    ctx = front()

    async def failing(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        raise OSError("no such command")

    async with trio.open_nursery() as nursery:
        ctx.nursery = nursery
        for _ in range(5):  # more attempts than the cap: none of them leaks a slot
            got = ctx.admit("vm", ALICE, VM)
            assert isinstance(got, Slot)
            session = Session(sid="s", server="vm", caller=ALICE,
                              mediator=ctx.mediator("vm", "s", ALICE), idle_limit=60)
            session.slot = got
            with pytest.raises(OSError):
                await ctx.start_session(session, failing)
        assert ctx.table.admission.count() == 0 and len(ctx.table) == 0
