"""Intercept's counters in mcpwall: ``rate_limit: N/window`` and ``state`` blocks.

The fixtures ``tests/fixtures/intercept/{github,stripe}.yaml`` are the two
"Complete examples" of Intercept's POLICY.md (PolicyLayer/Intercept, commit
77f0429, Apache-2.0), verbatim. The reference interpreter below transcribes
Intercept's ``engine.Evaluate`` and ``proxy.Handler.Handle`` (reserveAll,
extractLimit, rollback on a JSON-RPC error) over calendar windows in UTC; the
property test runs sequences of calls, with time moving and upstream
failures, through it and through mcpwall's engine (the policy as written, its
mcpwall conversion, and that converted back to Intercept's format).
"""

from __future__ import annotations

import json
import math
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from conftest import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

from firewall.cli.policy import check as check_command
from firewall.cli.policy import convert as convert_command
from firewall.cli.policy import explain as explain_command
from firewall.policy.compiler import compile_policy
from firewall.policy.convert import convert
from firewall.policy.counters import Counted, MemoryCounters, Reservation
from firewall.policy.decision import Caller, Decision
from firewall.policy.engine import Engine
from firewall.policy.foreign import format_of_document
from firewall.policy.operators import go_text
from firewall.policy.schema import PolicyError, parse_policy, parse_policy_format
from firewall.protocol import mcp

FIXTURES = ROOT / "tests" / "fixtures" / "intercept"
GITHUB = FIXTURES / "github.yaml"
STRIPE = FIXTURES / "stripe.yaml"
CALLER = Caller("agent", "g1")


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def done(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never waits (the memory store's) to its end."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    raise AssertionError("the coroutine waited")


class Gateway:
    """mcpwall's engine and what the gateway does with a Counted: settle it,
    then commit (the upstream answered) or roll back (a JSON-RPC error)."""

    def __init__(self, text: str, source: str, clock: Clock) -> None:
        self.engine = Engine(compile_policy(parse_policy(text, source)),
                             counters=MemoryCounters(clock=clock))

    def call(self, tool: str, args: dict[str, Any], fails: bool = False) -> Decision:
        d = self.engine.decide(mcp.Call(mcp.TOOLS_CALL, tool=tool, arguments=args), CALLER,
                               "s", "session")
        reservation: Reservation | None = None
        if type(d) is Counted:
            d, reservation = done(d.settle())
        if reservation is not None:
            done(reservation.rollback() if fails else reservation.commit())
        return d


def gateway(path: Path, clock: Clock) -> Gateway:
    return Gateway(path.read_text(), str(path), clock)


# -- POLICY.md's complete examples, verbatim ---------------------------------------------

def test_the_examples_load_as_intercept_policies() -> None:
    for path in (GITHUB, STRIPE):
        assert parse_policy_format(path.read_bytes(), str(path))[1] == "intercept"


def test_github_example_decides_as_documented() -> None:
    clock = Clock(ts("2026-03-02T10:15:00"))
    gw = gateway(GITHUB, clock)
    for _ in range(5):
        assert gw.call("create_issue", {"title": "x"}).action == "allow"
    sixth = gw.call("create_issue", {"title": "x"})
    assert (sixth.action, sixth.reason) == ("limited", "Hourly limit of 5 new issues reached")
    assert sixth.retry_after == 45 * 60  # the top of the hour
    for _ in range(3):
        assert gw.call("create_pull_request", {}).action == "allow"
    assert gw.call("create_pull_request", {}).reason == (
        "Hourly limit of 3 new pull requests reached")
    denied = gw.call("delete_repository", {"repo": "a"})
    assert (denied.action, denied.reason) == (
        "deny", "Repository deletion is not permitted via AI agents")
    hidden = gw.call("transfer_repository", {})
    assert (hidden.action, hidden.reason) == ("deny", 'Tool "transfer_repository" is hidden by '
                                              "policy")
    assert not gw.engine.tool_visible("list_webhooks", CALLER, "s")
    # The global 60 a minute: 8 calls counted so far this minute (the refused
    # ones gave nothing); 52 more pass, the 61st does not.
    for _ in range(52):
        assert gw.call("get_me", {}).action == "allow"
    last = gw.call("get_me", {})
    assert (last.action, last.reason) == (
        "limited", "Rate limit of 60 per minute reached. Try again later.")
    clock.now = ts("2026-03-02T10:16:00")  # a new minute; still the same hour
    assert gw.call("get_me", {}).action == "allow"
    assert gw.call("create_issue", {}).reason == "Hourly limit of 5 new issues reached"
    clock.now = ts("2026-03-02T11:00:00")
    assert gw.call("create_issue", {}).action == "allow"


def test_stripe_example_spend_cap_over_a_day_boundary() -> None:
    clock = Clock(ts("2026-03-02T23:59:58"))
    gw = gateway(STRIPE, clock)
    usd = {"currency": "usd"}
    for _ in range(19):  # 19 x $500.00 = $9,500.00
        assert gw.call("create_charge", {**usd, "amount": 50000}).action == "allow"
    assert gw.call("create_charge", {**usd, "amount": 60000}).reason == (
        "Single charge cannot exceed $500.00")
    assert gw.call("create_charge", {"currency": "gbp", "amount": 5}).reason == (
        "Only USD and EUR charges are permitted")
    # An upstream failure gives its amount back: the same charge passes again,
    # to exactly the cap (lte 1000000); one cent more does not.
    assert gw.call("create_charge", {**usd, "amount": 50000}, fails=True).action == "allow"
    assert gw.call("create_charge", {**usd, "amount": 50000}).action == "allow"
    over = gw.call("create_charge", {**usd, "amount": 1})
    assert (over.action, over.reason) == ("limited", "Daily spending cap of $10,000.00 reached")
    assert over.retry_after == 2.0  # midnight UTC
    assert gw.call("create_charge", {**usd, "amount": 0}).action == "allow"
    # A missing or non-numeric amount is refused, never counted as 0.
    assert gw.call("create_charge", {"currency": "usd"}).action == "deny"  # lte on absent
    clock.now = ts("2026-03-03T00:00:00")  # a new UTC day: the total starts again
    assert gw.call("create_charge", {**usd, "amount": 50000}).action == "allow"


def test_stripe_example_refund_count_and_global_minute() -> None:
    clock = Clock(ts("2026-03-02T12:00:00"))
    gw = gateway(STRIPE, clock)
    for _ in range(10):
        assert gw.call("create_refund", {"amount": 100}).action == "allow"
    assert gw.call("create_refund", {"amount": 100}).reason == "Daily refund limit (10) reached"
    assert gw.call("create_refund", {"amount": 20000}).reason == (
        "Refunds over $100.00 require manual processing")
    assert gw.call("delete_customer", {}).reason == (
        "Customer deletion is not permitted via AI agents")
    for _ in range(50):  # 10 refunds counted this minute: 50 more
        assert gw.call("list_customers", {}).action == "allow"
    assert gw.call("list_customers", {}).reason == "Rate limit: maximum 60 tool calls per minute"


def test_counters_show_in_check_and_explain() -> None:
    runner = CliRunner()
    result = runner.invoke(check_command, [str(STRIPE)])
    assert result.exit_code == 0, result.output
    assert ("tools.create_charge.counters[0]: create_charge.daily_spend (max 1000000 per day, "
            "scope global, adds args.amount): Daily spending cap") in result.output
    assert "intercept format" in result.output
    result = runner.invoke(check_command, [str(GITHUB), "--json"])
    counters = json.loads(result.output)["counters"]
    assert {c["counter"]: c["max"] for c in counters} == {
        "_global._rate_minute": 60, "create_issue._rate_hour": 5,
        "create_pull_request._rate_hour": 3}
    result = runner.invoke(explain_command, [str(STRIPE), "--tool", "create_charge", "--args",
                                             '{"amount": 5000, "currency": "eur"}'])
    assert result.exit_code == 0, result.output
    assert "counter create_charge.daily_spend/global/ would add 5000 to 0 (max 1000000)" in (
        result.output)
    assert "counter _global.calls_per_minute/global/ would add 1 to 0 (max 60)" in result.output


# -- the mapping, rule by rule ----------------------------------------------------------

def mapped(rules: list[dict[str, Any]], tool: str = "t", **extra: Any) -> dict[str, Any]:
    doc = {"version": "1", "tools": {tool: {"rules": rules}, **extra}}
    return convert(doc, "mcpwall")[0]


def test_limits_from_lt_and_lte_other_state_conditions_and_unbounded_blocks() -> None:
    own = {"counter": "n", "window": "hour"}
    doc = mapped([
        {"name": "lt", "conditions": [{"path": "state.t.n", "op": "lt", "value": 3}],
         "state": own},
        {"name": "reads", "on_deny": "too early",
         "conditions": [{"path": "state.t.m", "op": "gte", "value": 2},
                        {"path": "args.x", "op": "exists", "value": True}]},
        {"name": "unbounded", "conditions": [{"path": "args.x", "op": "neq", "value": 0}],
         "state": {"counter": "m", "window": "day", "increment": 5}},
    ])
    entry = doc["tools"]["t"]
    assert entry["counters"] == [
        {"counter": "t.n", "window": "hour", "max": 2, "scope": "global",
         "reason": 'Rate limit exceeded for lt'},
        # m has no lt/lte of its own: Intercept never adds to it; it reads 0
        {"counter": "t.m", "window": "day", "increment": 0, "scope": "global"}]
    assert entry["require_state"] == [
        {"path": "state.t.m", "op": "gte", "value": 2, "reason": "too early"}]
    assert entry["checks"] == [
        {"name": "reads", "require": [{"path": "args.x", "op": "exists", "value": True}],
         "reason": "too early"},
        {"name": "unbounded", "require": [{"path": "args.x", "op": "neq", "value": 0}]}]
    clock = Clock(ts("2026-03-02T12:00:00"))
    gw = Gateway(json.dumps(doc), "m.json", clock)
    refused = gw.call("t", {"x": 1})
    assert (refused.action, refused.reason) == ("deny", "too early")  # m stays 0


@pytest.mark.parametrize(("op", "value", "passes"), [
    ("lte", 2, 2), ("lt", 2, 1), ("lte", 2.9, 2), ("lt", 2.5, 1),  # Go's int64(): toward 0
    ("lte", 0, 0), ("lt", 1, 0), ("lt", 0.5, 0), ("lte", -0.5, 0), ("lt", 0, 0)])
def test_the_limit_a_condition_makes(op: str, value: float, passes: int) -> None:
    doc = {"version": "1", "tools": {"t": {"rules": [
        {"name": "r", "on_deny": "full",
         "conditions": [{"path": "state.t.n", "op": op, "value": value}],
         "state": {"counter": "n", "window": "day"}}]}}}
    gw = Gateway(yaml.safe_dump(doc), "l.yaml", Clock(ts("2026-03-02T12:00:00")))
    results = [gw.call("t", {}) for _ in range(passes + 1)]
    assert [d.action for d in results[:passes]] == ["allow"] * passes
    assert results[passes].action != "allow" and results[passes].reason == "full"
    assert Intercept(doc, Clock(ts("2026-03-02T12:00:00"))).allowed_run("t", passes + 1) == (
        passes)


@pytest.mark.parametrize(("rule", "message"), [
    ({"name": "a", "rate_limit": "5/hour", "conditions": [
        {"path": "args.a", "op": "exists", "value": True}]},
     r"rules\[0\]: rate_limit cannot be combined with conditions or state"),
    ({"name": "a", "rate_limit": "0/hour"}, r"rules\[0\]\.rate_limit: must be"),
    ({"name": "a", "action": "deny", "rate_limit": "5/hour"},
     r"rate_limit cannot be used with action \"deny\""),
    ({"name": "a", "conditions": [{"path": "state.t.n", "op": "lte", "value": 1}],
      "state": {"counter": "n", "window": "week"}},
     r"rules\[0\]\.state\.window: must be \"minute\", \"hour\" or \"day\""),
    ({"name": "a", "conditions": [{"path": "state.t.n", "op": "lte", "value": 1}],
      "state": {"counter": "", "window": "day"}}, r"rules\[0\]\.state\.counter: must not be"),
    ({"name": "a", "conditions": [{"path": "state.t.n", "op": "lte", "value": 1}],
      "state": {"counter": "n", "window": "day", "increment_from": "amount"}},
     r"rules\[0\]\.state\.increment_from: must start with \"args\.\""),
    ({"name": "a", "conditions": [{"path": "state.t.n", "op": "lte", "value": 1}],
      "state": {"counter": "n", "window": "day", "increment": -1}},
     r"rules\[0\]\.state\.increment: must not be negative"),
    ({"name": "a", "conditions": [{"path": "state.t.other", "op": "lte", "value": 1}]},
     r"rules\[0\]\.conditions\[0\]: condition references state\.t\.other but no matching "
     r"state block"),
    ({"name": "a", "conditions": [{"path": "state.n", "op": "lte", "value": 1}],
      "state": {"counter": "n", "window": "day"}},
     r"conditions\[0\]\.path: must be \"state\.<tool>\.<counter>\""),
    ({"name": "a", "conditions": [{"path": "state.t.n", "op": "lte", "value": "x"}],
      "state": {"counter": "n", "window": "day"}}, r"conditions\[0\]\.value: operator 'lte'"),
    ({"name": "a", "conditions": [{"path": "state.t.n", "op": "lte", "value": 1}],
      "state": {"counter": "n", "window": "day", "incremnt": 2}},
     r"tools\.t\.rules\[0\]\.state: Object contains unknown field `incremnt`"),
])
def test_counter_errors_name_the_intercept_path(rule: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        parse_policy(yaml.safe_dump({"version": "1", "tools": {"t": {"rules": [rule]}}}),
                     "c.yaml")


def test_duplicate_counters_on_one_tool_are_an_error() -> None:
    rules = [{"name": "a", "rate_limit": "5/hour"}, {"name": "b", "rate_limit": "9/hour"}]
    with pytest.raises(PolicyError, match=r"tools\.t\.rules\[1\]: duplicate state counter "
                                          r"'_rate_hour' \(also used by rules\[0\]\)"):
        parse_policy(yaml.safe_dump({"version": "1", "tools": {"t": {"rules": rules}}}),
                     "d.yaml")


def test_mcpwall_require_state_list_errors() -> None:
    base = {"version": "1", "tools": {"t": {"counters": [
        {"counter": "n", "window": "day", "max": 3, "scope": "global"}]}}}
    for state, message in [
            ([{"path": "state.m", "op": "lt", "value": 1}],
             r"tools\.t\.require_state\[0\]\.path: no rule declares counter 'm'"),
            ([{"path": "args.n", "op": "lt", "value": 1}],
             r"tools\.t\.require_state\[0\]\.path: must be \"state\.<counter>\""),
            ([{"path": "state.n", "op": "lt", "value": "x"}],
             r"require_state\[0\]\.value: operator 'lt' requires a numeric value")]:
        doc = json.loads(json.dumps(base))
        doc["tools"]["t"]["require_state"] = state
        with pytest.raises(PolicyError, match=message):
            compile_policy(parse_policy(json.dumps(doc), "s.json"))


# -- convert, three directions ------------------------------------------------------------

def test_convert_writes_counters_and_names_what_cannot_be_said() -> None:
    for path in (GITHUB, STRIPE):
        doc = yaml.safe_load(path.read_text())
        as_mcpwall, notes = convert(doc, "mcpwall")
        assert notes == []
        back, notes = convert(as_mcpwall, "intercept")
        assert notes == [] and format_of_document(back) == "intercept"
        _, notes = convert(doc, "policylayer")
        assert any("counters cannot be expressed" in n for n in notes)
        assert "all_tools.counters: cannot be expressed (dropped)" in notes
    native = {"version": "1", "default": "deny", "tools": {
        "pay": {"counters": [
            {"counter": "spend", "window": "month", "max": 9, "scope": "global"},
            {"counter": "mine", "window": "day", "max": 9},
            {"counter": "shared", "window": "day", "max": 9, "scope": "global"},
            {"counter": "free", "window": "day", "increment": 0, "max": 4, "scope": "global"},
            {"counter": "pay.ok", "window": "day", "max": 4, "scope": "global",
             "increment_from": "args.amount", "reason": "cap"}],
            "require_state": {"pay.ok": {"max": 3, "type": "integer"}}},
        "refund": {"counters": [{"counter": "shared", "window": "day", "max": 9,
                                 "scope": "global"}],
                   "require_state": [{"path": "state.shared", "op": "lt", "value": 2},
                                     {"path": "state.pay.ok", "op": "gt", "value": 0}]}}}
    out, notes = convert(native, "intercept")
    assert notes == [
        "tools.pay.require_state.pay.ok.type: cannot be expressed (dropped)",
        "tools.pay.counters[0]: counter 'spend' counts by month (Intercept: minute, hour or "
        "day) (dropped)",
        "tools.pay.counters[1]: counter 'mine' counts per grant (Intercept's totals are one "
        "for every caller) (dropped)",
        "tools.pay.counters[2]: counter 'shared' is declared in several places (Intercept "
        "keeps a total per tool) (dropped)",
        "tools.pay.counters[3]: counter 'free' adds 0 under a max (Intercept reads an "
        "increment of 0 as 1) (dropped)",
        "tools.refund.require_state[0]: counter 'shared' is declared in several places "
        "(Intercept keeps a total per tool) (dropped)",
        "tools.refund.counters[0]: counter 'shared' is declared in several places "
        "(Intercept keeps a total per tool) (dropped)"]
    # Any tool reads another's total by its Intercept path.
    assert out["tools"]["refund"]["rules"] == [
        {"name": "require_state 1",
         "conditions": [{"path": "state.pay.ok", "op": "gt", "value": 0}]}]
    assert out["tools"]["pay"]["rules"] == [
        {"name": "require_state 0",
         "conditions": [{"path": "state.pay.ok", "op": "lte", "value": 3}]},
        {"name": "counter pay.ok", "on_deny": "cap",
         "conditions": [{"path": "state.pay.ok", "op": "lte", "value": 4}],
         "state": {"counter": "ok", "window": "day", "increment_from": "args.amount"}}]
    runner = CliRunner()
    lossy = runner.invoke(convert_command, [str(STRIPE), "--to", "policylayer"])
    assert lossy.exit_code == 1 and "create_charge.counters" in lossy.output


# -- the reference: Intercept's engine and handler, transcribed -----------------------------

WINDOW_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}


def _desugar(doc: dict[str, Any]) -> dict[str, Any]:
    """config.applyDefaults: rate_limit -> an lte condition and a state block."""
    doc = json.loads(json.dumps(doc))
    for name, tool in doc.get("tools", {}).items():
        for r in tool.get("rules", []):
            if r.get("rate_limit"):
                count, window = r.pop("rate_limit").split("/")
                scope = "_global" if name == "*" else name
                r["conditions"] = [{"path": f"state.{scope}._rate_{window}", "op": "lte",
                                    "value": int(count)}]
                r["state"] = {"counter": f"_rate_{window}", "window": window, "increment": 1}
                r.setdefault("on_deny", f"Rate limit of {count} per {window} reached. Try "
                                        "again later.")
            r.setdefault("action", "evaluate")
            if r.get("state") and not r["state"].get("increment"):
                r["state"]["increment"] = 1
    return doc


def _resolve(args: dict[str, Any], path: str) -> tuple[Any, bool]:
    current: Any = args
    for part in path.split("."):
        if not isinstance(current, dict) or part not in current:
            return None, False
        current = current[part]
    return current, True


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _eq(a: Any, e: Any) -> bool:
    fa, fe = _num(a), _num(e)
    if fa is not None and fe is not None:
        return fa == fe
    return go_text(a, True) == go_text(e, False)


def _op(op: str, a: Any, e: Any) -> bool:
    if op in ("eq", "neq"):
        return _eq(a, e) is (op == "eq")
    if op in ("in", "not_in"):
        return (isinstance(e, list) and any(_eq(a, x) for x in e)) is (op == "in")
    fa, fe = _num(a), _num(e)
    if fa is None or fe is None:
        return False
    return {"lt": fa < fe, "lte": fa <= fe, "gt": fa > fe, "gte": fa >= fe}[op]


class Intercept:
    """engine.Evaluate + proxy.Handler.Handle over a memory store with
    calendar windows (state.windowStart), rollback flooring at 0."""

    def __init__(self, doc: dict[str, Any], clock: Clock) -> None:
        self.doc = _desugar(doc)
        self.clock = clock
        self.rows: dict[str, list[int]] = {}  # key -> [window start, value, window seconds]

    def _start(self, seconds: int) -> int:
        t = math.floor(self.clock())
        return t - t % seconds

    def value(self, key: str) -> int:  # StateResolver.Resolve
        row = self.rows.get(key)
        return row[1] if row is not None and row[0] == self._start(row[2]) else 0

    def reserve(self, key: str, amount: int, limit: int, window: str) -> bool:
        seconds = WINDOW_SECONDS[window]
        start = self._start(seconds)
        row = self.rows.get(key)
        value = row[1] if row is not None and row[0] == start else 0
        if value + amount > limit:
            return False
        self.rows[key] = [start, value + amount, seconds]
        return True

    def rollback(self, reserved: list[tuple[str, int]]) -> None:
        for key, amount in reserved:
            row = self.rows.get(key)
            if row is not None:
                row[1] = max(0, row[1] - amount)

    def _holds(self, c: dict[str, Any], args: dict[str, Any]) -> bool:
        if c["path"].startswith("state."):
            value, exists = self.value(c["path"][len("state."):]), True
        else:
            value, exists = _resolve(args, c["path"][len("args."):])
        if c["op"] == "exists":
            return (exists and value is not None) == c["value"]
        return exists and _op(c["op"], value, c["value"])

    def call(self, tool: str, args: dict[str, Any]) -> tuple[bool, list[tuple[str, int]]]:
        doc = self.doc
        tools = doc.get("tools", {})
        if any(name in (tool, "*") for name in doc.get("hide", [])):
            return False, []
        if doc.get("default", "allow") == "deny" and tool not in tools:
            return False, []
        own = [(r, tool) for r in tools.get(tool, {}).get("rules", [])]
        every = [(r, "_global") for r in tools.get("*", {}).get("rules", [])] if tool != "*" \
            else []
        for r, _ in own + every:
            if r["action"] == "deny":
                return False, []
            if not all(self._holds(c, args) for c in r["conditions"]):
                return False, []
        reserved: list[tuple[str, int]] = []
        for r, scope in own + every:
            state = r.get("state")
            if not state:
                continue
            key = f"{scope}.{state['counter']}"
            if state.get("increment_from"):
                value, found = _resolve(args, state["increment_from"][len("args."):])
                if not found or _num(value) is None:
                    self.rollback(reserved)
                    return False, []
                amount = int(value)  # Go's int64(float64): toward zero
            else:
                amount = state["increment"]
            limit = None
            for c in r["conditions"]:  # extractLimit
                if c["path"] == f"state.{key}" and c["op"] in ("lt", "lte") \
                        and _num(c["value"]) is not None:
                    limit = math.trunc(c["value"]) - (1 if c["op"] == "lt" else 0)
                    break
            if limit is None:
                continue
            if not self.reserve(key, amount, limit, state["window"]):
                self.rollback(reserved)
                return False, []
            reserved.append((key, amount))
        return True, reserved

    def allowed_run(self, tool: str, n: int) -> int:
        return sum(self.call(tool, {})[0] for _ in range(n))


def test_the_reference_keeps_stripes_documented_cap() -> None:
    ref = Intercept(yaml.safe_load(STRIPE.read_text()), Clock(ts("2026-03-02T12:00:00")))
    charge = {"amount": 50000, "currency": "usd"}
    assert [ref.call("create_charge", charge)[0] for _ in range(21)] == [True] * 20 + [False]


# -- property: sequences of calls decide alike ---------------------------------------------

TOOLS = ["a", "b", "*"]


@st.composite
def counter_policies(draw: st.DrawFn) -> dict[str, Any]:
    tools: dict[str, Any] = {}
    names = draw(st.lists(st.sampled_from(TOOLS), unique=True, min_size=1, max_size=3))
    blocks: list[tuple[str, str]] = []  # (tool, counter) of bounded state blocks so far
    for i, name in enumerate(names):
        scope = "_global" if name == "*" else name
        rules: list[dict[str, Any]] = []
        windows = draw(st.lists(st.sampled_from(["minute", "hour"]), unique=True, max_size=1))
        for w in windows:
            rules.append({"name": f"rate {w}", "rate_limit": f"{draw(st.integers(1, 3))}/{w}"})
        for j in range(draw(st.integers(0, 2))):
            counter = f"c{j}"
            op = draw(st.sampled_from(["lt", "lte"]))
            conds = [{"path": f"state.{scope}.{counter}", "op": op,
                      "value": draw(st.sampled_from([0, 1, 2, 3, 5, 2.5, 0.5]))}]
            if draw(st.booleans()):
                conds.insert(0, {"path": "args.p", "op": "neq", "value": "x"})
            state: dict[str, Any] = {"counter": counter, "window": draw(
                st.sampled_from(["minute", "hour", "day"]))}
            if draw(st.booleans()):
                state["increment_from"] = "args.n"
            else:
                state["increment"] = draw(st.integers(0, 2))
            rules.append({"name": f"r{i}{j}", "conditions": conds, "state": state,
                          "on_deny": f"full {scope}.{counter}"})
            blocks.append((scope, counter))
        if blocks and draw(st.booleans()):  # a condition on a total of this tool or "*"
            seen = [b for b in blocks if b[0] in (scope, "_global")]
            if seen:
                tool, counter = draw(st.sampled_from(seen))
                rules.append({"name": f"read{i}", "conditions": [
                    {"path": f"state.{tool}.{counter}",
                     "op": draw(st.sampled_from(["lt", "lte", "gte", "eq", "neq"])),
                     "value": draw(st.integers(0, 3))}]})
        if draw(st.integers(0, 4)) == 0:  # a block no limit bounds: never added to
            rules.append({"name": f"free{i}", "conditions": [
                {"path": f"state.{scope}.u", "op": "gte", "value": 0}],
                "state": {"counter": "u", "window": "day", "increment": 2}})
        tools[name] = {"rules": rules}
    doc: dict[str, Any] = {"version": "1", "tools": tools}
    doc["tools"].setdefault("zz", {"rules": [{"name": "marker", "on_deny": "m", "conditions": [
        {"path": "args.p", "op": "neq", "value": "never"}]}]})
    if draw(st.booleans()):
        doc["default"] = draw(st.sampled_from(["allow", "deny"]))
    return doc


CALLS = st.lists(st.tuples(
    st.sampled_from(["a", "b", "c"]),
    st.fixed_dictionaries({}, optional={"n": st.sampled_from([0, 1, 2, 3, "2"]),
                                        "p": st.sampled_from(["x", "y"])}),
    st.booleans(),                           # the upstream fails the call
    st.sampled_from([0, 0, 1, 30, 3600])),   # seconds before the call
    min_size=1, max_size=12)


@settings(max_examples=120, deadline=None)
@given(counter_policies(), CALLS)
def test_counter_policies_decide_as_intercept_over_sequences(
        doc: dict[str, Any], calls: list[tuple[str, dict[str, Any], bool, int]]) -> None:
    assert format_of_document(doc) == "intercept"
    clock = Clock(ts("2026-03-02T23:59:00"))  # windows of each kind end during the run
    converted, notes = convert(doc, "mcpwall")
    assert notes == []
    back, back_notes = convert(converted, "intercept")
    assert back_notes == []
    reference = Intercept(doc, clock)
    engines = [Gateway(yaml.safe_dump(doc), "i.yaml", clock),
               Gateway(json.dumps(converted), "c.json", clock),
               Gateway(yaml.safe_dump(back), "r.yaml", clock)]
    for tool, args, fails, step in calls:
        clock.now += step
        expected, reserved = reference.call(tool, args)
        if expected and fails:
            reference.rollback(reserved)
        for gw in engines:
            assert (gw.call(tool, args, fails).action == "allow") is expected, (tool, args)
