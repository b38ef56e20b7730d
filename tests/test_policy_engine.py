"""The policy engine: precedence, arguments, audiences, methods, dry-run, reload."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from firewall.policy import render
from firewall.policy.compiler import compile_policies, compile_policy, normalise_uri
from firewall.policy.decision import Caller, Decision
from firewall.policy.engine import Engine, PolicySet
from firewall.policy.limits import MemoryLimiter
from firewall.policy.schema import LoadedPolicy, PolicyError, parse_policy
from firewall.protocol import jsonrpc, mcp

ALICE = Caller("alice", "alice-1", ("ops",))
BOB = Caller("bob", "bob-1", ())
SEED = {"version": "1", "default": "deny", "tools": {"vm_management": {"limits": [
    {"counter": "vm_management_rate", "window": "minute", "max": 10, "scope": "grant"}]}}}


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def engine(policy: dict[str, Any], clock: FakeClock | None = None, **kw: Any) -> Engine:
    compiled = compile_policy(parse_policy(json.dumps(policy)), **kw)
    return Engine(compiled, MemoryLimiter(clock or FakeClock()))


def tool(name: str, **args: Any) -> mcp.Call:
    return mcp.Call(mcp.TOOLS_CALL, tool=name, arguments=args)


def decide(e: Engine, call: mcp.Call, caller: Caller = ALICE, server: str = "vm",
           session: str = "s1") -> Decision:
    return e.decide(call, caller, server, session)


def test_seed_policy_ten_per_minute_per_grant_then_retry_after() -> None:
    clock = FakeClock()
    e = engine(SEED, clock)
    g1, g2 = Caller("agent", "g1"), Caller("agent", "g2")
    call = tool("vm_management", action="list")
    assert [decide(e, call, g1).action for _ in range(10)] == ["allow"] * 10
    refused = decide(e, call, g1)
    assert refused.action == "limited"
    assert refused.rule == "tools.vm_management"
    assert refused.retry_after == pytest.approx(6.0)
    # Another grant of the same agent has its own ten.
    assert [decide(e, call, g2).action for _ in range(10)] == ["allow"] * 10
    assert decide(e, call, g2).action == "limited"
    # One token back after 6 s of the 60 s window.
    clock.now = 6.0
    assert decide(e, call, g1).action == "allow"
    assert decide(e, call, g1).action == "limited"
    # Anything else falls to default deny.
    other = decide(e, tool("snapshot_management", action="list"), g1)
    assert (other.action, other.rule) == ("deny", "default")


def test_exact_beats_glob_and_longer_literal_wins() -> None:
    e = engine({"default": "allow", "tools": {
        "delete_*": {"action": "deny"},
        "delete_vm": {"action": "require_approval"},
        "*": {"action": "allow"},
        "delete_snap*": {"action": "allow", "reason": "snapshots are cheap"},
    }})
    assert decide(e, tool("delete_vm")).action == "pending"
    assert decide(e, tool("delete_disk")).rule == "tools.delete_*"
    assert decide(e, tool("delete_snapshot")).rule == "tools.delete_snap*"
    assert decide(e, tool("list_vms")).rule == "tools.*"


def test_deny_wins_ties_between_equally_specific_globs() -> None:
    e = engine({"tools": {"vm_*": {"action": "allow"}, "*_vm": {"action": "deny"}}})
    assert decide(e, tool("vm_vm")).rule == "tools.*_vm"
    assert decide(e, tool("vm_list")).action == "allow"


def test_argument_rules_first_match_and_fallback_to_default() -> None:
    e = engine({"default": "deny", "tools": {"vm_management": {"rules": [
        {"when": {"action": ["list", "info"]}},
        {"name": "lifecycle", "when": {"action": ["start", "stop"]},
         "limits": [{"max": 2, "window": "minute"}]},
        {"when": {"action": {"const": "delete"}}, "action": "require_approval"},
    ]}}})
    assert decide(e, tool("vm_management", action="list")).rule == "tools.vm_management.rules[0]"
    assert [decide(e, tool("vm_management", action="start")).action for _ in range(3)] == [
        "allow", "allow", "limited"]
    assert decide(e, tool("vm_management", action="delete")).action == "pending"
    unknown = decide(e, tool("vm_management", action="reboot"))
    assert (unknown.action, unknown.rule) == ("deny", "tools.vm_management")
    missing = decide(e, tool("vm_management"))
    assert missing.action == "deny"


def test_require_violation_names_argument_and_condition() -> None:
    e = engine({"tools": {"read_file": {"require": {"path": {"path_under": "/srv/data"}}}}})
    ok = decide(e, tool("read_file", path="/srv/data/a/../b.txt"))
    assert ok.action == "allow"
    bad = decide(e, tool("read_file", path="/srv/data/../../etc/passwd"))
    assert bad.action == "invalid_arguments"
    assert bad.reason is not None and "'path'" in bad.reason and "path_under" in bad.reason
    assert decide(e, tool("read_file")).action == "invalid_arguments"


def test_entry_limits_and_rule_limits_are_debited_together_or_not_at_all() -> None:
    e = engine({"tools": {"t": {
        "limits": [{"counter": "all", "max": 3}],
        "rules": [{"when": {"op": "w"}, "limits": [{"counter": "writes", "max": 1}]},
                  {"when": {"op": "r"}}],
    }}})
    assert decide(e, tool("t", op="w")).action == "allow"       # all=2, writes=0
    refused = decide(e, tool("t", op="w"))                      # writes empty
    assert refused.action == "limited"
    # The refused call took nothing from "all": two reads still pass.
    assert [decide(e, tool("t", op="r")).action for _ in range(3)] == [
        "allow", "allow", "limited"]


def test_shared_counter_is_one_bucket_across_rules() -> None:
    shared = {"counter": "writes", "max": 2, "window": "hour"}
    e = engine({"tools": {"a": {"limits": [shared]}, "b": {"limits": [shared]}}})
    assert decide(e, tool("a")).action == "allow"
    assert decide(e, tool("b")).action == "allow"
    assert decide(e, tool("a")).action == "limited"


def test_shared_counter_must_agree() -> None:
    with pytest.raises(PolicyError, match=r"tools\.b\.limits\[0\].*counter 'c'"):
        compile_policy(parse_policy(json.dumps({"tools": {
            "a": {"limits": [{"counter": "c", "max": 2}]},
            "b": {"limits": [{"counter": "c", "max": 3}]}}})))


@pytest.mark.parametrize(("scope", "same"), [
    ("grant", [(ALICE, "s1"), (ALICE, "s2")]),
    ("agent", [(ALICE, "s1"), (Caller("alice", "alice-2"), "s2")]),
    ("session", [(ALICE, "s1"), (BOB, "s1")]),
    ("global", [(ALICE, "s1"), (BOB, "s2")]),
])
def test_scopes_share_or_separate_buckets(scope: str, same: list[tuple[Caller, str]]) -> None:
    e = engine({"tools": {"t": {"limits": [{"max": 1, "scope": scope}]}}})
    (c1, s1), (c2, s2) = same
    assert decide(e, tool("t"), c1, session=s1).action == "allow"
    assert decide(e, tool("t"), c2, session=s2).action == "limited"
    # A different value of the scope key has its own bucket.
    other = {"grant": (Caller("x", "other"), "s1"), "agent": (BOB, "s1"),
             "session": (ALICE, "s9"), "global": None}[scope]
    if other is not None:
        assert decide(e, tool("t"), other[0], session=other[1]).action == "allow"


def test_server_scope_counts_per_server() -> None:
    e = engine({"tools": {"t": {"limits": [{"max": 1, "scope": "server"}]}}})
    assert decide(e, tool("t"), server="a").action == "allow"
    assert decide(e, tool("t"), BOB, server="a").action == "limited"
    assert decide(e, tool("t"), server="b").action == "allow"


def test_audiences_principals_groups_grants() -> None:
    e = engine({"default": "deny", "tools": {
        "deploy": {"groups": ["ops"], "action": "allow"},
        "deploy*": {"action": "deny", "reason": "ops only"},
        "vm": {"rules": [{"principals": ["bob"], "action": "allow"},
                         {"grants": ["alice-1"], "action": "require_approval"}]},
    }})
    assert decide(e, tool("deploy"), ALICE).action == "allow"
    denied = decide(e, tool("deploy"), BOB)
    assert (denied.action, denied.reason) == ("deny", "ops only")
    assert decide(e, tool("vm"), BOB).action == "allow"
    assert decide(e, tool("vm"), ALICE).action == "pending"
    assert decide(e, tool("vm"), Caller("carol", "c")).action == "deny"


def test_resources_prompts_methods_and_protocol_passes() -> None:
    e = engine({"default": "deny", "other_methods": "deny",
                "resources": {"file:///data/*": {}},
                "prompts": {"summarise": {"require": {"style": ["short", "long"]}}},
                "methods": {"sampling/createMessage": {"action": "deny", "reason": "no"},
                            "tools/list": {}}})
    read = mcp.Call(mcp.RESOURCES_READ, uri="file:///data/a.txt")
    assert decide(e, read).action == "allow"
    escape = mcp.Call(mcp.RESOURCES_READ, uri="file:///data/../etc/passwd")
    assert decide(e, escape).action == "deny"
    encoded = mcp.Call(mcp.RESOURCES_READ, uri="file:///data/%2e%2e/etc/passwd")
    assert decide(e, encoded).action == "deny"
    prompt = mcp.Call(mcp.PROMPTS_GET, prompt="summarise", arguments={"style": "short"})
    assert decide(e, prompt).action == "allow"
    bad = mcp.Call(mcp.PROMPTS_GET, prompt="summarise", arguments={"style": "epic"})
    assert decide(e, bad).action == "invalid_arguments"
    sampling = mcp.Call(mcp.SAMPLING_CREATE, direction="server")
    assert decide(e, sampling).rule == "methods.sampling/createMessage"
    assert decide(e, mcp.Call(mcp.TOOLS_LIST)).action == "allow"
    assert decide(e, mcp.Call("completion/complete")).rule == "other_methods"
    for method in ("initialize", "ping", "notifications/initialized", "notifications/cancelled"):
        assert decide(e, mcp.Call(method)).action == "allow"


def test_normalise_uri() -> None:
    assert normalise_uri("file:///a/./b/../c") == "file:///a/c"
    assert normalise_uri("file:///a/%2E%2E/%2e%2e/x") == "file:///x"
    assert normalise_uri("https://h/x/") == "https://h/x/"


def test_dry_run_records_but_enforces_nothing() -> None:
    e = engine({"default": "deny", "tools": {"t": {"action": "deny", "dry_run": True},
                                             "u": {"limits": [{"max": 1}]}}})
    d = decide(e, tool("t"))
    assert (d.action, d.dry_run, d.enforced_allow) == ("deny", True, True)
    assert decide(e, tool("x")).dry_run is False
    everything = engine({"default": "deny", "tools": {"u": {"limits": [{"max": 1}]}}},
                        dry_run=True)
    assert decide(everything, tool("u")).action == "allow"
    limited = decide(everything, tool("u"))
    assert (limited.action, limited.dry_run) == ("limited", True)
    assert decide(everything, tool("x")).enforced_allow


def test_tool_visible_hides_only_tools_never_callable() -> None:
    e = engine({"default": "deny", "tools": {
        "never": {"action": "deny"},
        "sometimes": {"rules": [{"when": {"a": "x"}}]},
        "approval": {"action": "require_approval"},
        "admins": {"principals": ["root"]},
        "gated": {"rules": [{"action": "deny"}, {"action": "allow"}]},
    }})
    visible = {n for n in ("never", "sometimes", "approval", "admins", "gated", "unlisted")
               if e.tool_visible(n, ALICE, "vm")}
    assert visible == {"sometimes", "approval"}
    assert e.tool_visible("admins", Caller("root", "r"), "vm")


def test_fleet_and_server_policies_combine() -> None:
    fleet = LoadedPolicy(parse_policy(json.dumps({
        "default": "deny", "tools": {"delete_*": {"action": "deny"}, "*": {}}})), "fleet", "")
    vm = LoadedPolicy(parse_policy(json.dumps({
        "name": "vm", "default": "allow",
        "tools": {"delete_snapshot": {"action": "require_approval"}}})), "vm.json", "")
    e = Engine(compile_policies([fleet], {"vm": [vm]}))
    assert decide(e, tool("delete_snapshot"), server="vm").rule == "vm:tools.delete_snapshot"
    assert decide(e, tool("delete_snapshot"), server="git").rule == "tools.delete_*"
    assert decide(e, tool("anything"), server="vm").rule == "tools.*"
    # The more restrictive default of the two files applies.
    assert e.compiled.table("vm").default.action == "deny"


def test_explain_traces_and_debits_nothing() -> None:
    e = engine({"tools": {"t": {"rules": [{"when": {"a": "x"}, "action": "deny"},
                                          {"limits": [{"max": 1}]}]}}})
    for _ in range(3):
        result = e.explain(tool("t", a="y"), ALICE, "vm")
        assert result.decision.action == "allow"
    joined = "\n".join(result.trace)
    assert "tools.t.rules[0]: no match, argument 'a'" in joined
    assert "tools.t.rules[1]: matches" in joined
    assert decide(e, tool("t", a="y")).action == "allow"


def test_render_denials() -> None:
    d = Decision("limited", rule="tools.vm", reason="rate limit: c", retry_after=4.5)
    assert render.error_code(d) == jsonrpc.RATE_LIMITED
    assert render.denial_data(d) == {"action": "limited", "rule": "tools.vm",
                                     "reason": "rate limit: c", "retry_after": 4.5}
    text = render.denial_text(d)
    assert "tools.vm" in text and "rate limit: c" in text and "4.5" in text
    codes = {a: render.error_code(Decision(a)) for a in  # type: ignore[arg-type]
             ("deny", "pending", "invalid_arguments")}
    assert codes == {"deny": -32001, "pending": -32003, "invalid_arguments": -32004}
    err = json.loads(render.denial_error(7, d))
    assert err["id"] == 7 and err["error"]["code"] == -32002
    assert err["error"]["data"]["retry_after"] == 4.5


def test_policy_set_reload_swaps_or_keeps_old_table(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"default": "deny", "tools": {"a": {}}}))
    ps = PolicySet([path])
    first = ps.digests
    assert list(first) == [str(path)]
    assert ps.decide(tool("a"), ALICE, "vm", "s").action == "allow"
    in_flight = ps.engine.compiled

    path.write_text(json.dumps({"default": "deny", "tools": {"b": {}}}))
    result = ps.reload()
    assert result.ok and result.changed and result.files != first
    assert ps.decide(tool("a"), ALICE, "vm", "s").action == "deny"
    assert ps.decide(tool("b"), ALICE, "vm", "s").action == "allow"
    # The table a call started with is untouched by the swap.
    assert in_flight.fleet.tools.candidates("a")

    path.write_text('{"default": "deny", "tools": {"b": {"acton": "deny"}}}')
    bad = ps.reload()
    assert not bad.ok and bad.error is not None
    assert str(path) in bad.error and "tools.b" in bad.error and "acton" in bad.error
    assert ps.decide(tool("b"), ALICE, "vm", "s").action == "allow"
    assert bad.files == result.files

    path.unlink()
    gone = ps.reload()
    assert not gone.ok and "cannot read" in (gone.error or "")


def test_reload_keeps_buckets(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps(SEED))
    ps = PolicySet([path])
    for _ in range(10):
        ps.decide(tool("vm_management"), ALICE, "vm", "s")
    assert ps.reload().ok
    assert ps.decide(tool("vm_management"), ALICE, "vm", "s").action == "limited"


def test_only_the_notifications_mcp_defines_always_pass() -> None:
    strict = engine({"version": "1", "default": "deny", "other_methods": "deny"})
    for known in ("notifications/initialized", "notifications/cancelled",
                  "notifications/progress", "notifications/roots/list_changed"):
        assert decide(strict, mcp.Call(known)).enforced_allow
    custom = mcp.Call("notifications/vendor/run")
    assert not decide(strict, custom).enforced_allow
    opened = engine({"version": "1", "default": "deny", "other_methods": "deny",
                     "methods": {"notifications/vendor/*": {}}})
    assert decide(opened, custom).enforced_allow
    assert not decide(opened, mcp.Call("notifications/other")).enforced_allow
