"""The bundled demo server: the real process driven by the MCP SDK and by raw pipes,
plus the simulated host and the protocol core in-process."""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.shared.exceptions import MCPError

from firewall.demo import catalog
from firewall.demo.host import RUNNING, STOPPED, Host
from firewall.demo.server import MAX_LINE_BYTES, LineBuffer, serve, stdio_command
from firewall.demo.session import DemoSession

FIXTURE = Path(__file__).parent / "fixtures" / "virtualization-mcp.tools.json"
CAPTURE: dict[str, Any] = json.loads(FIXTURE.read_text())
DEMO_ARGV = stdio_command()


def _create(name: str) -> dict[str, Any]:
    return {"action": "create", "vm_name": name, "os_type": "Debian_64", "memory_mb": 1024,
            "disk_size_gb": 10}


# -- through the real process, with the MCP SDK --------------------------------


@asynccontextmanager
async def sdk_client(tmp_path: Path, **kwargs: Any) -> AsyncIterator[Client]:
    params = StdioServerParameters(command=DEMO_ARGV[0], args=DEMO_ARGV[1:], cwd=tmp_path)
    async with Client(params, mode="legacy", **kwargs) as client:
        yield client


@pytest.mark.slow
async def test_sdk_handshake_and_tools_match_the_capture(tmp_path: Path) -> None:
    async with sdk_client(tmp_path) as client:
        assert client.server_info is not None
        assert client.server_info.name == CAPTURE["serverInfo"]["name"]
        assert client.server_info.version == CAPTURE["serverInfo"]["version"]
        assert client.protocol_version == "2025-11-25"
        caps = client.server_capabilities
        assert caps.tools is not None and caps.tools.list_changed
        assert caps.resources is not None and caps.prompts is not None
        assert caps.logging is not None
        listed = (await client.list_tools()).tools
    assert [t.name for t in listed] == [t["name"] for t in CAPTURE["tools"]]
    for got, want in zip(listed, CAPTURE["tools"], strict=True):
        assert got.description == want["description"]
        assert got.input_schema == want["inputSchema"]
        assert got.output_schema == want["outputSchema"]
        assert got.meta == want["meta"]


@pytest.mark.slow
async def test_sdk_vm_lifecycle_has_visible_effects(tmp_path: Path) -> None:
    async with sdk_client(tmp_path) as client:
        call = client.call_tool
        created = await call("vm_management", _create("lab-01"))
        assert not created.is_error
        assert created.structured_content is not None
        assert created.structured_content["vm"]["state"] == STOPPED
        assert json.loads(created.content[0].text) == created.structured_content  # type: ignore[union-attr]

        assert not (await call("vm_management", {"action": "start", "vm_name": "lab-01"})).is_error
        info = await call("vm_management", {"action": "info", "vm_name": "lab-01"})
        assert info.structured_content is not None
        assert info.structured_content["vm"]["state"] == RUNNING
        again = await call("vm_management", {"action": "start", "vm_name": "lab-01"})
        assert again.is_error and "running" in again.content[0].text  # type: ignore[union-attr]

        refused = await call("vm_management", {"action": "delete", "vm_name": "lab-01"})
        assert refused.is_error, "a running VM must not be deletable"
        assert not (await call("vm_management", {"action": "stop", "vm_name": "lab-01"})).is_error
        assert not (await call("vm_management", {"action": "delete", "vm_name": "lab-01"})).is_error

        gone = await call("vm_management", {"action": "info", "vm_name": "lab-01"})
        assert gone.is_error
        assert "lab-01" in gone.content[0].text  # type: ignore[union-attr]
        listed = await call("vm_management", {"action": "list"})
        assert listed.structured_content is not None
        names = [vm["name"] for vm in listed.structured_content["vms"]]
        assert names == ["web-01", "db-01", "build-01"]


@pytest.mark.slow
async def test_sdk_tool_errors_are_results_not_protocol_errors(tmp_path: Path) -> None:
    async with sdk_client(tmp_path) as client:
        bad_action = await client.call_tool("vm_management", {"action": "explode"})
        assert bad_action.is_error and "explode" in bad_action.content[0].text  # type: ignore[union-attr]
        missing = await client.call_tool("vm_management", {"action": "start"})
        assert missing.is_error and "vm_name" in missing.content[0].text  # type: ignore[union-attr]
        unknown_arg = await client.call_tool("vm_management", {"action": "list", "force": True})
        assert unknown_arg.is_error and "force" in unknown_arg.content[0].text  # type: ignore[union-attr]
        with pytest.raises(MCPError) as caught:
            await client.call_tool("format_disk", {})
        assert caught.value.error.code == -32602


@pytest.mark.slow
async def test_sdk_resources_and_prompts(tmp_path: Path) -> None:
    notifications: list[Any] = []

    async def on_message(message: Any) -> None:
        notifications.append(message)

    async with sdk_client(tmp_path, message_handler=on_message) as client:
        uris = [str(r.uri) for r in (await client.list_resources()).resources]
        assert uris == ["vm://web-01", "vm://db-01", "vm://build-01"]
        templates = (await client.list_resource_templates()).resource_templates
        assert [t.uri_template for t in templates] == ["vm://{name}"]

        read = await client.read_resource("vm://db-01")
        body = json.loads(read.contents[0].text)  # type: ignore[union-attr]
        assert body["name"] == "db-01" and body["state"] == STOPPED
        await client.call_tool("vm_management", {"action": "start", "vm_name": "db-01"})
        read = await client.read_resource("vm://db-01")
        assert json.loads(read.contents[0].text)["state"] == RUNNING  # type: ignore[union-attr]

        await client.call_tool("vm_management", _create("lab-02"))
        uris = [str(r.uri) for r in (await client.list_resources(cache_mode="bypass")).resources]
        assert "vm://lab-02" in uris
        with pytest.raises(MCPError) as caught:
            await client.read_resource("vm://nowhere")
        assert caught.value.error.code == -32002

        prompts = (await client.list_prompts()).prompts
        assert "vm_health_report" in [p.name for p in prompts]
        prompt = await client.get_prompt("vm_health_report", {"vm_name": "web-01"})
        text = prompt.messages[0].content.text  # type: ignore[union-attr]
        assert "web-01" in text and '"state":"running"' in text
        with pytest.raises(MCPError):
            await client.get_prompt("vm_health_report", {})
    assert any(isinstance(n, types.ResourceListChangedNotification) for n in notifications), \
        notifications


@pytest.mark.slow
async def test_sdk_progress_notifications_for_create_and_clone(tmp_path: Path) -> None:
    updates: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        updates.append((progress, total, message))

    async with sdk_client(tmp_path) as client:
        await client.call_tool("vm_management", _create("lab-03"), progress_callback=on_progress)
        assert [u[0] for u in updates] == [1, 2, 3]
        assert all(u[1] == 4 for u in updates)
        updates.clear()
        await client.call_tool("vm_management", {"action": "clone", "source_vm": "lab-03",
                                                 "new_vm_name": "lab-04"},
                               progress_callback=on_progress)
        assert len(updates) == 3 and "lab-03" in str(updates[0][2])
        updates.clear()
        await client.call_tool("vm_management", {"action": "start", "vm_name": "lab-04"},
                               progress_callback=on_progress)
        assert updates == []


# -- through the real process, raw pipes -----------------------------------------


class RawServer:
    """The demo process with its stdin and stdout as plain pipes."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self._buf = b""

    async def send(self, *messages: Any) -> None:
        data = b"".join((m if isinstance(m, bytes) else json.dumps(m).encode()) + b"\n"
                        for m in messages)
        assert self.process.stdin is not None
        await self.process.stdin.send_all(data)

    async def read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        with trio.fail_after(20):  # a guard against a hang, not a timing claim
            while b"\n" not in self._buf:
                chunk = await self.process.stdout.receive_some(65536)
                assert chunk, "demo server closed its stdout"
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        decoded: dict[str, Any] = json.loads(line)
        return decoded

    async def rest(self) -> list[dict[str, Any]]:
        """Close stdin and read every remaining message until the process exits."""
        assert self.process.stdin is not None and self.process.stdout is not None
        await self.process.stdin.aclose()
        with trio.fail_after(20):
            while chunk := await self.process.stdout.receive_some(65536):
                self._buf += chunk
            assert await self.process.wait() == 0
        return [json.loads(line) for line in self._buf.splitlines() if line]


@asynccontextmanager
async def raw_server(tmp_path: Path, *args: str) -> AsyncIterator[RawServer]:
    stderr = (tmp_path / "stderr.log").open("wb")
    process = await trio.lowlevel.open_process(
        [*DEMO_ARGV, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
        cwd=tmp_path)
    try:
        yield RawServer(process)
    finally:
        process.kill()
        await process.wait()
        stderr.close()


def _ping(ident: int) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": ident, "method": "ping"}


@pytest.mark.slow
async def test_raw_bad_input_gets_errors_and_the_server_lives_on(tmp_path: Path) -> None:
    async with raw_server(tmp_path, "--log-level", "debug") as server:
        await server.send(b"this is not json")
        parse = await server.read()
        assert parse["id"] is None and parse["error"]["code"] == -32700
        await server.send(_ping(1))
        assert await server.read() == {"jsonrpc": "2.0", "id": 1, "result": {}}

        await server.send({"jsonrpc": "1.0", "id": 2, "method": "ping"})
        envelope = await server.read()
        assert envelope["id"] == 2 and envelope["error"]["code"] == -32600
        await server.send([_ping(3)])
        batch = await server.read()
        assert batch["id"] is None and batch["error"]["code"] == -32600
        await server.send({"jsonrpc": "2.0", "id": 4, "method": "vm/explode"})
        unknown = await server.read()
        assert unknown["id"] == 4 and unknown["error"]["code"] == -32601
        await server.send({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                           "params": {"arguments": {}}})
        params = await server.read()
        assert params["id"] == 5 and params["error"]["code"] == -32602
        await server.send({"jsonrpc": "2.0", "method": "notifications/whatever"}, _ping(6))
        assert (await server.read())["id"] == 6, "a notification must not be answered"
        await server.send(b"\xff\xfe{", _ping(7))
        assert (await server.read())["error"]["code"] == -32700
        assert (await server.read())["id"] == 7
        assert await server.rest() == []
    log_lines = (tmp_path / "stderr.log").read_text().splitlines()
    events = [json.loads(line)["event"] for line in log_lines]
    assert "protocol_error" in events and "demo_server_started" in events


@pytest.mark.slow
async def test_raw_pipelined_requests_are_answered_in_order(tmp_path: Path) -> None:
    async with raw_server(tmp_path) as server:
        init = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
                "params": {"protocolVersion": "2025-03-26", "capabilities": {},
                           "clientInfo": {"name": "raw", "version": "0"}}}
        calls = [{"jsonrpc": "2.0", "id": i, "method": "tools/call",
                  "params": {"name": "vm_management", "arguments": args}}
                 for i, args in enumerate([_create("p-01"),
                                           {"action": "start", "vm_name": "p-01"},
                                           {"action": "info", "vm_name": "p-01"}], 1)]
        await server.send(init, *calls, *[_ping(i) for i in range(10, 60)])
        # The last line has no newline: it is still answered at end of input.
        assert server.process.stdin is not None
        await server.process.stdin.send_all(json.dumps(_ping(99)).encode())
        replies = await server.rest()
    assert [r["id"] for r in replies] == [0, 1, 2, 3, *range(10, 60), 99]
    assert replies[0]["result"]["protocolVersion"] == "2025-03-26"
    assert replies[3]["result"]["structuredContent"]["vm"]["state"] == RUNNING


@pytest.mark.slow
async def test_record_file_lists_each_executed_call_and_is_off_by_default(
        tmp_path: Path) -> None:
    """``--record-file``: one JSON line per call that reached a known tool (tool,
    arguments, id), a failing one included; unknown tools and other methods are not
    calls. Without the option nothing is written."""
    record = tmp_path / "calls.jsonl"
    calls = [{"jsonrpc": "2.0", "id": i, "method": "tools/call",
              "params": {"name": name, "arguments": args}}
             for i, (name, args) in enumerate([
                 ("vm_management", {"action": "list"}),
                 ("vm_management", {"action": "info", "vm_name": "no-such-vm"}),
                 ("no_such_tool", {}),
                 ("vm_management", {"action": "info", "vm_name": "web-01", "x": "a\u2028b"})],
                 1)]
    async with raw_server(tmp_path, "--record-file", str(record)) as server:
        await server.send(*calls, _ping(9))
        replies = await server.rest()
    assert [r["id"] for r in replies] == [1, 2, 3, 4, 9]
    lines = record.read_bytes().split(b"\n")
    assert lines[-1] == b""
    assert [json.loads(line) for line in lines[:-1]] == [
        {"tool": "vm_management", "arguments": {"action": "list"}, "id": 1},
        {"tool": "vm_management", "arguments": {"action": "info", "vm_name": "no-such-vm"},
         "id": 2},
        {"tool": "vm_management", "arguments": {"action": "info", "vm_name": "web-01",
                                                "x": "a\u2028b"}, "id": 4}]
    record.unlink()
    async with raw_server(tmp_path) as server:
        await server.send(calls[0])
        assert len(await server.rest()) == 1
    assert not record.exists()


@pytest.mark.parametrize(("asked", "answered"), [
    ("2025-11-25", "2025-11-25"), ("2025-06-18", "2025-06-18"), ("2025-03-26", "2025-03-26"),
    ("2024-11-05", "2025-11-25"), ("not-a-version", "2025-11-25"),
])
def test_initialize_negotiates_the_protocol_version(asked: str, answered: str) -> None:
    reply = DemoSession().receive(json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "initialize",
         "params": {"protocolVersion": asked, "capabilities": {}}}).encode())
    result = json.loads(reply.frames[0])["result"]
    assert result["protocolVersion"] == answered
    assert result["serverInfo"] == {"name": "virtualization_mcp", "version": "1.0.0"}


# -- serve() on memory streams, with a mock clock ----------------------------------


class MemoryClient:
    def __init__(self, stream: trio.StapledStream[Any, Any]) -> None:
        self.stream = stream
        self._buf = b""

    async def send(self, *messages: dict[str, Any]) -> None:
        await self.stream.send_all(b"".join(json.dumps(m).encode() + b"\n" for m in messages))

    async def read_all(self) -> list[dict[str, Any]]:
        await self.stream.send_eof()
        while chunk := await self.stream.receive_some(65536):
            self._buf += chunk
        return [json.loads(line) for line in self._buf.splitlines()]


@asynccontextmanager
async def memory_server(**kwargs: Any) -> AsyncIterator[MemoryClient]:
    client, server = trio.testing.memory_stream_pair()

    async def run() -> None:
        await serve(server, server, **kwargs)
        await server.send_stream.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        yield MemoryClient(client)


def _tool_call(ident: int, args: dict[str, Any], token: str | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {"name": "vm_management", "arguments": args}
    if token is not None:
        params["_meta"] = {"progressToken": token}
    return {"jsonrpc": "2.0", "id": ident, "method": "tools/call", "params": params}


async def test_slow_create_does_not_block_a_ping(autojump_clock: trio.abc.Clock) -> None:
    async with memory_server(step_delay=5.0) as client:
        await client.send(_tool_call(1, _create("slow-01"), "tok"), _ping(2))
        replies = await client.read_all()
    assert replies[0]["id"] == 2
    progress = [r for r in replies if r.get("method") == "notifications/progress"]
    assert [p["params"]["progress"] for p in progress] == [1, 2, 3]
    assert replies[-1]["id"] == 1 and not replies[-1]["result"]["isError"]


async def test_cancelled_slow_call_gets_no_response(autojump_clock: trio.abc.Clock) -> None:
    async with memory_server(step_delay=5.0) as client:
        await client.send(_tool_call(1, _create("slow-02"), "tok"),
                          {"jsonrpc": "2.0", "method": "notifications/cancelled",
                           "params": {"requestId": 1, "reason": "user gave up"}},
                          _ping(2))
        replies = await client.read_all()
    assert replies == [{"jsonrpc": "2.0", "id": 2, "result": {}}]


async def test_oversized_line_is_refused_and_the_next_one_answered() -> None:
    async with memory_server() as client:
        await client.stream.send_all(b'{"jsonrpc":"2.0","id":1,"method":"ping","x":"'
                                     + b"a" * (MAX_LINE_BYTES + 10) + b'"}\n')
        await client.send(_ping(2))
        replies = await client.read_all()
    assert replies[0]["id"] is None and replies[0]["error"]["code"] == -32600
    assert replies[1] == {"jsonrpc": "2.0", "id": 2, "result": {}}


_LINE = st.binary(min_size=1, max_size=40).map(lambda b: b.replace(b"\n", b"").strip())


@given(st.lists(_LINE.filter(bool), max_size=8),
       st.lists(st.integers(min_value=1, max_value=30), min_size=1, max_size=10))
def test_line_buffer_is_independent_of_chunking(lines: list[bytes], cuts: list[int]) -> None:
    data = b"".join(line + b"\n" for line in lines)
    buffer, pos, i = LineBuffer(limit=64), 0, 0
    got: list[bytes | None] = []
    while pos < len(data):
        size = cuts[i % len(cuts)]
        got.extend(buffer.feed(data[pos:pos + size]))
        pos, i = pos + size, i + 1
    got.extend(buffer.flush())
    assert got == lines


def test_line_buffer_drops_an_overlong_line_once() -> None:
    buffer = LineBuffer(limit=8)
    assert list(buffer.feed(b"0123456789")) == [None]
    assert list(buffer.feed(b"abcdef")) == []
    assert list(buffer.feed(b"gh\nok\r\n")) == [b"ok"]


# -- the simulated host, in-process -------------------------------------------------

SANDBOX = "<sandbox id>"
EVERY_ACTION: list[tuple[str, dict[str, Any]]] = [
    ("vm_management", {"action": "list", "limit": 2}),
    ("vm_management", _create("t-01")),
    ("vm_management", {"action": "start", "vm_name": "t-01"}),
    ("vm_management", {"action": "pause", "vm_name": "t-01"}),
    ("vm_management", {"action": "resume", "vm_name": "t-01"}),
    ("vm_management", {"action": "reset", "vm_name": "t-01"}),
    ("vm_management", {"action": "info", "vm_name": "t-01"}),
    ("vm_management", {"action": "stop", "vm_name": "t-01"}),
    ("vm_management", {"action": "clone", "source_vm": "t-01", "new_vm_name": "t-02"}),
    ("vm_management", {"action": "delete", "vm_name": "t-02"}),
    ("snapshot_management", {"action": "create", "vm_name": "t-01", "snapshot_name": "s1",
                             "description": "first"}),
    ("snapshot_management", {"action": "list", "vm_name": "t-01"}),
    ("snapshot_management", {"action": "restore", "vm_name": "t-01", "snapshot_name": "s1"}),
    ("snapshot_management", {"action": "delete", "vm_name": "t-01", "snapshot_name": "s1"}),
    ("network_management", {"action": "list_networks"}),
    ("network_management", {"action": "create_network", "network_name": "net1",
                            "ip_address": "10.0.5.1", "netmask": "255.255.255.0"}),
    ("network_management", {"action": "list_adapters", "vm_name": "t-01"}),
    ("network_management", {"action": "configure_adapter", "vm_name": "t-01",
                            "adapter_slot": 1, "network_type": "hostonly",
                            "network_name": "net1"}),
    ("network_management", {"action": "configure_adapter", "vm_name": "t-01",
                            "adapter_slot": 1, "network_type": "nat"}),
    ("network_management", {"action": "remove_network", "network_name": "net1"}),
    ("storage_management", {"action": "list_controllers", "vm_name": "t-01"}),
    ("storage_management", {"action": "create_controller", "vm_name": "t-01",
                            "controller_name": "NVMe", "controller_type": "pcie"}),
    ("storage_management", {"action": "create_disk", "disk_name": "data1", "disk_size_gb": 20}),
    ("storage_management", {"action": "attach_disk", "vm_name": "t-01",
                            "disk_path": "/vms/disks/data1.vdi"}),
    ("storage_management", {"action": "list_disks", "vm_name": "t-01"}),
    ("storage_management", {"action": "remove_controller", "vm_name": "t-01",
                            "controller_name": "NVMe"}),
    ("system_management", {"action": "host_info"}),
    ("system_management", {"action": "vbox_version"}),
    ("system_management", {"action": "ostypes"}),
    ("system_management", {"action": "metrics", "vm_name": "web-01"}),
    ("system_management", {"action": "screenshot", "vm_name": "web-01"}),
    ("sandbox_management", {"action": "execute_code", "code": "print(1)"}),
    ("sandbox_management", {"action": "execute_file", "host_path": "C:\\work\\job.py"}),
    ("sandbox_management", {"action": "session_create", "sandbox_name": "box"}),
    ("sandbox_management", {"action": "session_write_file", "sandbox_id": SANDBOX,
                            "container_path": "/workspace/a.txt", "content": "hello"}),
    ("sandbox_management", {"action": "session_read_file", "sandbox_id": SANDBOX,
                            "container_path": "/workspace/a.txt"}),
    ("sandbox_management", {"action": "session_run", "sandbox_id": SANDBOX,
                            "command": "cat /workspace/a.txt"}),
    ("sandbox_management", {"action": "session_list"}),
    ("sandbox_management", {"action": "session_destroy", "sandbox_id": SANDBOX}),
    ("vm_agentic_workflow", {"action": "suggest_config", "use_case": "CI runner"}),
    ("vm_agentic_workflow", {"action": "sandbox_workflow", "goal": "open a suspicious file"}),
    ("vm_agentic_workflow", {"action": "workflow", "goal": "add a build VM"}),
    ("info_tools", {"action": "list_tools", "category": "vm"}),
    ("info_tools", {"action": "tool_info", "tool_name": "vm_management"}),
    ("info_tools", {"action": "tool_schema", "tool_name": "snapshot_management"}),
    ("info_tools", {"action": "help"}),
    ("proxmox_management", {"operation": "list_vms"}),
    ("proxmox_management", {"operation": "node_status"}),
    ("proxmox_management", {"operation": "cluster_resources"}),
    ("proxmox_management", {"operation": "status", "vmid": "101"}),
    ("proxmox_management", {"operation": "start_vm", "vmid": "101"}),
    ("proxmox_management", {"operation": "stop_vm", "vmid": "101"}),
    ("proxmox_management", {"operation": "start_vm", "vmid": "101"}),
    ("proxmox_management", {"operation": "shutdown_vm", "vmid": "101"}),
    ("proxmox_management", {"operation": "create_snapshot", "vmid": "101",
                            "snapshot_name": "p1"}),
    ("proxmox_management", {"operation": "list_snapshots", "vmid": "101"}),
    ("proxmox_management", {"operation": "delete_snapshot", "vmid": "101",
                            "snapshot_name": "p1"}),
]


def _enum_actions() -> set[tuple[str, str]]:
    pairs = set()
    for tool in CAPTURE["tools"]:
        action = tool["inputSchema"]["properties"].get("action")
        for name in action["enum"] if action else ():
            pairs.add((tool["name"], name))
    return pairs


def test_every_action_of_every_tool_succeeds_in_a_plausible_sequence() -> None:
    covered = {(tool, args["action"]) for tool, args in EVERY_ACTION if "action" in args}
    assert covered == _enum_actions()
    host = Host(catalog.load())
    sandbox = ""
    for tool, args in EVERY_ACTION:
        args = {k: sandbox if v == SANDBOX else v for k, v in args.items()}
        result = host.call(tool, args)
        assert result.error is None, f"{tool} {args}: {result.error}"
        assert result.data is not None and result.data["success"] is True
        if args.get("action") == "session_create":
            sandbox = result.data["sandbox"]["sandbox_id"]
    assert set(host.vms) == {"web-01", "db-01", "build-01", "t-01"}
    assert host.vms["db-01"].state == STOPPED and not host.vms["db-01"].snapshots
    assert (host.disks["/vms/disks/data1.vdi"].vm, host.disks["/vms/disks/data1.vdi"].controller
            ) == ("t-01", "SATA")
    assert "net1" not in host.networks and not host.sandboxes


def test_state_rules_refuse_impossible_moves_and_change_nothing() -> None:
    host = Host(catalog.load())
    before = {name: vm.state for name, vm in host.vms.items()}
    for args in ({"action": "start", "vm_name": "web-01"},     # already running
                 {"action": "resume", "vm_name": "db-01"},     # not paused
                 {"action": "delete", "vm_name": "build-01"},  # paused
                 {"action": "create", **{k: v for k, v in _create("web-01").items()
                                         if k != "action"}},   # name taken
                 {"action": "create", **{**_create("x"), "action": "create",
                                         "memory_mb": 10**9}},
                 {"action": "clone", "source_vm": "nope", "new_vm_name": "n"}):
        assert host.call("vm_management", args).is_error, args
    assert {name: vm.state for name, vm in host.vms.items()} == before
    restore = host.call("snapshot_management", {"action": "restore", "vm_name": "web-01",
                                                "snapshot_name": "baseline"})
    assert restore.is_error and "running" in str(restore.error)
    in_use = host.call("network_management", {"action": "remove_network",
                                              "network_name": "vboxnet0"})
    assert in_use.is_error and "web-01" in str(in_use.error)
    removed = host.call("storage_management", {"action": "remove_controller",
                                               "vm_name": "db-01", "controller_name": "SATA"})
    assert removed.data is not None
    assert removed.data["detached_disks"] == ["/vms/db-01/db-01.vdi"]
    assert host.disks["/vms/db-01/db-01.vdi"].vm is None


@pytest.mark.parametrize(("tool", "args", "needle"), [
    ("vm_management", {"action": "info"}, "vm_name"),
    ("vm_management", {"action": "create", "vm_name": "x"}, "os_type"),
    ("vm_management", {"action": "clone", "source_vm": "web-01"}, "new_vm_name"),
    ("vm_management", {}, "action"),
    ("vm_management", {"action": "list", "limit": "ten"}, "integer"),
    ("vm_management", {"action": "list", "limit": True}, "integer"),
    ("vm_management", {"action": "create", "vm_name": "x", "os_type": "BeOS",
                       "memory_mb": 1, "disk_size_gb": 1}, "BeOS"),
    ("snapshot_management", {"action": "list"}, "vm_name"),
    ("network_management", {"action": "configure_adapter", "vm_name": "web-01",
                            "adapter_slot": 9, "network_type": "nat"}, "adapter_slot"),
    ("storage_management", {"action": "attach_disk", "vm_name": "db-01",
                            "disk_path": "/vms/web-01/web-01.vdi"}, "already attached"),
    ("system_management", {"action": "screenshot", "vm_name": "db-01"}, "stopped"),
    ("sandbox_management", {"action": "session_run", "sandbox_id": "sbx-9"}, "sbx-9"),
    ("sandbox_management", {"action": "session_run"}, "sandbox_id"),
    ("proxmox_management", {"operation": "reboot_everything"}, "unknown operation"),
    ("info_tools", {"action": "tool_info", "tool_name": "nope"}, "nope"),
    ("vm_management", {"action": "list", "vm_name": None, "verbose": 1}, "verbose"),
])
def test_bad_calls_are_tool_errors_with_a_reason(tool: str, args: dict[str, Any],
                                                 needle: str) -> None:
    result = Host(catalog.load()).call(tool, args)
    assert result.is_error and needle in str(result.error), result.error


def test_sandbox_never_touches_the_machine(tmp_path: Path) -> None:
    target = tmp_path / "written-by-sandbox"
    host = Host(catalog.load())
    code = f"open({str(target)!r}, 'w').write('x')"
    assert not host.call("sandbox_management", {"action": "execute_code", "code": code}).is_error
    assert not host.call("sandbox_management", {"action": "execute_code", "code":
                                                f"touch {target}", "language": "bash"}).is_error
    box = host.call("sandbox_management", {"action": "session_create"}).data
    assert box is not None
    ident = box["sandbox"]["sandbox_id"]
    ran = host.call("sandbox_management", {"action": "session_run", "sandbox_id": ident,
                                           "command": f"touch {target}"})
    assert ran.data is not None and ran.data["simulated"] is True
    shot = host.call("system_management", {"action": "screenshot", "vm_name": "web-01",
                                           "output_file": str(target)})
    assert not shot.is_error
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_log_messages_and_list_changed_follow_the_client_opt_in() -> None:
    session = DemoSession()
    call = json.dumps(_tool_call(1, _create("n-01"))).encode()
    before = [json.loads(f) for f in session.receive(call).frames]
    assert [f.get("method") for f in before] == [None], "nothing before initialized"
    session.receive(b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
    level = session.receive(b'{"jsonrpc":"2.0","id":2,"method":"logging/setLevel",'
                            b'"params":{"level":"info"}}')
    assert json.loads(level.frames[0])["result"] == {}
    frames = [json.loads(f) for f in session.receive(
        json.dumps(_tool_call(3, _create("n-02"))).encode()).frames]
    assert [f.get("method") for f in frames] == [
        "notifications/message", None, "notifications/resources/list_changed"]
    assert frames[0]["params"]["data"]["event"] == "vm_created"
    bad = session.receive(b'{"jsonrpc":"2.0","id":4,"method":"logging/setLevel",'
                          b'"params":{"level":"loud"}}')
    assert json.loads(bad.frames[0])["error"]["code"] == -32602


def test_vm_names_with_spaces_are_percent_encoded_in_resource_uris() -> None:
    session = DemoSession()
    created = session.receive(json.dumps(_tool_call(1, _create("Win Dev 11"))).encode())
    assert json.loads(created.frames[0])["result"]["isError"] is False
    listed = json.loads(session.receive(
        b'{"jsonrpc":"2.0","id":2,"method":"resources/list"}').frames[0])["result"]["resources"]
    assert listed[-1]["uri"] == "vm://Win%20Dev%2011"
    read = session.receive(json.dumps({"jsonrpc": "2.0", "id": 3, "method": "resources/read",
                                       "params": {"uri": listed[-1]["uri"]}}).encode())
    body = json.loads(json.loads(read.frames[0])["result"]["contents"][0]["text"])
    assert body["name"] == "Win Dev 11"
    bad = Host(catalog.load()).call("vm_management", _create("../etc"))
    assert bad.is_error and "invalid VM name" in str(bad.error)


def test_catalog_serves_the_capture_verbatim() -> None:
    served = catalog.load()
    assert served.names == tuple(t["name"] for t in CAPTURE["tools"])
    for tool, want in zip(served.tools, CAPTURE["tools"], strict=True):
        assert tool["inputSchema"] == want["inputSchema"]
        assert tool["_meta"] == want["meta"] and "meta" not in tool
    packaged = Path(catalog.__file__).with_name("tools.json")
    assert json.loads(packaged.read_text()) == CAPTURE
