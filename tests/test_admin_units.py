"""The operator plane's pure parts: kill switch, metrics exposition, operator tokens and
console logins, the [admin] config checks, console escaping, the live feed."""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from firewall.audit.events import DecisionEvent, LifecycleEvent, OutcomeEvent
from firewall.config import ConfigError, parse_config
from firewall.gateway.operator import console
from firewall.gateway.operator.auth import (
    ConsoleLogins,
    Operator,
    OperatorTable,
    cookie_value,
    csrf_ok,
)
from firewall.gateway.operator.feed import Feed
from firewall.gateway.operator.killswitch import RULE, GuardedPolicy, KillSwitch, Scope
from firewall.gateway.operator.metrics import Gauges, Metrics, ObservedAudit, exposition
from firewall.identity import IdentityError, hash_token
from firewall.policy.decision import ALLOW_ALL, AllowAll, Caller
from firewall.protocol.mcp import Call

CALL = Call("tools/call", tool="vm_management")
ALICE = Caller("alice", "g1")


def test_kill_switch_scopes_and_reversal() -> None:
    switch = KillSwitch()
    policy = GuardedPolicy(AllowAll(), switch)
    assert policy.decide(CALL, ALICE, "vm", "s1") is ALLOW_ALL
    switch.turn_on(Scope("server", "vm"), by="ops", comment="INC-1")
    denied = policy.decide(CALL, ALICE, "vm", "s1")
    assert (denied.action, denied.rule) == ("deny", RULE)
    assert denied.reason == "kill switch on for server vm by ops: INC-1"
    assert policy.decide(CALL, ALICE, "git", "s1") is ALLOW_ALL
    switch.turn_on(Scope("principal", "bob"), by="ops")
    assert policy.decide(CALL, Caller("bob"), "git", "s2").reason == \
        "kill switch on for principal bob by ops"
    switch.turn_on(Scope(), by="root")
    assert "the whole firewall" in str(policy.decide(CALL, ALICE, "git", "s1").reason)
    assert [s.scope.kind for s in switch.switches()] == ["global", "server", "principal"]
    assert switch.turn_off(Scope()) is not None and switch.turn_off(Scope()) is None
    switch.turn_off(Scope("server", "vm"))
    switch.turn_off(Scope("principal", "bob"))
    assert not switch.active and policy.decide(CALL, ALICE, "vm", "s1") is ALLOW_ALL
    assert policy.tool_visible("vm_management", ALICE, "vm")


def test_a_dry_run_policy_does_not_soften_the_switch() -> None:
    switch = KillSwitch()
    switch.turn_on(Scope("server", "vm"), by="ops")
    decision = switch.check("vm", "alice")
    assert decision is not None and not decision.dry_run and not decision.enforced_allow


def _decision(tool: str, decision: str, server: str = "vm") -> DecisionEvent:
    return DecisionEvent(ts_ns=1, call_id="c", session="s", principal="p", grant="g",
                         server=server, method="tools/call", tool=tool, decision=decision)


def test_metrics_exposition_parses_and_counts() -> None:
    metrics = Metrics()
    for event in [_decision("a", "allow"), _decision("a", "allow"), _decision("a", "limited"),
                  _decision('we"ird\\tool\n', "deny")]:
        metrics.observe(event)
    for latency_ms in (2, 40, 700):
        metrics.observe(OutcomeEvent(ts_ns=1, call_id="c", session="s", server="vm",
                                     status="ok", latency_ns=latency_ms * 1_000_000))
    metrics.observe(LifecycleEvent(ts_ns=1, kind="upstream_restart", server="vm"))
    text = exposition(metrics, Gauges(audit_queue_depth=3, approvals_pending=2,
                                      sessions={"vm": 4}, kill_switches=1)).decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    allow = (("decision", "allow"), ("method", "tools/call"), ("server", "vm"), ("tool", "a"))
    assert samples[("mcpwall_calls_total", allow)] == 2
    weird = (("decision", "deny"), ("method", "tools/call"), ("server", "vm"),
             ("tool", 'we"ird\\tool\n'))
    assert samples[("mcpwall_calls_total", weird)] == 1  # escaped and parsed back intact
    assert samples[("mcpwall_rate_limited_total", (("server", "vm"),))] == 1
    assert samples[("mcpwall_upstream_restarts_total", (("server", "vm"),))] == 1
    assert samples[("mcpwall_call_latency_seconds_count", (("server", "vm"),))] == 3
    assert samples[("mcpwall_call_latency_seconds_bucket", (("le", "0.05"), ("server", "vm")))] \
        == 2
    assert samples[("mcpwall_call_latency_seconds_bucket", (("le", "+Inf"), ("server", "vm")))] \
        == 3
    assert samples[("mcpwall_call_latency_seconds_sum", (("server", "vm"),))] == \
        pytest.approx(0.742)
    assert samples[("mcpwall_audit_queue_depth", ())] == 3
    assert samples[("mcpwall_approvals_pending", ())] == 2
    assert samples[("mcpwall_sessions", (("server", "vm"),))] == 4
    assert samples[("mcpwall_kill_switches", ())] == 1


class _Trail:
    def __init__(self) -> None:
        self.events: list[Any] = []

    async def append(self, event: Any) -> Any:
        self.events.append(event)
        return None


async def test_observed_audit_counts_after_the_trail_and_feeds_readers() -> None:
    trail, metrics, feed = _Trail(), Metrics(), Feed()
    observed = ObservedAudit(trail, metrics, feed)
    await observed.append(_decision("a", "allow"))  # nobody listens: nothing queued
    reader = feed.subscribe()
    await observed.append(DecisionEvent(ts_ns=1, call_id="c", session="s", principal="p",
                                        grant="g", server="vm", method="tools/call", tool="a",
                                        arguments={"secret": "x"}, decision="deny"))
    assert len(trail.events) == 2 and sum(metrics.calls.values()) == 2
    frames = await reader.take()
    assert len(frames) == 1 and frames[0].startswith(b"event: decision\ndata: {")
    assert b"secret" not in frames[0]  # the feed never carries arguments
    feed.unsubscribe(reader)
    assert not feed.listening


async def test_a_slow_feed_reader_loses_the_oldest_and_is_told() -> None:
    feed = Feed()
    reader = feed.subscribe()
    for i in range(reader.max_queue + 5):
        feed.publish("decision", {"n": i})
    frames = await reader.take()
    assert frames[0] == b'event: dropped\ndata: {"count":5}\n\n'
    assert frames[1].endswith(b'{"n":5}\n\n') and len(frames) == reader.max_queue + 1
    with trio.move_on_after(0.01):
        await reader.take()
        pytest.fail("no frame was published")


def test_operator_tokens_roles_and_console_logins() -> None:
    from firewall.settings.admin import AdminToken

    table = OperatorTable([AdminToken(sha256=hash_token("a"), operator="alice"),
                           AdminToken(sha256=hash_token("v"), operator="vic", role="viewer")])
    assert table.authenticate("a") == Operator("alice", "admin")
    viewer = table.authenticate("v")
    assert viewer == Operator("vic", "viewer") and not viewer.may_change
    assert table.authenticate("x") is None and table.authenticate(None) is None
    with pytest.raises(IdentityError, match=r"admin\.tokens\[0\]\.sha256"):
        OperatorTable([AdminToken(sha256="nothex", operator="x")])
    logins = ConsoleLogins(seconds=60, max_logins=2)
    sid, login = logins.open(Operator("alice"))
    assert logins.find(sid) is login and logins.find("other") is None and logins.find(None) is None
    assert csrf_ok(login, login.csrf) and not csrf_ok(login, "x") and not csrf_ok(login, None)
    logins.open(Operator("b"))
    logins.open(Operator("c"))  # at most two: the oldest goes
    assert logins.find(sid) is None
    sid2, login2 = logins.open(Operator("d"))
    login2.expires = time.monotonic() - 1
    assert logins.find(sid2) is None
    logins.close(sid2)
    assert cookie_value("a=1; mcpwall_console=xyz; b=2", "mcpwall_console") == "xyz"
    assert cookie_value("a=1", "mcpwall_console") is None and cookie_value(None, "x") is None


def _admin(extra: str = "", listen: str = "") -> str:
    token = f'[[admin.tokens]]\nsha256 = "{hash_token("t")}"\noperator = "alice"\n'
    return f"{listen}[admin]\n{extra}{token}"


def test_admin_config_defaults_and_refusals() -> None:
    assert parse_config("").admin is None
    admin = parse_config(_admin()).admin
    assert admin is not None and (admin.host, admin.port) == ("127.0.0.1", 8766)
    with pytest.raises(ConfigError, match="must not share the agents' listener"):
        parse_config(_admin("port = 9000\n", "[listen]\nport = 9000\n"))
    with pytest.raises(ConfigError, match="must not share"):
        parse_config(_admin('host = "0.0.0.0"\nport = 8765\n'))
    assert parse_config(_admin('host = "127.0.0.2"\nport = 8765\n')).admin is not None
    with pytest.raises(ConfigError, match=r"admin\.tokens: the operator listener needs"):
        parse_config("[admin]\nport = 9001\n")
    with pytest.raises(ConfigError, match="loopback host only"):
        parse_config('[admin]\nhost = "0.0.0.0"\ninsecure_no_auth = true\n')
    assert parse_config("[admin]\ninsecure_no_auth = true\n").admin is not None
    with pytest.raises(ConfigError, match=r"admin\.tokens\[0\]\.role"):
        parse_config('[admin]\n[[admin.tokens]]\nsha256 = "a"\noperator = "x"\nrole = "root"\n')
    with pytest.raises(ConfigError, match="admin: Object contains unknown field `prot`"):
        parse_config("[admin]\nprot = 1\n")
    with pytest.raises(ConfigError, match="64 lowercase hex"):
        parse_config('[admin]\n[[admin.tokens]]\nsha256 = "abc"\noperator = "x"\n')


def test_console_markup_escapes_every_value() -> None:
    evil = '<script>alert("x")</script>'
    rows = console.approval_rows([{"id": 'a"b', "created_ns": 1, "principal": evil,
                                   "server": evil, "target": evil, "arguments": {"k": evil},
                                   "rule": evil, "reason": evil}])
    assert "<script>" not in rows and 'data-id="a&quot;b"' in rows
    decisions = console.decision_rows([{"ts": "2026-01-01T00:00:00Z", "principal": evil,
                                        "server": "vm", "method": "tools/call", "tool": evil,
                                        "decision": '"><b>', "rule": evil, "reason": evil}])
    assert "<script>" not in decisions and "<b>" not in decisions
    assert console.esc(None) == "" and console.esc("'") == "&#x27;"


def test_serve_refuses_an_operator_port_equal_to_the_agents(tmp_path: Any) -> None:
    from click.testing import CliRunner

    from firewall.cli import main

    config = tmp_path / "gw.toml"
    config.write_text(_admin("port = 9100\n"))
    same = CliRunner().invoke(main, ["serve", str(config), "--port", "9100"])
    assert same.exit_code == 2 and "must not share the agents' listener" in same.output
    moved = CliRunner().invoke(main, ["serve", str(config), "--port", "9101",
                                      "--admin-port", "9101"])
    assert moved.exit_code == 2 and "must not share" in moved.output
    plain = tmp_path / "plain.toml"
    plain.write_text("")
    none = CliRunner().invoke(main, ["serve", str(plain), "--admin-port", "9102"])
    assert none.exit_code == 2 and "no [admin] table" in none.output
