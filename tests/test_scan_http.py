"""``mcpwall scan --upstream``'s HTTP side (firewall/gateway/upstream/survey.py),
in process: a hypercorn server on 127.0.0.1 with a scripted ASGI app answers
as an MCP server would (JSON or SSE, a session id), or as a server that wants
credentials, or as something that is not MCP at all."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
from click.testing import CliRunner
from test_upstream_http import start_hypercorn

from firewall.cli import main
from firewall.gateway.upstream.survey import SurveyError, survey_http

Reply = tuple[int, str, bytes]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class McpApp:
    """Answers initialize (JSON, with a session id) and tools/list (SSE, two
    pages); records each request; refuses all without ``authorization: Bearer ok``
    when ``token`` is set."""

    def __init__(self, token: bool = False) -> None:
        self.token = token
        self.seen: list[tuple[str, dict[str, str], Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        body = b""
        while True:
            event = await receive()
            body += event.get("body", b"")
            if not event.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        message = json.loads(body) if body else None
        self.seen.append((scope["method"], headers, message))
        status, kind, payload, extra = self.reply(scope["method"], headers, message)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", kind.encode()), *extra]})
        await send({"type": "http.response.body", "body": payload})

    def reply(self, method: str, headers: dict[str, str], message: Any
              ) -> tuple[int, str, bytes, list[tuple[bytes, bytes]]]:
        if self.token and headers.get("authorization") != "Bearer ok":
            return 401, "application/json", b'{"error":"unauthorized"}', []
        if method == "DELETE":
            return 200, "text/plain", b"", []
        if message.get("id") is None:
            return 202, "text/plain", b"", []
        ident = message["id"]
        if message["method"] == "initialize":
            result = {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
                      "serverInfo": {"name": "scripted", "version": "1"}}
            body = json.dumps({"jsonrpc": "2.0", "id": ident, "result": result}).encode()
            return 200, "application/json", body, [(b"mcp-session-id", b"s-1")]
        cursor = (message.get("params") or {}).get("cursor")
        page: dict[str, Any] = {"tools": [{"name": "list_things" if cursor else "drop_table",
                                           "inputSchema": {"type": "object"}}]}
        if cursor is None:
            page["nextCursor"] = "p2"
        notice = {"jsonrpc": "2.0", "method": "notifications/message",
                  "params": {"level": "info", "data": "hi"}}
        answer = {"jsonrpc": "2.0", "id": ident, "result": page}
        sse = f"data: {json.dumps(notice)}\n\ndata: {json.dumps(answer)}\n\n".encode()
        return 200, "text/event-stream", sse, []


async def survey(url: str, headers: list[tuple[str, str]] | None = None) -> Any:
    with trio.fail_after(20):
        return await survey_http(url, headers or [])


async def test_a_session_with_json_and_sse_answers_and_pages(nursery: trio.Nursery) -> None:
    app = McpApp(token=True)
    base = await start_hypercorn(nursery, app)
    result = await survey(f"{base}/mcp", [("Authorization", "Bearer ok")])
    assert [t["name"] for t in result.tools] == ["drop_table", "list_things"]
    assert result.server_info["name"] == "scripted" and result.prompts == []
    methods = [(m, (msg or {}).get("method")) for m, _, msg in app.seen]
    assert methods == [("POST", "initialize"), ("POST", "notifications/initialized"),
                       ("POST", "tools/list"), ("POST", "tools/list"), ("DELETE", None)]
    for _, headers, _ in app.seen:
        assert headers["authorization"] == "Bearer ok"
    for _, headers, _ in app.seen[1:]:
        assert headers["mcp-session-id"] == "s-1"
        assert headers["mcp-protocol-version"] == "2025-06-18"


async def test_401_says_to_pass_credentials(nursery: trio.Nursery) -> None:
    base = await start_hypercorn(nursery, McpApp(token=True))
    with pytest.raises(SurveyError, match=r"HTTP 401 from .*/mcp: the server wants "
                                          r"credentials; pass them with --header"):
        await survey(f"{base}/mcp", [("Authorization", "Bearer wrong")])


async def lifespan(receive: Receive, send: Send) -> None:
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})


async def html(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    await receive()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/html")]})
    await send({"type": "http.response.body", "body": b"<html>hello</html>"})


async def test_a_web_page_is_not_mcp(nursery: trio.Nursery) -> None:
    base = await start_hypercorn(nursery, html)
    with pytest.raises(SurveyError, match=r"not MCP: .* answered initialize with text/html: "
                                          r"'<html>hello</html>'"):
        await survey(f"{base}/mcp")


async def test_nothing_listening_and_a_bad_url() -> None:
    refused = r"cannot reach http://127\.0\.0\.1:9/mcp: connect_refused"
    with pytest.raises(SurveyError, match=refused):
        await survey("http://127.0.0.1:9/mcp")
    with pytest.raises(SurveyError, match="ftp"):
        await survey("ftp://example.com/mcp")


@pytest.mark.parametrize(("args", "message"), [
    ([], "give a server: either -- COMMAND [ARGS...] or --upstream URL"),
    (["--upstream", "http://127.0.0.1:9/mcp", "--", "x"], "give a server: either"),
    (["--header", "A: b", "--", "x"], "--header goes with --upstream"),
    (["--upstream", "http://127.0.0.1:9/mcp", "--header", "nocolon"],
     "expected 'Name: value', got 'nocolon'"),
    (["--format", "intercept", "-o", "p.json", "--", "x"],
     "intercept policies are written as .yaml or .yml"),
    (["-o", "p.toml", "--", "x"], "mcpwall policies are written as .yaml or .yml or .json"),
])
def test_usage_errors_start_nothing(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["scan", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
