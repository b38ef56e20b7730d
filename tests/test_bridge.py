"""The bridge's translations (firewall/gateway/front/bridge.py rules 2 to 4), no process."""

from __future__ import annotations

import json

from firewall.gateway.front.bridge import discover_result, translate_answer, translate_request

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
