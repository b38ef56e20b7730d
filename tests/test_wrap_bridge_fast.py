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


def test_bridge_goes_with_a_command_only() -> None:
    from click.testing import CliRunner

    from firewall.cli.wrap import wrap

    result = CliRunner().invoke(wrap, ["--bridge", "--upstream", "http://127.0.0.1:9/mcp"])
    assert result.exit_code == 2 and "--bridge goes with -- COMMAND" in result.output
