"""The Streamable HTTP front: ``mcpwall serve``.

Each server of the fleet is mounted at ``/servers/{name}/mcp`` and spoken to
as MCP Streamable HTTP: the handshake revisions (2025-06-18 and 2025-11-25;
2025-03-26 clients are accepted) and the stateless one (2026-07-28), chosen
per request (docs/protocol.md). A raw ASGI app, served by hypercorn's trio
worker inside our own nursery. Rules this module keeps:

1. Checks run in a fixed order, and each refusal is an HTTP status with a
   JSON-RPC error body (id null): unknown path or server 404; method 405 (with
   ``Allow``); shutting down 503; ``Origin`` not allowed 403 (DNS-rebinding
   protection; a request without ``Origin`` is not from a browser and passes);
   missing or unknown bearer token 401 (with ``WWW-Authenticate: Bearer``)
   when tokens are configured; unsupported ``MCP-Protocol-Version`` 400 (absent
   means 2025-03-26); unknown, expired or someone else's session 404. For a
   POST then: an ``Accept`` that admits neither JSON nor SSE 406; a
   ``Content-Type`` other than JSON 415; a body over ``max_body_bytes`` 413
   (read incrementally, never held whole); a body that is not one JSON-RPC
   message 400 (-32700 or -32600) and the session lives on.
2. The client's ``Authorization`` header never reaches an upstream: upstream
   credentials come from the server's configured ``headers``.
3. Every message goes through the session's mediator (decision, audit) before
   anything is forwarded; refusals the mediator answers are HTTP 200 with the
   JSON-RPC answer.
4. Shutdown (:meth:`HttpFront.begin_shutdown`): new requests get 503, GET
   streams end, requests in flight get ``shutdown_grace_seconds`` to finish;
   then every session closes and every child stops.
5. A request of the stateless revision (``protocol/revision.py``: its
   version header, or its body's ``_meta``, says so; the body decides) has
   no session, whatever ``Mcp-Session-Id`` says: a GET or DELETE is 405
   (``Allow: POST``); a POST is checked by the revision's ladder (-32602,
   HeaderMismatch -32020, -32022, 404 -32601 for a removed method), each
   refusal 400 (404) under the request's id and recorded through a mediator
   of its own (``Mediator.refuse_protocol``); then the endpoint's
   ``post_stateless`` gets that mediator and the request-metadata headers
   made from the decided body. Its answers pass ``_result_seen``: tools'
   ``x-mcp-header`` annotations learnt, ``ttlMs`` capped, ``cacheScope``
   private where the answer is the caller's own. A ``subscriptions/listen``
   to an endpoint that can carry one (``listen.ListenUpstream``), or whose
   listens mcpwall answers itself (``listen.BridgesListens``: a bridged
   2025 server), is the listen desk's (``front/listen.py``): a long-lived
   stream under policy, ended on shutdown and told of policy reloads.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, TextIO
from urllib.parse import urlsplit

import trio
from hypercorn.config import Config as HyperConfig

from firewall.audit.events import AuditPoint
from firewall.config import Config, HttpServer, StdioServer
from firewall.gateway.approvals.desk import ApprovalDesk
from firewall.gateway.front import health, listen
from firewall.gateway.front.endpoint import Endpoint
from firewall.gateway.front.http_endpoint import HttpEndpoint
from firewall.gateway.front.sessions import FrontContext, Session, new_session_id
from firewall.gateway.front.stdio_endpoint import StdioEndpoint
from firewall.gateway.http.connection_limits import (
    Gate,
    Limits,
    fit_to_open_files,
    raise_open_files_limit,
)
from firewall.gateway.http.exchange import (
    JSON,
    SSE,
    BodyTooLarge,
    ClientGone,
    DirectExchange,
    Exchange,
    Receive,
    Scope,
    Send,
    accepts,
    lifespan,
    refuse,
)
from firewall.gateway.http.server import serve
from firewall.gateway.policy_reload import watchers_of
from firewall.identity import TokenTable, bearer_token
from firewall.log import get_logger
from firewall.policy.decision import Caller, PolicyPoint
from firewall.protocol import jsonrpc, mcp, revision
from firewall.protocol.inbound import Inbound
from firewall.protocol.inbound import client as decode_client
from firewall.protocol.jsonrpc import Kind

# The 2026-07-28 revision's code for an unsupported protocol version; its
# ``data.supported`` lets a client that probed with a newer revision fall back.
UNSUPPORTED_PROTOCOL_VERSION: Final = revision.UNSUPPORTED_PROTOCOL_VERSION
# A request without MCP-Protocol-Version is from a 2025-03-26 client (spec).
DEFAULT_PROTOCOL_VERSION: Final = "2025-03-26"
ALLOWED_METHODS: Final = "GET, POST, DELETE"
ANONYMOUS: Final = Caller()


def mount_path(name: str) -> str:
    """The URL path a server is mounted at: ``mount_path("vm") == "/servers/vm/mcp"``."""
    return f"/servers/{name}/mcp"


def origin_allowed(origin: str, allowed: list[str]) -> bool:
    """True when ``origin`` is on the allow-list.

    An entry without a port admits that scheme and host on any port
    (``http://localhost`` admits ``http://localhost:5173``); ``*`` admits all.
    """
    origin = origin.strip().lower().rstrip("/")
    if "*" in allowed:
        return True
    bare = origin
    try:
        parts = urlsplit(origin)
        if parts.scheme and parts.hostname:
            host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
            bare = f"{parts.scheme}://{host}"
    except ValueError:
        pass
    for entry in allowed:
        entry = entry.strip().lower().rstrip("/")
        if origin == entry or bare == entry:
            return True
    return False


class HttpFront:
    """The ASGI application of ``mcpwall serve``; run it with :func:`run_front`."""

    def __init__(
        self,
        config: Config,
        policy: PolicyPoint,
        audit: AuditPoint | None = None,
        endpoints: Mapping[str, Endpoint] | None = None,
        approvals: ApprovalDesk | None = None,
    ) -> None:
        self.config = config
        self.listen = config.listen
        self.tokens = TokenTable(config.auth.tokens)
        self.context = FrontContext(config.listen, policy, audit,
                                    config.policy.deny_tools_call_as, approvals,
                                    per_principal=self.tokens.enabled)
        self.listens = listen.ListenDesk(config.listen, policy, audit)
        self.endpoints: dict[str, Endpoint] = dict(endpoints or {})
        for name, settings in config.servers.items():
            if name in self.endpoints:
                continue
            if isinstance(settings, StdioServer):
                self.endpoints[name] = StdioEndpoint(name, settings, self.context)
            elif isinstance(settings, HttpServer):
                self.endpoints[name] = HttpEndpoint(name, settings, self.context)
        self.draining = False
        # Per server: its answers as relayed (x-mcp-header annotations learnt
        # from tools/list, discover narrowed, cache bounds).
        self.results: dict[str, revision.ResultView] = {}
        # Per server: the hook its stateless requests' mediators relay answers through.
        self._seen: dict[str, Callable[[str, bytes, bool], bytes]] = {}
        self.cache_ttl_ms = int(self.listen.max_cache_ttl_seconds * 1000)
        self.drained = trio.Event()  # hypercorn's shutdown trigger
        # The listener's connections (set by run_front), for /healthz.
        self.connections: Gate | None = None
        self._closed = trio.Event()
        self.log: Any = get_logger(component="http_front")

    # -- lifetime --------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the sessions' nursery and the reaper until :meth:`close`."""
        async with trio.open_nursery() as nursery:
            self.context.nursery = nursery
            idle = min([self.listen.session_idle_seconds,
                        *(e.idle_limit for e in self.endpoints.values())])
            nursery.start_soon(self.context.table.run_reaper, max(0.05, min(idle / 4, 30.0)))
            watchers = watchers_of(self.context.policy)
            watchers.append(self.listens.policy_changed)
            task_status.started()
            try:
                await self._closed.wait()
            finally:
                watchers.remove(self.listens.policy_changed)
                with trio.CancelScope(shield=True):
                    await self._close_all()
                nursery.cancel_scope.cancel()

    async def _close_all(self) -> None:
        for session in self.context.table:
            await session.end("shutdown")
        for endpoint in self.endpoints.values():
            await endpoint.aclose()

    def begin_shutdown(self) -> None:
        """Stop taking requests; end GET streams; hypercorn drains the rest."""
        if self.drained.is_set():
            return
        self.draining = True
        self.log.info("shutdown_started", sessions=len(self.context.table),
                      grace_seconds=self.listen.shutdown_grace_seconds)
        self.listens.end_all("shutdown")
        for session in self.context.table:
            session.end_get_streams()
            # Held calls would outlast the grace period: refuse them now.
            session.mediator.holds.refuse("mcpwall is shutting down")
        self.drained.set()

    def close(self) -> None:
        """End every session (their children stop) and the front's tasks."""
        self.draining = True
        self.listens.end_all("shutdown")
        self.drained.set()
        self._closed.set()

    # -- ASGI ------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.serve_exchange(Exchange(scope, receive, send))
        elif kind == "lifespan":
            await lifespan(receive, send)

    def health_answer(self) -> tuple[int, bytes]:
        """``/healthz`` for a connection beyond the cap: (status, JSON body)."""
        report = health.health_report(self)
        return (200 if report["status"] == "ok" else 503), jsonrpc.encode(report)

    def direct_route(self, method: str) -> Callable[[DirectExchange], Awaitable[None]] | None:
        """The handler of requests the HTTP/1.1 connection may give us without ASGI.

        POSTs: their handlers read the body once and watch for a disconnect
        only while a call is held, which a direct exchange supports. GET
        streams and the rest stay ASGI.
        """
        return self.serve_exchange if method == "POST" else None

    async def serve_exchange(self, ex: Exchange) -> None:
        """Answer one request, ASGI or direct; an unexpected error is a 500, never a crash."""
        try:
            await self._handle(ex)
        except ClientGone:
            return
        except Exception:
            self.log.exception("request_failed", method=ex.method, path=ex.path)
            if not ex.started:
                await refuse(ex, 500, jsonrpc.INTERNAL_ERROR, "Internal Server Error")

    async def _handle(self, ex: Exchange) -> None:
        path = ex.path
        if path in (health.HEALTH_PATH, health.HEALTH_PATH + "/"):
            await health.health(ex, self)
            return
        parts = path.split("/")
        endpoint = None
        if len(parts) == 4 and parts[0] == "" and parts[1] == "servers" and parts[3] == "mcp":
            endpoint = self.endpoints.get(parts[2])
        if endpoint is None:
            await refuse(ex, 404, jsonrpc.INVALID_REQUEST, f"Not Found: no MCP endpoint at {path}")
            return
        method = ex.method
        if method not in ("POST", "GET", "DELETE"):
            await refuse(ex, 405, jsonrpc.INVALID_REQUEST,
                         f"Method Not Allowed: {method}", [("allow", ALLOWED_METHODS)])
            return
        if self.draining:
            await refuse(ex, 503, jsonrpc.UPSTREAM_UNAVAILABLE,
                         "Service Unavailable: mcpwall is shutting down", [("retry-after", "5")])
            return
        origin = ex.header("origin")
        if origin is not None and not origin_allowed(origin, self.listen.allowed_origins):
            self.log.warning("origin_refused", origin=origin, server=endpoint.name)
            await refuse(ex, 403, jsonrpc.INVALID_REQUEST,
                         f"Forbidden: origin {origin!r} is not allowed (listen.allowed_origins)")
            return
        caller = ANONYMOUS
        if self.tokens.enabled:
            found = self.tokens.authenticate(bearer_token(ex.header("authorization")))
            if found is None:
                await refuse(ex, 401, jsonrpc.INVALID_REQUEST,
                             "Unauthorized: a valid bearer token is required",
                             [("www-authenticate", 'Bearer realm="mcpwall"')])
                return
            caller = found
        version = ex.header("mcp-protocol-version")
        era = revision.era_of(version)
        if era != "handshake":  # no session, whatever Mcp-Session-Id says (rule 5)
            if method == "POST":
                await self._post(ex, endpoint, caller, None, era)
            elif era == "modern":
                await refuse(ex, 405, jsonrpc.INVALID_REQUEST,
                             f"Method Not Allowed: the {version!s} revision has no GET stream "
                             "and no session to DELETE (subscriptions/listen is a POST)",
                             [("allow", "POST")])
            else:
                await refuse(ex, 400, UNSUPPORTED_PROTOCOL_VERSION,
                             f"Bad Request: unsupported MCP-Protocol-Version {version!r}",
                             data={"supported": list(endpoint.versions),
                                   "requested": version})
            return
        session: Session | None = None
        sid = ex.header("mcp-session-id")
        if sid is not None:
            session = self.context.table.find(sid.strip(), endpoint.name, caller)
            if session is None:
                await refuse(ex, 404, jsonrpc.INVALID_REQUEST,
                             "Not Found: unknown or expired session")
                return
        if method == "POST":
            await self._post(ex, endpoint, caller, session, "handshake")
        elif session is None:
            await refuse(ex, 400, jsonrpc.INVALID_REQUEST,
                         "Bad Request: Mcp-Session-Id header required")
        elif method == "GET":
            if not accepts(ex.header("accept"), SSE):
                await refuse(ex, 406, jsonrpc.INVALID_REQUEST,
                             "Not Acceptable: a GET stream is text/event-stream")
                return
            await endpoint.get(ex, session)
        else:
            await endpoint.delete(ex, session)

    async def _post(self, ex: Exchange, endpoint: Endpoint, caller: Caller,
                    session: Session | None, era: revision.Era) -> None:
        accept_json, accept_sse = _accept_kinds(ex.header("accept"))
        if not (accept_json or accept_sse):
            await refuse(ex, 406, jsonrpc.INVALID_REQUEST,
                         "Not Acceptable: accept application/json and text/event-stream")
            return
        ctype = ex.header("content-type")
        if ctype is not None and ctype != JSON and ctype.split(";", 1)[0].strip().lower() != JSON:
            await refuse(ex, 415, jsonrpc.INVALID_REQUEST,
                         "Unsupported Media Type: POST a JSON-RPC message as application/json")
            return
        cap = self.listen.max_body_bytes
        try:
            body = await ex.read_body(cap)
        except BodyTooLarge:
            await refuse(ex, 413, jsonrpc.MESSAGE_TOO_LARGE,
                         f"Payload Too Large: a message is at most {cap} bytes "
                         "(listen.max_body_bytes)")
            return
        # The one decode: envelope, policy view and line, for the mediator. A
        # request it cannot take (bad params) comes back with its refusal,
        # which the mediator answers (HTTP 200).
        try:
            inbound = decode_client(body)
        except jsonrpc.ProtocolError as exc:
            await ex.respond(400, exc.response())
            return
        msg = inbound.envelope
        if msg.kind is Kind.REQUEST and msg.request_id is None:
            await ex.respond(400, jsonrpc.error_response(
                None, jsonrpc.INVALID_REQUEST, "Bad Request: a request id must not be null"))
            return
        accept_sse = accept_sse or not accept_json
        # The body decides (rule 5): one that claims the stateless revision is
        # taken as such, and its headers must say so too. (Byte tests first:
        # the member's name as written, or any escape: a \u one could spell it.)
        if era == "handshake" and (body.find(revision.META_VERSION_BYTES) >= 0
                                   or body.find(b"\\") >= 0) and \
                revision.body_version(revision.params_of(inbound)) is not None:
            era = "modern"
        if era != "handshake":
            await self._post_stateless(ex, endpoint, caller, inbound, accept_sse, era)
            return
        if session is not None and msg.method == listen.LISTEN and msg.kind is Kind.REQUEST:
            # A listen belongs to the stateless revision: a session's server
            # would not know it, and its stream could not be narrowed here.
            await ex.respond(200, await session.mediator.refuse_protocol(
                inbound, jsonrpc.METHOD_NOT_FOUND,
                "Method not found: subscriptions/listen is a request of the 2026-07-28 "
                "revision, not of a session of the handshake revisions"))
            return
        await endpoint.post(ex, caller, session, inbound, accept_sse)

    async def _post_stateless(self, ex: Exchange, endpoint: Endpoint, caller: Caller,
                              inbound: Inbound, accept_sse: bool, era: revision.Era) -> None:
        """One message of the stateless revision (2026-07-28): checked, then the endpoint's.

        Each request stands alone: a mediator of its own (decision, audit), the
        revision's header ladder first (rule 5), and the headers that go
        upstream made from the decided body.
        """
        msg = inbound.envelope
        mediator = self.context.mediator(endpoint.name, "stateless-" + new_session_id(), caller,
                                         sessionless=True)
        version = (ex.header(revision.VERSION_HEADER) or "").strip()
        if msg.method is None:  # a response: the revision has no server->client requests
            await ex.respond(400, jsonrpc.error_response(
                msg.request_id, jsonrpc.INVALID_REQUEST,
                "Bad Request: the 2026-07-28 revision takes no responses from a client"))
            return
        params = revision.params_of(inbound)
        spec = None
        if msg.method == mcp.TOOLS_CALL and isinstance(params, dict):
            spec = self._results(endpoint.name).headers_of(params)
        if msg.kind is not Kind.REQUEST:  # a notification: no ladder defined for it
            if era == "unsupported":
                await refuse(ex, 400, UNSUPPORTED_PROTOCOL_VERSION,
                             f"Bad Request: unsupported MCP-Protocol-Version {version!r}",
                             data={"supported": list(endpoint.versions),
                                   "requested": version})
                return
            headers = revision.upstream_headers(version, msg.method, None, None)
        else:
            problem = revision.check_repeated(ex.repeated) or (
                revision.unsupported(version, endpoint.versions) if era == "unsupported"
                else revision.check_modern(ex.headers, msg.method, params, spec))
            if problem is not None:
                reply = await mediator.refuse_protocol(inbound, problem.code, problem.message,
                                                       problem.data)
                await ex.respond(problem.status, reply)
                return
            headers = revision.upstream_headers(revision.body_version(params), msg.method,
                                                params, spec)
        seen = self._seen.get(endpoint.name)
        if seen is None:  # one per server (of the configuration): made once
            seen = self._seen[endpoint.name] = functools.partial(self._result_seen,
                                                                 endpoint.name)
        mediator.on_result = seen
        if msg.method == listen.LISTEN and msg.kind is Kind.REQUEST:
            source = (endpoint.listen_source() if isinstance(endpoint, listen.BridgesListens)
                      else None)
            if source is not None:  # a bridged 2025 server: mcpwall answers the listen
                await self.listens.serve_local(ex, source, mediator, inbound)
                return
            if isinstance(endpoint, listen.ListenUpstream) and endpoint.versions != \
                    revision.HANDSHAKE_VERSIONS:
                await self.listens.serve(ex, endpoint, mediator, inbound, headers)
                return
        await endpoint.post_stateless(ex, mediator, inbound, accept_sse, headers)

    def _results(self, server: str) -> revision.ResultView:
        view = self.results.get(server)
        if view is None:
            view = self.results[server] = revision.ResultView(self.cache_ttl_ms)
        return view

    def _result_seen(self, server: str, method: str, line: bytes, narrowed: bool) -> bytes:
        """A stateless request's answer on its way to the client (mediator rule 14;
        ``revision.ResultView``): private when mcpwall narrowed it for this
        caller or tells callers apart (tokens)."""
        return self._results(server).seen(method, line, narrowed or self.tokens.enabled)


@functools.lru_cache(maxsize=64)
def _accept_kinds(header: str | None) -> tuple[bool, bool]:
    """(admits JSON, admits SSE) of an Accept header; clients send the same one each call."""
    return accepts(header, JSON), accepts(header, SSE)


def hypercorn_config(host: str, port: int, grace: float, keep_alive: float = 75.0) -> Any:
    """A hypercorn config for one plain-HTTP listener; hypercorn logs warnings only.

    No access log (``accesslog = None``: the audit trail records every call),
    no ``Server`` header (it only tells an attacker what answers); the
    ``Date`` header comes from :mod:`firewall.gateway.http.exchange`.
    """
    hyper = HyperConfig()
    hyper.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    hyper.graceful_timeout = grace
    hyper.accesslog = None
    errors = logging.getLogger("mcpwall.hypercorn")
    errors.setLevel(logging.WARNING)
    if not errors.handlers:
        errors.addHandler(logging.StreamHandler(sys.stderr))
    errors.propagate = False
    hyper.errorlog = errors
    hyper.keep_alive_timeout = keep_alive  # MCP clients keep one connection for many calls
    hyper.include_server_header = False
    # The request headers as h11 parsed them (a list, names in the client's
    # case): Exchange lower-cases the names itself, so hypercorn need not
    # copy them through h11's Sequence interface on every request.
    hyper.h11_pass_raw_headers = True
    # Exchange adds a Date formatted once a second; hypercorn would format
    # one for every response.
    hyper.include_date_header = False
    return hyper


async def run_front(
    front: HttpFront, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve ``front`` until :meth:`HttpFront.begin_shutdown`; then drain and close.

    ``task_status.started`` gets the bound base URLs (``["http://127.0.0.1:8765"]``).
    """
    listen = front.listen
    hyper = hypercorn_config(listen.host, listen.port, listen.shutdown_grace_seconds,
                             front.config.http.keep_alive_seconds)
    front.connections = Gate(listener_limits(front.config, hyper, listen.max_connections,
                                             others=_other_files(front.config)))

    async def serve_http(task_status: trio.TaskStatus[list[str]]) -> None:
        try:
            # Returns after the drain (bounded by the grace period).
            await serve(front, hyper, parser=front.config.http.parser, gate=front.connections,
                        health=front.health_answer, direct=front.direct_route,
                        shutdown_trigger=front.drained.wait, task_status=task_status)
        finally:
            front.close()

    async with trio.open_nursery() as nursery:
        await nursery.start(front.run)
        try:
            binds = await nursery.start(serve_http)
        except BaseException:
            front.close()
            raise
        task_status.started(binds)


# Files and sockets the process holds besides the agents' connections: the
# audit trail, stdio children's pipes, upstream pools, the log.
_OTHER_FILES: Final = 256


def _other_files(config: Config) -> int:
    """Open files that are not the front's connections, for the front's cap."""
    admin = config.admin
    return _OTHER_FILES + config.http.reserve_connections * (1 if admin is None else 2) + (
        0 if admin is None else admin.max_connections)


def listener_limits(config: Config, hyper: Any, max_connections: int, others: int) -> Limits:
    """One listener's limits: ``[http]``'s deadlines, its cap, fitted to the open-files limit.

    The soft limit of open files is raised to the hard limit first; a cap that
    still does not fit with ``others`` is lowered (``connection_cap_lowered``).
    """
    http = config.http
    soft, hard = raise_open_files_limit()
    cap = fit_to_open_files(max_connections, others, soft)
    if cap < max_connections:
        get_logger(component="http_front").warning(
            "connection_cap_lowered", wanted=max_connections, cap=cap,
            open_files_soft=soft, open_files_hard=hard)
    return Limits(head_timeout=http.head_timeout_seconds,
                  body_timeout=http.body_timeout_seconds,
                  body_min_rate=http.body_min_bytes_per_second,
                  keep_alive=hyper.keep_alive_timeout, max_connections=cap,
                  reserve=http.reserve_connections)


def connect_banner(config: Config, base_urls: list[str], out: TextIO) -> None:
    """Print how to connect: each server's URL and an MCP client config snippet."""
    base = base_urls[0] if base_urls else f"http://{config.listen.host}:{config.listen.port}"
    servers: dict[str, Any] = {}
    lines = [f"mcpwall is serving {len(config.servers)} MCP server(s) on {base}", ""]
    width = max((len(n) for n in config.servers), default=0)
    for name, settings in config.servers.items():
        url = base + mount_path(name)
        what = (f"stdio: {settings.command}" if isinstance(settings, StdioServer)
                else f"http: {settings.url}")
        lines.append(f"  {name:<{width}}  {url}  ({what})")
        entry: dict[str, Any] = {"type": "http", "url": url}
        if config.auth.tokens:
            entry["headers"] = {"Authorization": "Bearer YOUR_TOKEN"}
        servers[name] = entry
    lines += ["", "MCP client config (e.g. .mcp.json):",
              json.dumps({"mcpServers": servers}, indent=2), "",
              "Health: " + base + health.HEALTH_PATH + "    Stop: Ctrl-C (SIGINT) or SIGTERM", ""]
    out.write("\n".join(lines) + "\n")
    out.flush()


__all__ = [
    "DEFAULT_PROTOCOL_VERSION",
    "Endpoint",
    "HttpFront",
    "connect_banner",
    "hypercorn_config",
    "listener_limits",
    "mount_path",
    "origin_allowed",
    "run_front",
]
