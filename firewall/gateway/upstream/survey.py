"""Survey an MCP server for ``mcpwall scan``: handshake, then list what it offers.

Rules this module keeps:

1. It writes only what mcpwall itself composes: ``initialize``,
   ``notifications/initialized``, ``tools/list``, ``prompts/list``,
   ``resources/list``, ``resources/templates/list`` (each page, following
   ``nextCursor``), and, over stdio, an error answering any request the server
   makes (it was told the client has no capabilities; over HTTP such requests,
   which would arrive on an event stream, are ignored). Nothing the server does
   (``tools/call`` above all) is ever sent: a scan cannot change a server.
   Every write is an :class:`~firewall.gateway.outbound.Outbound` made here,
   at one place (``tests/test_outbound.py`` pins it).
2. Lists are asked for only when the server advertised the capability, and a
   ``-32601`` (method not found) answer to one counts as an empty list.
3. Every failure is a :class:`SurveyError` whose message an operator can act
   on (the command that could not start, the exit code of a server that died,
   the HTTP status, the bytes that were not JSON-RPC, the step that timed
   out); the child is always ended and the HTTP session deleted.
4. Pagination is bounded: a cursor seen twice, or more than ``MAX_PAGES``
   pages, is an error rather than a loop.

Example::

    with trio.fail_after(30):
        survey = await survey_stdio(["mcp-server-time"])
    [t["name"] for t in survey.tools]
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final, Protocol

import msgspec
import trio

from firewall import __version__
from firewall.config import StdioServer
from firewall.gateway.outbound import Outbound
from firewall.gateway.upstream.http import HttpUpstream, Response, UpstreamError
from firewall.gateway.upstream.stdio import StderrTail, StdioChild, open_stdio_child
from firewall.protocol import jsonrpc, mcp

MAX_PAGES: Final = 1000
STDERR_LINES: Final = 3  # of a server that died, quoted in the error
_LISTS: Final = (
    ("tools", "tools/list", "tools"),
    ("prompts", "prompts/list", "prompts"),
    ("resources", "resources/list", "resources"),
    ("resources", "resources/templates/list", "resourceTemplates"),
)


class SurveyError(Exception):
    """The server could not be surveyed; the message says why, for a person."""


class Survey(msgspec.Struct, frozen=True):
    """What a server said about itself and listed."""

    server_info: dict[str, Any]
    protocol_version: str
    capabilities: dict[str, Any]
    tools: list[dict[str, Any]]
    prompts: list[dict[str, Any]]
    resources: list[dict[str, Any]]
    templates: list[dict[str, Any]]


class _Peer(Protocol):
    async def ask(self, method: str, params: dict[str, Any]) -> dict[str, Any]: ...

    async def notify(self, method: str) -> None: ...


def _own(data: bytes) -> Outbound:
    return Outbound.own(data, "mcpwall scan: its own handshake, lists and refusals")


def _result(message: dict[str, Any], method: str) -> dict[str, Any]:
    error = message.get("error")
    if isinstance(error, dict):
        raise _RpcError(method, error.get("code"), str(error.get("message", "")))
    result = message.get("result")
    if not isinstance(result, dict):
        raise SurveyError(f"not MCP: the answer to {method} has no result object")
    return result


class _RpcError(SurveyError):
    def __init__(self, method: str, code: Any, message: str) -> None:
        super().__init__(f"the server answered {method} with error {code}: {message}")
        self.code = code


def _decode(data: bytes) -> dict[str, Any] | None:
    try:
        value = jsonrpc.decode_any(data)
    except (msgspec.DecodeError, ValueError):
        return None
    return value if isinstance(value, dict) and value.get("jsonrpc") == "2.0" else None


def _show(data: bytes) -> str:
    text = data[:120].decode("utf-8", "replace")
    return repr(text) + ("..." if len(data) > 120 else "")


class _StdioPeer:
    """Requests over a child's stdin and stdout, one at a time."""

    def __init__(self, child: StdioChild, argv: Sequence[str], stderr: StderrTail) -> None:
        self.child = child
        self.argv = argv
        self.stderr = stderr
        self.ids = itertools.count(1)
        self.lines: AsyncIterator[bytes] = child.lines()
        self.junk: bytes | None = None

    async def _write(self, data: bytes) -> None:
        try:
            await self.child.send(_own(data))
        except Exception as exc:  # ChildExited, or a pipe gone under us
            raise await self._died(f"before it read {_show(data)}") from exc

    async def _died(self, when: str) -> SurveyError:
        with trio.move_on_after(2):
            await self.child.wait()
        with trio.move_on_after(1):  # its last stderr lines may still be in the pipe
            await self.stderr.closed.wait()
        code = self.child.returncode
        how = "exited" if code is None else f"exited with code {code}"
        junk = f"; its stdout held non-JSON-RPC text: {_show(self.junk)}" if self.junk else ""
        lines = self.stderr.lines
        said = (f"; its stderr ended with: {' | '.join(lines)}" if lines
                else "; it wrote nothing to stderr")
        return SurveyError(f"the server {self.argv[0]!r} {how} {when}{junk}{said}")

    async def ask(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        ident = next(self.ids)
        await self._write(jsonrpc.request(method, params, ident))
        async for line in self.lines:
            message = _decode(line)
            if message is None:
                self.junk = self.junk or line
                continue
            if "method" in message:
                if "id" in message:  # a request to us: we offered no capability
                    await self._write(jsonrpc.error_response(
                        message["id"], jsonrpc.METHOD_NOT_FOUND,
                        "mcpwall scan offers no client capabilities"))
                continue
            if message.get("id") == ident:
                return _result(message, method)
        raise await self._died(f"before answering {method}")

    async def notify(self, method: str) -> None:
        await self._write(jsonrpc.request(method))


class _HttpPeer:
    """Requests POSTed to a Streamable HTTP endpoint; JSON or SSE answers."""

    def __init__(self, upstream: HttpUpstream) -> None:
        self.upstream = upstream
        self.ids = itertools.count(1)
        self.session: str | None = None
        self.version: str | None = None

    def _headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json",
                   "accept": "application/json, text/event-stream"}
        if self.session is not None:
            headers["mcp-session-id"] = self.session
        if self.version is not None:
            headers["mcp-protocol-version"] = self.version
        return headers

    def _status(self, resp: Response, method: str, body: bytes) -> SurveyError:
        url = self.upstream.url
        if resp.status in (401, 403):
            return SurveyError(
                f"HTTP {resp.status} from {url}: the server wants credentials; "
                f"pass them with --header 'Authorization: Bearer ...'")
        if resp.status in (404, 405):
            return SurveyError(f"HTTP {resp.status} from {url} to {method}: "
                               f"no MCP endpoint at this URL (Streamable HTTP is usually /mcp)")
        return SurveyError(f"HTTP {resp.status} from {url} to {method}: {_show(body)}")

    async def ask(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        ident = next(self.ids)
        data = jsonrpc.request(method, params, ident)
        async with await self.upstream.forward(self._headers(), _own(data)) as resp:
            if resp.status >= 400:
                raise self._status(resp, method, await resp.read(4096))
            if method == mcp.INITIALIZE:
                self.session = resp.header("mcp-session-id")
            if resp.content_type == "text/event-stream":
                async for event in resp.events():
                    message = _decode(event.data or b"")
                    if message is not None and "method" not in message \
                            and message.get("id") == ident:
                        return _result(message, method)
                raise SurveyError(f"not MCP: the event stream answering {method} ended "
                                  f"without its response")
            body = await resp.read(64 * 1024 * 1024)
        message = _decode(body)
        if message is None:
            kind = resp.content_type or "no content type"
            raise SurveyError(f"not MCP: {self.upstream.url} answered {method} with "
                              f"{kind}: {_show(body)}")
        return _result(message, method)

    async def notify(self, method: str) -> None:
        data = jsonrpc.request(method)
        async with await self.upstream.forward(self._headers(), _own(data)) as resp:
            body = await resp.read(64 * 1024)
            if resp.status >= 400:
                raise self._status(resp, method, body)

    async def close(self) -> None:
        if self.session is None:
            return
        with trio.move_on_after(2), trio.CancelScope(shield=True):
            try:
                async with self.upstream.request("DELETE", self._headers()) as resp:
                    await resp.read(64 * 1024)
            except UpstreamError:
                pass


async def _pages(peer: _Peer, method: str, key: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    seen: set[str] = set()
    for _ in range(MAX_PAGES):
        params = {} if cursor is None else {"cursor": cursor}
        try:
            result = await peer.ask(method, params)
        except _RpcError as exc:
            if exc.code == jsonrpc.METHOD_NOT_FOUND and cursor is None:
                return []
            raise
        page = result.get(key)
        if not isinstance(page, list):
            raise SurveyError(f"not MCP: the answer to {method} has no {key!r} array")
        items.extend(item for item in page if isinstance(item, dict))
        cursor = result.get("nextCursor")
        if not isinstance(cursor, str) or not cursor:
            return items
        if cursor in seen:
            raise SurveyError(f"{method}: the server gave the cursor {cursor!r} twice")
        seen.add(cursor)
    raise SurveyError(f"{method}: more than {MAX_PAGES} pages")


class Progress:
    """The step of a survey in progress: what a timeout interrupted."""

    def __init__(self) -> None:
        self.step = "the answer to initialize"


async def _survey(peer: _Peer, step: Progress) -> Survey:
    init = await peer.ask(mcp.INITIALIZE, {
        "protocolVersion": mcp.LATEST_PROTOCOL_VERSION,
        "capabilities": {},
        "clientInfo": {"name": "mcpwall-scan", "version": __version__},
    })
    version = init.get("protocolVersion")
    if not isinstance(version, str):
        raise SurveyError("not MCP: the answer to initialize has no protocolVersion")
    if isinstance(peer, _HttpPeer):
        peer.version = version
    step.step = "notifications/initialized to be accepted"
    await peer.notify("notifications/initialized")
    capabilities = init.get("capabilities")
    capabilities = capabilities if isinstance(capabilities, dict) else {}
    found: dict[str, list[dict[str, Any]]] = {}
    for capability, method, key in _LISTS:
        if capability in capabilities:
            step.step = f"the answer to {method}"
            found[key] = await _pages(peer, method, key)
    info = init.get("serverInfo")
    return Survey(
        server_info=info if isinstance(info, dict) else {},
        protocol_version=version,
        capabilities=capabilities,
        tools=found.get("tools", []),
        prompts=found.get("prompts", []),
        resources=found.get("resources", []),
        templates=found.get("resourceTemplates", []),
    )


async def survey_stdio(argv: Sequence[str], *, progress: Progress | None = None,
                       env: dict[str, str] | None = None) -> Survey:
    """Start ``argv`` as a stdio MCP server, survey it, end it.

    The caller bounds the time with a cancel scope; ``progress`` then says
    what the survey was waiting for."""
    if not argv:
        raise SurveyError("no server command given")
    settings = StdioServer(command=argv[0], args=list(argv[1:]), env=env or {},
                           terminate_grace_seconds=2.0)
    # The failure leaves the child's nursery as a value, not inside an exception group.
    outcome: Survey | SurveyError
    try:
        stderr = StderrTail(STDERR_LINES)
        async with open_stdio_child(settings, server="scan", stderr_tail=stderr) as child:
            try:
                outcome = await _survey(_StdioPeer(child, argv, stderr), progress or Progress())
            except SurveyError as exc:
                outcome = exc
    except OSError as exc:
        raise SurveyError(str(exc.strerror or exc)) from None
    if isinstance(outcome, SurveyError):
        raise outcome
    return outcome


async def survey_http(url: str, headers: Sequence[tuple[str, str]] = (), *,
                      progress: Progress | None = None) -> Survey:
    """Survey the Streamable HTTP MCP server at ``url``, sending ``headers`` each time.

    The caller bounds the time, as for :func:`survey_stdio`."""
    try:
        upstream = HttpUpstream(url, headers, max_connections=2)
    except ValueError as exc:
        raise SurveyError(str(exc)) from None
    async with upstream:
        peer = _HttpPeer(upstream)
        try:
            return await _survey(peer, progress or Progress())
        except UpstreamError as exc:
            raise SurveyError(f"cannot reach {url}: {exc.reason.value}: {exc.detail}") from None
        finally:
            await peer.close()


__all__ = ["MAX_PAGES", "Progress", "Survey", "SurveyError", "survey_http", "survey_stdio"]
