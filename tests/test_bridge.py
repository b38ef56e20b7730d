"""The bridge's translations (firewall/gateway/front/bridge.py rules 2 to 4), no process."""

from __future__ import annotations

import json

from firewall.config import StdioServer
from firewall.gateway.front.bridge import (
    BridgedCall,
    BridgeSession,
    discover_result,
    stdio_link,
    translate_answer,
    translate_request,
)
from firewall.gateway.front.bridge_input import STATE_PREFIX
from firewall.protocol.mrtr import StateSeal

META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {"elicitation": {}},
        "io.modelcontextprotocol/clientInfo": {"name": "c", "version": "1"}}


def test_request_loses_the_revision_keys_and_gets_mcpwalls_id() -> None:
    sent = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                       "params": {"name": "t", "arguments": {"a": 1},
                                  "_meta": {**META, "progressToken": 3}}}).encode()
    out = json.loads(translate_request(sent, "mcpwall-bridge-1"))
    assert out == {"jsonrpc": "2.0", "id": "mcpwall-bridge-1", "method": "tools/call",
                   "params": {"name": "t", "arguments": {"a": 1},
                              "_meta": {"progressToken": 3}}}


def test_request_whose_meta_is_all_revision_keys_has_no_meta() -> None:
    sent = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list",
                       "params": {"_meta": META}}).encode()
    assert json.loads(translate_request(sent, "b"))["params"] == {}


def test_answer_gets_the_clients_id_result_type_and_cache_fields() -> None:
    answer = b'{"jsonrpc":"2.0","id":"mcpwall-bridge-1","result":{"tools":[]}}'
    out = json.loads(translate_answer(answer, 7, "tools/list"))
    assert out == {"jsonrpc": "2.0", "id": 7, "result": {
        "tools": [], "resultType": "complete", "ttlMs": 0, "cacheScope": "private"}}
    call = json.loads(translate_answer(b'{"jsonrpc":"2.0","id":"b","result":{"content":[]}}',
                                       "x", "tools/call"))
    assert call["result"] == {"content": [], "resultType": "complete"}
    error = json.loads(translate_answer(
        b'{"jsonrpc":"2.0","id":"b","error":{"code":-32602,"message":"no"}}', 9, "tools/call"))
    assert error == {"jsonrpc": "2.0", "id": 9, "error": {"code": -32602, "message": "no"}}


def test_discover_from_initialize_leaves_out_what_the_bridge_cannot_carry() -> None:
    init = {"protocolVersion": "2025-06-18", "instructions": "be nice",
            "serverInfo": {"name": "s", "version": "2"},
            "capabilities": {"tools": {"listChanged": True}, "logging": {},
                             "resources": {"subscribe": True, "listChanged": False},
                             "prompts": {}}}
    assert discover_result(init) == {
        "supportedVersions": ["2026-07-28"], "resultType": "complete", "ttlMs": 0,
        "cacheScope": "private", "instructions": "be nice",
        "capabilities": {"tools": {}, "resources": {}, "prompts": {}},
        "_meta": {"io.modelcontextprotocol/serverInfo": {"name": "s", "version": "2"}}}



def test_discover_of_a_bridge_that_answers_listens_keeps_what_they_carry() -> None:
    init = {"protocolVersion": "2025-06-18", "capabilities": {
        "tools": {"listChanged": True}, "logging": {},
        "resources": {"subscribe": True, "listChanged": False}}}
    assert discover_result(init, listens=True)["capabilities"] == {
        "tools": {"listChanged": True}, "resources": {"subscribe": True, "listChanged": False}}


def test_a_bridged_listen_honours_only_what_the_server_promised() -> None:
    from firewall.gateway.front.bridge_listen import carried
    from firewall.gateway.front.listen import Honoured

    asked = Honoured(frozenset({"toolsListChanged", "promptsListChanged",
                                "resourcesListChanged"}), frozenset({"res://a"}))
    full = {"tools": {"listChanged": True}, "prompts": {"listChanged": True},
            "resources": {"listChanged": True, "subscribe": True}}
    assert carried(asked, full) == (asked, [])
    assert carried(asked, {"tools": {"listChanged": True}, "prompts": {},
                           "resources": {"listChanged": "yes", "subscribe": False}}) == (
        Honoured(frozenset({"toolsListChanged"})),
        ["promptsListChanged", "resourcesListChanged", "resourceSubscriptions"])
    assert carried(asked, None) == (Honoured(), ["promptsListChanged", "resourcesListChanged",
                                                 "toolsListChanged", "resourceSubscriptions"])

# -- the requestState of the bridge's input requests (rule 6) -----------------
def _session(sid: str = "b1") -> BridgeSession:
    from firewall.policy.decision import Caller
    from tests.test_mrtr import mediator

    med, _ = mediator()
    return BridgeSession(sid=sid, server="vm", caller=Caller("alice", "g"), mediator=med,
                         idle_limit=60, connect=stdio_link(StdioServer(command="true")), timeout=30,
                         seal=SEAL)


SEAL = StateSeal()
ASKED = b'{"jsonrpc":"2.0","id":7,"method":"elicitation/create","params":{"message":"?"}}'


async def test_a_sealed_state_resumes_its_call_once_for_its_caller_only() -> None:
    from firewall.policy.decision import Caller

    session = _session()
    call = session.open_call("mcpwall-bridge-1", "tools/call", {"elicitation": {}}, "s.1", None)
    asked = session.ask(call, ASKED, Caller("alice", "g"))
    assert asked is not None
    key, state, srid = asked
    assert srid == 7 and state.startswith(STATE_PREFIX)
    assert not state.startswith(StateSeal.PREFIX)  # never taken for the mediator's own
    assert session.resume(state, Caller("bob", "g"), "s.1") is None  # another caller
    assert session.resume(state, Caller("alice", "h"), "s.1") is None  # another grant
    assert session.resume(state, Caller("alice", "g"), "s.2") is None  # not linked so
    assert session.resume(state[:-3] + "abc", Caller("alice", "g"), "s.1") is None  # forged
    assert _session("b2").resume(state, Caller("alice", "g"), "s.1") is None  # other session
    assert session.resume(state, Caller("alice", "g"), "s.1") == (call, 7, key)
    assert session.resume(state, Caller("alice", "g"), "s.1") is None  # used once


async def test_an_expired_state_resumes_nothing() -> None:
    from firewall.policy.decision import Caller

    session = _session()
    session.timeout = -1  # sealed already expired
    call = session.open_call("mcpwall-bridge-1", "tools/call", {"elicitation": {}}, "s.1", None)
    asked = session.ask(call, ASKED, Caller("alice", "g"))
    assert asked is not None
    assert session.resume(asked[1], Caller("alice", "g"), "s.1") is None
    assert call.asked is not None  # still waiting: expiry abandons it


def test_a_server_request_needs_the_capability_its_client_offered() -> None:
    call = BridgedCall("b", "tools/call", {"elicitation": {}}, "s.1", None)
    assert call.offers("elicitation/create", {"message": "?"})
    assert not call.offers("elicitation/create", {"mode": "url", "url": "https://x"})
    assert not call.offers("sampling/createMessage", {})
    assert not call.offers("roots/list", None)
    assert BridgedCall("b", "tools/call", {"sampling": {}, "roots": {}}, None, None).offers(
        "roots/list", None)


def test_a_retry_loses_what_a_2025_server_does_not_read() -> None:
    sent = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                       "params": {"name": "t", "arguments": {}, "requestState": "x",
                                  "inputResponses": {"k": {}}, "_meta": META}}).encode()
    assert json.loads(translate_request(sent, "b"))["params"] == {"name": "t", "arguments": {}}
