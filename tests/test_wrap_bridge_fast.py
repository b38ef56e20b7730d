"""The pure parts of wrap's bridging (firewall/gateway/front/wrap_bridge.py): what
of a decided message is removed before a 2025 child reads it, and what counts
as a message of the new revision."""

from __future__ import annotations

from typing import Any

from firewall.gateway.front.wrap_bridge import modern_message, strip_revision_meta

META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "c", "version": "1"}}


def test_the_revisions_keys_are_removed_and_the_rest_kept() -> None:
    value: dict[str, Any] = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
        "name": "echo", "_meta": {**META, "progressToken": 3}}}
    assert strip_revision_meta(value)
    assert value == {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                     "params": {"name": "echo", "_meta": {"progressToken": 3}}}


def test_an_emptied_meta_is_removed_and_a_message_without_one_left_alone() -> None:
    value: dict[str, Any] = {"id": "a", "method": "tools/list", "params": {"_meta": dict(META)}}
    assert strip_revision_meta(value)
    assert value == {"id": "a", "method": "tools/list", "params": {}}
    plain: dict[str, Any] = {"id": 1, "method": "tools/list", "params": {"_meta": {"x": 1}}}
    assert not strip_revision_meta(plain)
    assert plain["params"] == {"_meta": {"x": 1}}


def test_only_a_body_naming_the_new_revision_is_modern() -> None:
    assert modern_message(b'{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":'
                   b'{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}') is not None
    assert modern_message(b'{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":'
                   b'{"io.modelcontextprotocol/protocolVersion":"2025-11-25"}}}') is None
    assert modern_message(b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}') is None
    assert modern_message(b'{"io.modelcontextprotocol/protocolVersion" not json') is None
    # A JSON escape spells the same member: still the new revision.
    for key in (rb'io.modelcontextprotocol\/protocolVersion',
                rb'io.modelcontextprotocol/protocol\u0056ersion'):
        assert modern_message(b'{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":'
                              b'{"' + key + b'":"2026-07-28"}}}') is not None


def test_bridge_goes_with_a_command_only() -> None:
    from click.testing import CliRunner

    from firewall.cli.wrap import wrap

    result = CliRunner().invoke(wrap, ["--bridge", "--upstream", "http://127.0.0.1:9/mcp"])
    assert result.exit_code == 2 and "--bridge goes with -- COMMAND" in result.output


# -- a round of input requests asked of a 2025 client (rule 8; bridge_modern.InputRound)
def test_a_round_becomes_requests_and_its_answers_the_retry_s_members() -> None:
    import json

    from firewall.gateway.front.bridge_modern import InputRound

    ir = {"resultType": "input_required", "requestState": "s-1", "inputRequests": {
        "region": {"method": "elicitation/create", "params": {"message": "Where?"}},
        "roots": {"method": "roots/list"}}}
    asked = InputRound(ir, 7, "vm")
    assert asked.error is None
    sent = [json.loads(m) for m in asked.messages]
    assert [(m["method"], m.get("params")) for m in sent] == [
        ("elicitation/create", {"message": "Where?"}), ("roots/list", None)]
    assert [asked.keys[m["id"]] for m in sent] == ["region", "roots"]
    assert not asked.answered({"id": "someone-else", "result": {}})
    assert not asked.answered({"id": sent[0]["id"], "result": {"action": "accept"}})
    assert asked.answered({"id": sent[1]["id"], "result": {"roots": []}})
    assert asked.outcome() == {"inputResponses": {"region": {"action": "accept"},
                                                  "roots": {"roots": []}},
                               "requestState": "s-1"}


def test_a_round_mcpwall_cannot_ask_or_the_client_refused_ends_the_call() -> None:
    import json

    from firewall.gateway.front.bridge_modern import InputRound

    odd = InputRound({"inputRequests": {"x": {"method": "tools/call"}}}, 3, "vm")
    assert odd.messages == [] and odd.error is not None
    assert json.loads(odd.error)["id"] == 3
    assert InputRound({"inputRequests": {}}, 3, "vm").error is not None
    asked = InputRound({"inputRequests": {"k": {"method": "sampling/createMessage"}}}, 4, "vm")
    [ident] = asked.keys
    assert asked.answered({"id": ident, "error": {"code": -1, "message": "no"}})
    refused = asked.outcome()
    assert isinstance(refused, bytes) and b"refused" in refused
    late = InputRound({"inputRequests": {"k": {"method": "roots/list"}}}, 5, "vm")
    assert isinstance(late.outcome(), bytes)  # nothing answered (in time)
