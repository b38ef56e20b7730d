"""The mediator: one decision and one audit event per request, original bytes
forwarded, refusals answered on the right side, every forwarded request answered."""

from __future__ import annotations

import json
from typing import Any

import trio

from firewall.audit.events import DecisionEvent, Event, OutcomeEvent
from firewall.gateway.mediator import Lost, Mediator, TimedOut
from firewall.policy.decision import ALLOW_ALL, AllowAll, Caller, Decision
from firewall.protocol import framing, jsonrpc
from firewall.protocol.mcp import Call


class Recorder:
    """An AuditPoint that keeps events in memory; commits when told to."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.commit = trio.Event()
        self.commit.set()

    async def append(self, event: Event) -> Recorder:
        self.events.append(event)
        return self

    async def committed(self) -> None:
        await self.commit.wait()

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


class TablePolicy:
    """Refuses what its table names: {(method, target): Decision}."""

    def __init__(self, table: dict[tuple[str, str | None], Decision],
                 hidden: frozenset[str] = frozenset()) -> None:
        self.table = table
        self.hidden = hidden

    def decide(self, call: Call, caller: Caller, server: str, session: str) -> Decision:
        return self.table.get((call.method, call.target), ALLOW_ALL)

    def tool_visible(self, tool: str, caller: Caller, server: str) -> bool:
        return tool not in self.hidden


CALLER = Caller("agent-7", "grant-a", ("ops",))


def make(policy: Any = None, **kw: Any) -> tuple[Mediator, Recorder]:
    audit = Recorder()
    return Mediator(server="vm", session="s1", caller=CALLER, policy=policy or AllowAll(),
                    audit=audit, **kw), audit


def call(rid: object, name: str, args: dict[str, Any] | None = None) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": rid, "method": "tools/call",
                       "params": {"name": name, "arguments": args or {}}}).encode()


async def test_allowed_request_forwards_the_decided_bytes_and_is_audited() -> None:
    med, audit = make()
    compact = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"vm_management",' \
              b'"arguments":{"action":"list","password":"x"}}}'
    data = compact.replace(b'"2.0",', b'"2.0",  ')
    routed = await med.from_client(data)
    # Whitespace between tokens is not passed on: the canonical form is.
    assert routed.upstream is not None and routed.upstream.data == compact
    assert routed.client is None
    (decision,) = audit.of(DecisionEvent)
    assert decision.tool == "vm_management" and decision.decision == "allow"
    assert decision.principal == "agent-7" and decision.grant == "grant-a"
    assert decision.request_id == "1" and decision.arguments == {"action": "list", "password": "x"}
    reply = b'{"jsonrpc":"2.0","id":1,"result":{"content":[],"isError":true}}'
    back = await med.from_server(reply)
    assert back.client is reply
    (outcome,) = audit.of(OutcomeEvent)
    assert outcome.call_id == decision.call_id and outcome.status == "tool_error"
    assert outcome.response_bytes == len(reply) and outcome.latency_ns > 0


async def test_string_and_number_ids_are_distinct() -> None:
    med, audit = make()
    await med.from_client(call(1, "a"))
    await med.from_client(call("1", "b"))
    await med.from_server(b'{"jsonrpc":"2.0","id":"1","error":{"code":-5,"message":"boom"}}')
    (outcome,) = audit.of(OutcomeEvent)
    assert outcome.status == "jsonrpc_error" and outcome.error_code == -5
    assert outcome.call_id == audit.of(DecisionEvent)[1].call_id
    assert med.pending_count == 1


async def test_denied_tools_call_is_a_tool_error_result_not_forwarded() -> None:
    deny = Decision("deny", rule="no-delete", reason="deleting VMs needs a human")
    med, audit = make(TablePolicy({("tools/call", "vm_delete"): deny}))
    routed = await med.from_client(call(5, "vm_delete"))
    assert routed.upstream is None
    reply = json.loads(routed.client or b"")
    assert reply["id"] == 5 and reply["result"]["isError"] is True
    text = reply["result"]["content"][0]["text"]
    assert "no-delete" in text and "deleting VMs needs a human" in text
    assert audit.of(DecisionEvent)[0].decision == "deny"
    assert med.pending_count == 0


async def test_refusals_as_jsonrpc_errors_carry_code_and_data() -> None:
    limited = Decision("limited", rule="vm-rate", reason="10 per minute", retry_after=4.5)
    med, _ = make(TablePolicy({("tools/call", "vm_management"): limited}),
                  deny_tools_call_as="jsonrpc_error")
    reply = json.loads((await med.from_client(call(9, "vm_management"))).client or b"")
    assert reply["error"]["code"] == jsonrpc.RATE_LIMITED
    assert reply["error"]["data"] == {"rule": "vm-rate", "reason": "10 per minute",
                                      "retry_after": 4.5, "action": "limited"}


async def test_denied_resource_read_gets_policy_error() -> None:
    deny = Decision("deny", rule="secrets", reason="no")
    med, _ = make(TablePolicy({("resources/read", "file:///etc/shadow"): deny}))
    data = b'{"jsonrpc":"2.0","id":2,"method":"resources/read","params":{"uri":"file:///etc/shadow"}}'
    reply = json.loads((await med.from_client(data)).client or b"")
    assert reply["error"]["code"] == jsonrpc.POLICY_DENIED
    assert reply["error"]["data"]["rule"] == "secrets"


async def test_dry_run_refusal_passes_but_is_recorded() -> None:
    dry = Decision("deny", rule="r", reason="x", dry_run=True)
    med, audit = make(TablePolicy({("tools/call", "t"): dry}))
    data = call(1, "t")
    out = (await med.from_client(data)).upstream
    assert out is not None and out.data == framing.canonical(data)
    event = audit.of(DecisionEvent)[0]
    assert event.decision == "deny" and event.dry_run is True


async def test_server_to_client_sampling_can_be_refused() -> None:
    deny = Decision("deny", rule="no-sampling", reason="servers may not use the model")
    med, audit = make(TablePolicy({("sampling/createMessage", None): deny}))
    data = b'{"jsonrpc":"2.0","id":"s1","method":"sampling/createMessage","params":{}}'
    routed = await med.from_server(data)
    assert routed.client is None
    assert routed.upstream is not None
    err = json.loads(routed.upstream.data)["error"]
    assert err["code"] == jsonrpc.POLICY_DENIED and err["data"]["rule"] == "no-sampling"
    assert audit.of(DecisionEvent)[0].direction == "server"


async def test_server_request_and_client_answer_are_paired() -> None:
    med, audit = make()
    data = b'{"jsonrpc":"2.0","id":0,"method":"roots/list"}'
    assert (await med.from_server(data)).client is data
    answer = b'{"jsonrpc":"2.0","id":0,"result":{"roots":[]}}'
    out = (await med.from_client(answer)).upstream
    assert out is not None and out.data is answer  # already one line: as received
    assert audit.of(OutcomeEvent)[0].status == "ok"


async def test_tools_list_filtered_only_when_something_is_hidden() -> None:
    med, _ = make(TablePolicy({}, hidden=frozenset({"vm_delete"})))
    await med.from_client(b'{"jsonrpc":"2.0","id":3,"method":"tools/list"}')
    listing = {"tools": [{"name": "vm_list"}, {"name": "vm_delete"}], "nextCursor": "c"}
    data = jsonrpc.result_response(3, listing)
    out = json.loads((await med.from_server(data)).client or b"")
    assert out["result"] == {"tools": [{"name": "vm_list"}], "nextCursor": "c"}
    await med.from_client(b'{"jsonrpc":"2.0","id":4,"method":"tools/list"}')
    same = jsonrpc.result_response(4, {"tools": [{"name": "vm_list"}]})
    assert (await med.from_server(same)).client is same


async def test_a_lost_upstream_answers_every_pending_request() -> None:
    med, audit = make()
    for rid in (1, 2, "x"):
        await med.from_client(call(rid, "t"))
    replies = [json.loads(r) for r in await med.unanswered(Lost("exited with code 9"))]
    assert sorted(str(r["id"]) for r in replies) == ["1", "2", "x"]
    assert {r["error"]["code"] for r in replies} == {jsonrpc.UPSTREAM_UNAVAILABLE}
    assert {r["error"]["message"] for r in replies} == {"upstream server 'vm' exited with code 9"}
    assert [o.status for o in audit.of(OutcomeEvent)] == ["upstream_failure"] * 3
    assert med.pending_count == 0


async def test_one_unanswered_request_leaves_the_others_pending() -> None:
    med, audit = make()
    for rid in (1, 2):
        await med.from_client(call(rid, "t"))
    [timed_out] = await med.unanswered(TimedOut(3), [1])
    [failed] = await med.unanswered(Lost("failed: connect_refused", jsonrpc.MESSAGE_TOO_LARGE),
                                    [2])
    assert json.loads(timed_out) == {"jsonrpc": "2.0", "id": 1, "error": {
        "code": jsonrpc.UPSTREAM_TIMEOUT, "message": "upstream server 'vm' did not answer "
        "within 3 s", "data": {"server": "vm"}}}
    assert json.loads(failed)["error"]["code"] == jsonrpc.MESSAGE_TOO_LARGE
    outcomes = audit.of(OutcomeEvent)
    assert [(o.status, o.error_code) for o in outcomes] == [
        ("timeout", jsonrpc.UPSTREAM_TIMEOUT), ("upstream_failure", jsonrpc.MESSAGE_TOO_LARGE)]
    assert outcomes[0].error_message == "upstream server 'vm' did not answer within 3 s"
    # A late answer of the upstream is no second answer: dropped as unmatched.
    assert (await med.from_server(jsonrpc.result_response(1, {}))).client is None
    assert len(audit.of(OutcomeEvent)) == 2


async def test_an_owed_answer_the_mediator_no_longer_tracks_gets_no_second_outcome() -> None:
    med, audit = make()
    await med.from_client(call(1, "t"))
    await med.from_client(call(2, "t"))
    await med.from_server(jsonrpc.result_response(1, {}))  # answered: outcome recorded
    replies = await med.unanswered(Lost("is not running"), [1, 2])
    assert [json.loads(r)["id"] for r in replies] == [1, 2]  # the front owed both
    assert [o.status for o in audit.of(OutcomeEvent)] == ["ok", "upstream_failure"]
    assert med.pending_count == 0


async def test_cancelled_request_outcome() -> None:
    med, audit = make()
    await med.from_client(call(1, "slow"))
    note = b'{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}'
    out = (await med.from_client(note)).upstream
    assert out is not None and out.data is note
    await med.from_server(b'{"jsonrpc":"2.0","id":1,"error":{"code":-32800,"message":"cancelled"}}')
    assert audit.of(OutcomeEvent)[0].status == "cancelled"


async def test_bad_messages_are_answered_and_session_lives() -> None:
    med, audit = make()
    reply = json.loads((await med.from_client(b"{nope")).client or b"")
    assert reply["error"]["code"] == jsonrpc.PARSE_ERROR and reply["id"] is None
    bad_params = b'{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"arguments":{}}}'
    reply = json.loads((await med.from_client(bad_params)).client or b"")
    assert reply["error"]["code"] == jsonrpc.INVALID_PARAMS and reply["id"] == 3
    assert (await med.from_server(b"garbage")).client is None  # logged, dropped
    assert (await med.from_client(call(4, "t"))).upstream is not None
    assert len(audit.of(DecisionEvent)) == 1


async def test_ready_waits_for_the_audit_commit() -> None:
    med, audit = make()
    audit.commit = trio.Event()
    out = (await med.from_client(call(1, "t"))).upstream
    assert out is not None
    with trio.move_on_after(0.05) as scope:
        await out.ready()
    assert scope.cancelled_caught  # not durable yet: must not be forwarded
    audit.commit.set()
    await out.ready()


# -- rules 1, 2, 10 and 11: what can execute is decided; only what was asked is answered


async def test_a_response_to_an_id_never_forwarded_is_dropped_and_recorded() -> None:
    med, audit = make()
    forged = b'{"jsonrpc":"2.0","id":41,"result":{"content":[]}}'
    assert (await med.from_server(forged)).client is None
    await med.from_client(call(1, "t"))
    answer = b'{"jsonrpc":"2.0","id":1,"result":{"content":[]}}'
    assert (await med.from_server(answer)).client is answer
    assert (await med.from_server(answer)).client is None  # answered already: once only
    # and the other way: an answer to a server request that was never made
    assert (await med.from_client(b'{"jsonrpc":"2.0","id":"s9","result":{}}')).upstream is None
    drops = [e for e in audit.events if getattr(e, "kind", None) == "message_dropped"]
    assert [(d.detail["from"], d.detail["reason"], d.detail["id"]) for d in drops] == [
        ("server", "response_unmatched", 41), ("server", "response_unmatched", 1),
        ("client", "response_unmatched", "s9")]


async def test_only_notifications_travel_without_an_id() -> None:
    med, audit = make()
    for direction, data in (
            ("client", b'{"jsonrpc":"2.0","method":"tools/call","params":{"name":"t"}}'),
            ("client", b'{"jsonrpc":"2.0","method":"x/custom"}'),
            ("server", b'{"jsonrpc":"2.0","method":"sampling/createMessage","params":{}}')):
        routed = await (med.from_client(data) if direction == "client"
                        else med.from_server(data))
        assert routed.upstream is None and routed.client is None
        assert routed.rejected is not None
        assert json.loads(routed.rejected)["error"]["code"] == jsonrpc.INVALID_REQUEST
    refused = audit.of(DecisionEvent)
    assert [(e.method, e.direction, e.decision, e.rule, e.request_id) for e in refused] == [
        ("tools/call", "client", "deny", "protocol", None),
        ("x/custom", "client", "deny", "protocol", None),
        ("sampling/createMessage", "server", "deny", "protocol", None)]
    assert refused[0].tool == "t"  # the audit names what was attempted
    note = b'{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1}}'
    out = (await med.from_client(note)).upstream
    assert out is not None and out.data is note


async def test_a_notification_is_forwarded_in_canonical_form() -> None:
    med, _ = make()
    smuggled = (b'{"jsonrpc":"2.0","method":"notifications/initialized","params":{"x":\n'
                b'{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"t"}}\n}}')
    out = (await med.from_client(smuggled)).upstream
    assert out is not None and b"\n" not in out.data and b"\r" not in out.data
    assert json.loads(out.data) == json.loads(smuggled)


async def test_a_message_whose_handling_fails_fails_alone() -> None:
    class Broken(TablePolicy):
        def decide(self, call: Call, caller: Caller, server: str, session: str) -> Decision:
            if call.tool == "boom":
                raise RuntimeError("a bug in a policy")
            return ALLOW_ALL

    med, _ = make(Broken({}))
    reply = (await med.from_client(call(1, "boom"))).client
    assert reply is not None and json.loads(reply)["error"]["code"] == jsonrpc.INTERNAL_ERROR
    assert (await med.from_server(b'{"jsonrpc":"2.0","id":"q","method":"x",'
                                  b'"params":{"name":"boom"}}')).client is not None
    assert (await med.from_client(call(2, "fine"))).upstream is not None


async def test_drops_recorded_per_session_are_bounded() -> None:
    med, audit = make()
    for _ in range(250):
        await med.from_server(b"garbage")
    drops = [e for e in audit.events if getattr(e, "kind", None) == "message_dropped"]
    assert len(drops) == 100 and "logged only" in drops[-1].detail["detail"]


async def test_an_unknown_notification_is_decided_and_recorded() -> None:
    custom = b'{"jsonrpc":"2.0","method":"notifications/vendor/run","params":{"x":1}}'
    med, audit = make()
    out = (await med.from_client(custom)).upstream
    assert out is not None and out.data is custom and out.call_id is not None
    deny = Decision("deny", rule="default", reason="not listed")
    med, audit = make(TablePolicy({("notifications/vendor/run", None): deny}))
    for routed in (await med.from_client(custom), await med.from_server(custom)):
        assert routed.upstream is None and routed.client is None and routed.rejected
    assert [(e.method, e.direction, e.decision) for e in audit.of(DecisionEvent)] == [
        ("notifications/vendor/run", "client", "deny"),
        ("notifications/vendor/run", "server", "deny")]
    held = Decision("pending", rule="r", reason="ask")
    med, audit = make(TablePolicy({("notifications/vendor/run", None): held}))
    assert (await med.from_client(custom)).upstream is None
    assert audit.of(DecisionEvent)[0].decision == "rejected"


async def test_ids_every_reader_reads_alike_and_members_json_rpc_defines() -> None:
    med, audit = make()
    for bad in (b'{"jsonrpc":"2.0","id":null,"method":"tools/call","params":{"name":"t"}}',
                b'{"jsonrpc":"2.0","id":9007199254740993,"method":"tools/call",'
                b'"params":{"name":"t"}}'):
        routed = await med.from_client(bad)
        assert routed.upstream is None and routed.client is not None
    assert [(e.decision, e.rule) for e in audit.of(DecisionEvent)] == [("deny", "protocol")] * 2
    extra = b'{"jsonrpc":"2.0","id":9007199254740991,"method":"ping","smuggled":{"a":1}}'
    out = (await med.from_client(extra)).upstream
    assert out is not None
    assert out.data == b'{"jsonrpc":"2.0","id":9007199254740991,"method":"ping"}'
