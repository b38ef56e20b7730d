"""The operator plane: a separate listener for the API, metrics, probes and console.

Rules this module keeps:

1. It never shares a port with the agents' listener (the config refuses it).
   Before anything else, in every mode (tokens or ``insecure_no_auth``), the
   ``Host`` header must name this listener and an ``Origin``, when there is
   one, must be one of its names (:mod:`firewall.gateway.operator.guard`): a
   wrong Host is 421, a foreign Origin 403, so DNS rebinding reaches nothing.
   Only ``/healthz`` and ``/readyz`` answer any Host (probes address pods by
   IP); ``/readyz`` then shows the anonymous view.
   Then every request is authenticated, except ``/healthz``, ``/readyz``, the
   login page and the console's static files. A missing or unknown token is
   401, a viewer's state-changing request 403; a source address that failed
   too many logins gets 429 with ``Retry-After`` (``operator_login_throttled``
   in the log and the audit trail when it starts).
2. Two ways in: ``Authorization: Bearer TOKEN`` (scripts, the CLI,
   Prometheus) or the console's login cookie. A state-changing request that
   rides on the cookie must carry the login's CSRF token in ``X-CSRF-Token``;
   every state-changing request must be JSON (``Content-Type:
   application/json``, or no body): a web page elsewhere cannot drive the API.
3. Every state-changing call records the operator (the token's name) in the
   audit trail: kill switch on/off (``kill_switch``), policy reload
   (``policy_reload``), a tool's state set on the policy page
   (``policy_edit``, then ``policy_reload``), session end (``session_end``
   reason), approvals (``decided_by`` and the mediator's ``approval`` event).
4. SQLite work (approvals, audit search) runs in worker threads on their own
   connections; the audit trail is read read-only.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol
from urllib.parse import parse_qs

import msgspec
import trio

from firewall.audit.events import AuditPoint, append_lifecycle
from firewall.audit.query import Filters, QueryError, Sources, calls
from firewall.audit.store import StoreError
from firewall.config import Config
from firewall.gateway.approvals.desk import ApprovalError, open_store, parse_scope
from firewall.gateway.http.exchange import ClientGone, Exchange, Receive, Scope, Send, lifespan
from firewall.gateway.operator import console, readiness
from firewall.gateway.operator.auth import (
    ANONYMOUS_OPERATOR,
    ConsoleLogins,
    Login,
    Operator,
    OperatorTable,
    cookie_value,
    csrf_ok,
)
from firewall.gateway.operator.feed import Feed, sse_frame
from firewall.gateway.operator.guard import ListenerNames, LoginThrottle
from firewall.gateway.operator.killswitch import Scope as SwitchScope
from firewall.gateway.operator.killswitch import Switch
from firewall.gateway.operator.metrics import CONTENT_TYPE, Gauges, Metrics, exposition
from firewall.gateway.operator.policy_page import EditBody, PageError, PolicyPage
from firewall.gateway.operator.requests import (
    ApiError,
    Handler,
    Request,
    SwitchBody,
    VerdictBody,
    decode_body,
    int_param,
    read_body,
    reply,
)
from firewall.gateway.operator.switch_store import SwitchStoreError
from firewall.gateway.operator.switchboard import SwitchBoard
from firewall.identity import bearer_token
from firewall.log import get_logger
from firewall.policy.decision import PolicyPoint
from firewall.policy.engine import ReloadResult

if TYPE_CHECKING:  # annotations only: the kill-switch CLI uses this module; no hypercorn
    from firewall.gateway.front.http_front import HttpFront

COOKIE: Final = "mcpwall_console"
KEEPALIVE_SECONDS: Final = 15.0



class Reload(Protocol):
    """Re-read the policy files now; None when none are configured."""

    async def __call__(self, policy: PolicyPoint, audit: AuditPoint | None, trigger: str, *,
                       by: str | None = None) -> ReloadResult | None: ...


class AdminPlane:
    """The ASGI app of the operator listener, and what it operates on."""

    def __init__(self, config: Config, policy: PolicyPoint, board: SwitchBoard,
                 metrics: Metrics, feed: Feed, writer: Any, audit: AuditPoint | None,
                 reload: Reload) -> None:
        assert config.admin is not None
        self.config = config
        self.settings = config.admin
        self.policy = policy          # the policy set itself (reload), not the guarded one
        self.board = board
        self.switch = board.switch    # what the policy consults (read-only here)
        self.metrics = metrics
        self.feed = feed
        self.writer = writer          # the AuditWriter: queue depth, flush
        self.audit = audit            # the observed audit point: events are counted
        self.reload = reload          # re-reads the policy files (runtime.reload_policy)
        self._front: HttpFront | None = None
        self.operators = OperatorTable(self.settings.tokens)
        self.logins = ConsoleLogins()
        self.names = ListenerNames(self.settings.host, self.settings.port,
                                   self.settings.allowed_hosts)
        self.throttle = LoginThrottle(self.settings.login_failures,
                                      self.settings.login_window_seconds)
        self.closing = trio.Event()
        self.log: Any = get_logger(component="admin")
        self.page = PolicyPage(config, policy, audit, reload)
        self.routes: dict[tuple[str, str], tuple[Handler, bool]] = {
            ("GET", "approvals"): (self.list_approvals, False),
            ("POST", "approvals"): (self.decide_approval, True),
            ("GET", "kill-switch"): (self.kill_status, False),
            ("POST", "kill-switch"): (self.kill_on, True),
            ("DELETE", "kill-switch"): (self.kill_off, True),
            ("GET", "policy"): (self.policy_view, False),
            ("POST", "policy"): (self.change_policy, True),
            ("GET", "sessions"): (self.list_sessions, False),
            ("DELETE", "sessions"): (self.end_session, True),
            ("GET", "decisions"): (self.recent_decisions, False),
            ("GET", "audit"): (self.search_audit, False),
            ("GET", "events"): (self.events, False),
        }

    def attach(self, front: HttpFront) -> None:
        """The agents' front whose sessions and endpoints this plane operates on."""
        self._front = front
        front.context.on_tools = self.page.catalog.offered

    @property
    def front(self) -> HttpFront:
        assert self._front is not None, "attach() the front first"
        return self._front

    # -- ASGI ------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        ex = Exchange(scope, receive, send)
        client = scope.get("client")
        peer = str(client[0]) if client else "unknown"
        query = {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode(
            "latin-1"), keep_blank_values=True).items()}
        try:
            await self._handle(ex, query, peer)
        except ClientGone:
            return
        except ApiError as exc:
            if not ex.started:
                await reply(ex, exc.status, {"error": str(exc), **exc.extra})
        except Exception:
            self.log.exception("admin_request_failed", method=ex.method, path=ex.path)
            if not ex.started:
                await reply(ex, 500, {"error": "internal error; see the mcpwall log"})

    async def _handle(self, ex: Exchange, query: dict[str, str], peer: str) -> None:
        path, method = ex.path.rstrip("/") or "/", ex.method
        if path == "/healthz":
            await reply(ex, 200, {"status": "ok"})
            return
        if path == "/readyz":
            report = await readiness.check(self.config, self.front, self.writer)
            try:
                if not self.names.host_ok(ex.header("host")):
                    raise ApiError(421, "misdirected")
                await self._authenticate(ex, peer)
            except ApiError:  # anonymous probes see which check failed, not why
                for result in report["checks"].values():
                    result.pop("error", None)
            await reply(ex, 200 if report["status"] == "ready" else 503, report)
            return
        self._check_addressed(ex)
        if path == "/favicon.ico":
            await ex.respond(204, b"", None, [("cache-control", "max-age=86400")])
            return
        if path in console.ASSETS and method == "GET":
            await console.asset(ex, path)
            return
        if path in ("/login", "/logout") and method == "POST":
            await (self._login(ex, peer) if path == "/login" else self._logout(ex))
            return
        if path == "/" and method == "GET":
            await self._page(ex)
            return
        operator, login = await self._authenticate(ex, peer)
        if path == "/metrics" and method == "GET":
            await ex.respond(200, exposition(self.metrics, await self.gauges()), CONTENT_TYPE)
            return
        parts = path.split("/")
        if len(parts) < 3 or parts[1] != "api":
            raise ApiError(404, f"no such endpoint: {ex.path}")
        entry = self.routes.get((method, parts[2]))
        if entry is None:
            allowed = sorted(m for m, name in self.routes if name == parts[2])
            if not allowed:
                raise ApiError(404, f"no such endpoint: {ex.path}")
            raise ApiError(405, f"method {method} not allowed on {ex.path}", allow=allowed)
        handler, changes = entry
        if changes:
            self._check_change(ex, operator, login)
        await handler(Request(ex, operator, query, parts[3:]))

    # -- Host, Origin, authentication ------------------------------------
    def _check_addressed(self, ex: Exchange) -> None:
        """421 unless Host names this listener; 403 for an Origin that is not one of its names."""
        host = ex.header("host")
        if not self.names.host_ok(host):
            self.log.warning("admin_host_refused", host=host)
            raise ApiError(421, f"misdirected request: Host {host!r} does not name this "
                                "operator listener (add the name to [admin] allowed_hosts "
                                "if it should)")
        origin = ex.header("origin")
        if origin is not None and not self.names.origin_ok(origin):
            self.log.warning("admin_origin_refused", origin=origin)
            raise ApiError(403, f"forbidden: origin {origin!r} is not this listener "
                                "([admin] host, port and allowed_hosts)")

    def _throttled(self, peer: str) -> float | None:
        """Seconds until ``peer`` may try a token again (rounded up), or None."""
        wait = self.throttle.wait(peer)
        return None if wait is None else float(max(1, math.ceil(wait)))

    async def _failed_login(self, peer: str, via: str) -> None:
        if not self.throttle.failed(peer):
            return
        detail = {"address": peer, "via": via, "failures": self.settings.login_failures,
                  "window_seconds": self.settings.login_window_seconds}
        self.log.warning("operator_login_throttled", **detail)
        await append_lifecycle(self.audit, "operator_login_throttled", detail=detail)

    async def _authenticate(self, ex: Exchange, peer: str) -> tuple[Operator, Login | None]:
        header = ex.header("authorization")
        if header is not None:
            wait = self._throttled(peer)
            if wait is not None:
                raise ApiError(429, f"too many failed logins from {peer}; try again in "
                                    f"{wait:.0f} s", retry_after=wait)
            operator = self.operators.authenticate(bearer_token(header))
            if operator is None:
                await self._failed_login(peer, "bearer")
                raise ApiError(401, "unauthorized: unknown operator token")
            return operator, None
        login = self.logins.find(cookie_value(ex.header("cookie"), COOKIE))
        if login is not None:
            return login.operator, login
        if self.settings.insecure_no_auth:
            return ANONYMOUS_OPERATOR, None
        raise ApiError(401, "unauthorized: send Authorization: Bearer TOKEN "
                            "(an [[admin.tokens]] entry) or log in to the console")

    def _check_change(self, ex: Exchange, operator: Operator, login: Login | None) -> None:
        # Host and Origin were checked for every request (_check_addressed).
        ctype = (ex.header("content-type") or "").split(";", 1)[0].strip().lower()
        if ex.has_body and ctype != "application/json":
            raise ApiError(415, "a state-changing request carries a JSON body "
                                "(Content-Type: application/json)")
        if login is not None and not csrf_ok(login, ex.header("x-csrf-token")):
            raise ApiError(403, "forbidden: missing or wrong X-CSRF-Token")
        if not operator.may_change:
            raise ApiError(403, f"forbidden: operator {operator.name!r} is a viewer")

    async def _login(self, ex: Exchange, peer: str) -> None:
        body = await read_body(ex)
        form = {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        token = form.get("token", "").strip()
        wait = self._throttled(peer) if token else None
        if wait is not None:
            await console.login_page(ex, 429, f"Too many failed logins from {peer}; "
                                              f"try again in {wait:.0f} s.",
                                     [("retry-after", f"{wait:.0f}")])
            return
        operator = self.operators.authenticate(token) if token else None
        if operator is None and self.settings.insecure_no_auth and not token:
            operator = ANONYMOUS_OPERATOR
        if operator is None:
            self.log.warning("console_login_refused", address=peer)
            if token:
                await self._failed_login(peer, "console")
            await console.login_page(ex, 401, "Unknown operator token.")
            return
        sid, _ = self.logins.open(operator)
        self.log.info("console_login", operator=operator.name)
        await ex.respond(303, b"", None, [
            ("location", "/"), ("cache-control", "no-store"),
            ("set-cookie", f"{COOKIE}={sid}; HttpOnly; SameSite=Strict; Path=/; "
                           f"Max-Age={int(self.logins.seconds)}")])

    async def _logout(self, ex: Exchange) -> None:
        sid = cookie_value(ex.header("cookie"), COOKIE)
        login = self.logins.find(sid)
        if login is not None and not csrf_ok(login, ex.header("x-csrf-token")):
            raise ApiError(403, "forbidden: missing or wrong X-CSRF-Token")
        self.logins.close(sid)
        await ex.respond(204, b"", None, [
            ("set-cookie", f"{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")])

    async def _page(self, ex: Exchange) -> None:
        login = self.logins.find(cookie_value(ex.header("cookie"), COOKIE))
        if login is None:
            await console.login_page(ex, 200, None)
            return
        try:
            pending = await self._approvals("pending", 200)
        except ApiError:  # approvals are disabled: nothing is ever held
            pending = []
        decisions = await self._decisions(Filters(limit=50))
        await console.main_page(ex, login, pending, decisions, self.switch.switches())

    # -- approvals -------------------------------------------------------
    def _approvals_path(self) -> Path:
        if not self.config.approvals.enabled:
            raise ApiError(404, "approvals are disabled ([approvals] enabled = false)")
        return Path(self.config.approvals.path)

    async def _approvals(self, status: Any, limit: int) -> list[dict[str, Any]]:
        path = self._approvals_path()

        def read() -> list[dict[str, Any]]:
            with open_store(path) as store:
                return [msgspec.structs.asdict(r) for r in store.list(status, limit)]

        return await trio.to_thread.run_sync(read)

    async def list_approvals(self, req: Request) -> None:
        """``GET /api/approvals[?status=pending|approved|rejected|expired|all]``."""
        status = req.query.get("status", "pending")
        if status not in ("pending", "approved", "rejected", "expired", "all"):
            raise ApiError(400, f"status: expected pending, approved, rejected, expired or "
                                f"all, got {status!r}")
        limit = int_param(req.query, "limit", 200, 1000)
        rows = await self._approvals(None if status == "all" else status, limit)
        await reply(req.ex, 200, {"approvals": rows})

    async def decide_approval(self, req: Request) -> None:
        """``POST /api/approvals/{id}/approve|reject`` with ``{"comment": ..., "scope": ...}``."""
        if len(req.parts) != 2 or req.parts[1] not in ("approve", "reject"):
            raise ApiError(404, "expected /api/approvals/{id}/approve or .../reject")
        ident, verb = req.parts
        body = decode_body(await read_body(req.ex), VerdictBody)
        status: Literal["approved", "rejected"] = "approved" if verb == "approve" else "rejected"
        by = req.operator.name
        if body.by and body.by != by:
            by = f"{body.by} via {req.operator.name}"
        note = body.comment if body.comment is not None else body.note
        path = self._approvals_path()
        try:
            parse_scope(body.scope)
        except ApprovalError as exc:
            raise ApiError(400, str(exc)) from None
        if status == "rejected" and body.scope != "call":
            raise ApiError(400, "a rejection covers one call: scope must be 'call'")

        def decide() -> dict[str, Any]:
            with open_store(path) as store:
                request = store.decide(ident, status, by, note, scope=body.scope)
            return msgspec.structs.asdict(request)

        try:
            decided = await trio.to_thread.run_sync(decide)
        except ApprovalError as exc:
            raise ApiError(404 if "no approval request" in str(exc) else 409, str(exc)) from None
        self.log.info("approval_decided", id=ident, verdict=status, by=by)
        self.feed.publish("approvals", {"id": ident, "status": status, "by": by})
        await reply(req.ex, 200, {"approval": decided})

    # -- kill switch -----------------------------------------------------
    async def kill_status(self, req: Request) -> None:
        """``GET /api/kill-switch``: the switches that are on."""
        await reply(req.ex, 200, {"switches": [switch_view(s) for s in self.switch.switches()]})

    async def _switch_body(self, req: Request) -> SwitchBody:
        if req.ex.has_body:
            body = decode_body(await read_body(req.ex), SwitchBody)
        else:
            try:
                body = msgspec.convert(req.query, SwitchBody, strict=False)
            except msgspec.ValidationError as exc:
                raise ApiError(400, f"bad query: {exc}") from None
        if (body.scope == "global") != (body.name is None):
            raise ApiError(400, "a server or principal switch names it (\"name\"); "
                                "the global switch takes no name")
        return body

    async def kill_on(self, req: Request) -> None:
        """``POST /api/kill-switch`` ``{"scope": "server", "name": "vm", "comment": ...}``.

        The answer carries ``"saved": false`` and a ``warning`` when the kill
        switch file could not record it (it is enforced all the same).
        """
        body = await self._switch_body(req)
        switch, error = await self.board.turn_on(SwitchScope(body.scope, body.name),
                                                 by=req.operator.name, comment=body.comment)
        answer: dict[str, Any] = {"switch": switch_view(switch)}
        if self.board.persisted:
            answer["saved"] = error is None
        if error is not None:
            answer["warning"] = (f"enforced, but not saved: a restart would clear it "
                                 f"({error})")
        await reply(req.ex, 200, answer)

    async def kill_off(self, req: Request) -> None:
        """``DELETE /api/kill-switch`` (same body or query); 404 when it was off,
        503 when the kill switch file cannot record it (the switch stays on)."""
        body = await self._switch_body(req)
        scope = SwitchScope(body.scope, body.name)
        try:
            was = await self.board.turn_off(scope, by=req.operator.name, comment=body.comment)
        except SwitchStoreError as exc:
            raise ApiError(503, f"the switch stays on: {exc}") from None
        if was is None:
            raise ApiError(404, f"the kill switch is not on for {scope.describe()}")
        await reply(req.ex, 200, {"switch": switch_view(was), "state": "off"})

    # -- policy, sessions ------------------------------------------------
    async def policy_view(self, req: Request) -> None:
        """``GET /api/policy``: every server's tools and their states (the policy page)."""
        if req.parts:
            raise ApiError(404, "expected GET /api/policy")
        view = await self.page.view()
        view["may_change"] = req.operator.may_change
        await reply(req.ex, 200, view)

    async def change_policy(self, req: Request) -> None:
        """``POST /api/policy/reload`` or ``POST /api/policy/tools``."""
        if req.parts == ["tools"]:
            await self.edit_tool(req)
        elif req.parts == ["reload"]:
            await self.reload_policy(req)
        else:
            raise ApiError(404, "expected POST /api/policy/reload or /api/policy/tools")

    async def edit_tool(self, req: Request) -> None:
        """``POST /api/policy/tools`` ``{"server", "tool", "state", "sha256"}``: set
        one tool's state in its policy file (a backup kept), then reload."""
        body = decode_body(await read_body(req.ex), EditBody)
        try:
            change = await self.page.edit(body, req.operator.name)
        except PageError as exc:
            raise ApiError(exc.status, str(exc)) from None
        self.log.warning("policy_edited", server=body.server, tool=body.tool,
                         state=body.state, operator=req.operator.name, file=change["file"])
        reloaded = change.get("reload")
        await reply(req.ex, 200 if not reloaded or reloaded.get("ok") else 422, change)

    async def reload_policy(self, req: Request) -> None:
        """``POST /api/policy/reload``: re-read the policy files now."""
        result = await self.reload(self.policy, self.audit, "admin", by=req.operator.name)
        if result is None:
            raise ApiError(409, "no policy files are configured: nothing to reload")
        await reply(req.ex, 200 if result.ok else 422, msgspec.structs.asdict(result))

    async def list_sessions(self, req: Request) -> None:
        """``GET /api/sessions``: the open client sessions."""
        now = trio.current_time()
        rows = [{"id": s.id, "server": s.server, "principal": s.caller.principal,
                 "grant": s.caller.grant, "age_s": round(now - s.created, 3),
                 "idle_s": round(s.idle_for(now), 3), "in_flight": s.in_flight}
                for s in self.front.context.table]
        await reply(req.ex, 200, {"sessions": rows})

    async def end_session(self, req: Request) -> None:
        """``DELETE /api/sessions/{id}``: close a session (its child stops)."""
        if len(req.parts) != 1:
            raise ApiError(404, "expected DELETE /api/sessions/{id}")
        session = next((s for s in self.front.context.table if s.id == req.parts[0]), None)
        if session is None:
            raise ApiError(404, f"no open session {req.parts[0]!r}")
        self.log.warning("session_ended_by_operator", session=session.id,
                         operator=req.operator.name)
        await self.front.context.end_session(session, f"ended by operator {req.operator.name}")
        await reply(req.ex, 200, {"ended": session.id})

    # -- audit -----------------------------------------------------------
    async def _decisions(self, filters: Filters) -> list[dict[str, Any]]:
        path = Path(self.config.audit.path)

        def read() -> list[dict[str, Any]]:
            try:
                with Sources.open([path]) as src:
                    return list(calls(src, filters, latest=True))[::-1]
            except StoreError:
                return []

        try:
            return await trio.to_thread.run_sync(read)
        except QueryError as exc:
            raise ApiError(400, str(exc)) from None

    async def recent_decisions(self, req: Request) -> None:
        """``GET /api/decisions?limit=50``: the newest calls, newest first."""
        rows = await self._decisions(Filters(limit=int_param(req.query, "limit", 50, 1000)))
        await reply(req.ex, 200, {"decisions": rows})

    async def search_audit(self, req: Request) -> None:
        """``GET /api/audit/search?q=PHRASE&principal=&server=&tool=&decision=&limit=``."""
        if req.parts != ["search"]:
            raise ApiError(404, "expected GET /api/audit/search")
        q = req.query
        filters = Filters(search=q.get("q") or None, principal=q.get("principal") or None,
                          server=q.get("server") or None, tool=q.get("tool") or None,
                          decision=[d for d in q.get("decision", "").split(",") if d],
                          limit=int_param(q, "limit", 100, 1000))
        await reply(req.ex, 200, {"calls": await self._decisions(filters)})

    async def events(self, req: Request) -> None:
        """``GET /api/events``: Server-Sent Events (decision, approvals, approval, kill_switch)."""
        ex = req.ex
        reader = self.feed.subscribe()
        try:
            await ex.start(200, [("content-type", "text/event-stream"),
                                 ("cache-control", "no-store"), ("x-accel-buffering", "no")])
            await ex.write(sse_frame("hello", {"operator": req.operator.name}))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_watch_gone, ex, self.closing, nursery.cancel_scope)
                nursery.start_soon(self._watch_approvals, reader)
                while not ex.disconnected:
                    with trio.move_on_after(KEEPALIVE_SECONDS):
                        frames = await reader.take()
                        await ex.write(b"".join(frames))
                        continue
                    await ex.write(b": keepalive\n\n")
                nursery.cancel_scope.cancel()
        finally:
            self.feed.unsubscribe(reader)
            with trio.CancelScope(shield=True):
                await ex.end()

    async def _watch_approvals(self, reader: Any) -> None:
        """Tell this reader when the pending set changes (other instances share the file)."""
        seen: set[str] | None = None
        while True:
            try:
                rows = await self._approvals("pending", 1000)
            except ApiError:
                return
            ids = {r["id"] for r in rows}
            if seen is not None and ids != seen:
                reader.put(sse_frame("approvals", {"pending": len(ids)}))
            seen = ids
            await trio.sleep(self.config.approvals.poll_seconds)

    async def gauges(self) -> Gauges:
        """The scrape-time gauges."""
        pending = None
        if self.config.approvals.enabled:
            path = Path(self.config.approvals.path)

            def count() -> int:
                with open_store(path) as store:
                    row = store.conn.execute(
                        "SELECT count(*) FROM approvals WHERE status = 'pending' "
                        "AND expires_ns > ?", (time.time_ns(),)).fetchone()
                    return int(row[0])

            pending = await trio.to_thread.run_sync(count)
        sessions = {name: self.front.context.table.count(name) for name in self.front.endpoints}
        return Gauges(audit_queue_depth=getattr(self.writer, "queue_depth", None),
                      approvals_pending=pending, sessions=sessions,
                      kill_switches=len(self.switch.switches()))


async def _watch_gone(ex: Exchange, closing: trio.Event, scope: trio.CancelScope) -> None:
    async with trio.open_nursery() as nursery:
        async def gone() -> None:
            await ex.wait_disconnect()
            nursery.cancel_scope.cancel()

        nursery.start_soon(gone)
        await closing.wait()
        nursery.cancel_scope.cancel()
    scope.cancel()


def switch_view(switch: Switch) -> dict[str, Any]:
    """A switch as the API shows it."""
    return {"scope": switch.scope.kind, "name": switch.scope.name, "by": switch.by,
            "since_ns": switch.since_ns, "comment": switch.comment,
            "reason": switch.decision.reason if switch.decision else None}


__all__ = ["COOKIE", "AdminPlane", "ApiError", "Reload"]
