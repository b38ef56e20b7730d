"""No request of the 2026-07-28 revision gets past the policy through its headers.

The revision mirrors body fields into HTTP headers (``MCP-Protocol-Version``,
``Mcp-Method``, ``Mcp-Name``, ``Mcp-Param-*``) so that intermediaries can route
on them; a header that says one thing while the body says another is how a
request would be smuggled past a component that reads the header. The spec
(basic/transports/streamable-http.mdx, "Request Metadata" and its "Server
Validation") has a server that processes the body refuse every such request
``400`` with ``HeaderMismatch`` (-32020). This is the full matrix of those
mismatch classes through a real ``mcpwall serve`` in front of a real server of
the revision (``fixtures/modern_server.py``, which records the ``mcp-*``
headers of every POST it receives and every tool call it executes).

For every refused case three things are checked: the answer (status, code,
the request's id), the audit trail (a ``protocol`` denial of that method), and
the upstream's own record (no POST reached it). The policy allows ``echo``,
``greeting``, ``file:///public/*`` and ``regional`` in ``us-west1`` only, and
denies ``danger``, ``secret`` and ``file:///secret/*``: each class is tried
with the header naming the allowed target and the body the denied one, and
the reverse. Under a mismatch both are refused; with the headers agreeing, the
body decides (allowed reaches the server, denied is refused by its rule).
Raw header bytes (NUL, CR, LF, obs-fold, control and non-ASCII characters)
go through both HTTP/1.1 parsers (httptools and h11).

tests/test_revision_http.py has the SDK clients and the first mismatch cases;
this file completes the matrix.
"""

from __future__ import annotations

import base64
import json
import socket
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures import conformance_harness as harness

pytestmark = pytest.mark.slow

MODERN = "2026-07-28"
FIXTURE = Path(__file__).resolve().with_name("fixtures") / "modern_server.py"
POLICY = {
    "version": "1", "default": "allow",
    "tools": {"danger": {"action": "deny", "reason": "never"},
              "regional": {"require": {"region": ["us-west1"]}}},
    "prompts": {"secret": {"action": "deny", "reason": "never"}},
    "resources": {"file:///secret/*": {"action": "deny", "reason": "never"}},
}
META = {"io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "0"}}
MISMATCH = -32020
Headers = list[tuple[str, str]]


def b64(text: str) -> str:
    return "=?base64?" + base64.b64encode(text.encode()).decode() + "?="


def noncanonical(text: str) -> str:
    """The sentinel form with its padding wrong (dropped, or added where none belongs)."""
    payload = base64.b64encode(text.encode()).decode()
    payload = payload.rstrip("=") if payload.endswith("=") else payload + "=="
    return f"=?base64?{payload}?="


class Gateway:
    """One mcpwall (``parser``) in front of the recording modern server."""

    def __init__(self, base: str, work: Path, audit: Path) -> None:
        self.base = base
        self.url = harness.endpoint(base, "modern")
        self.work = work
        self.audit = audit

    def posts_seen(self) -> list[dict[str, str]]:
        """The mcp-* headers of each POST the upstream received."""
        path = self.work / "headers.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] \
            if path.exists() else []

    def calls_seen(self) -> list[dict[str, Any]]:
        path = self.work / "calls.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] \
            if path.exists() else []

    def denials(self, at_least: int = 0) -> list[tuple[str | None, str | None, str | None]]:
        """(method, tool, rule) of each denial; waits for ``at_least`` to be committed."""
        deadline = time.monotonic() + 10
        while True:
            with sqlite3.connect(f"file:{self.audit}?mode=ro", uri=True) as db:
                rows = list(db.execute("select method, tool, rule from denials order by seq"))
            if len(rows) >= at_least or time.monotonic() > deadline:
                return rows
            time.sleep(0.05)



def _start(work: Path, upstream_port: int, parser: str) -> Iterator[Gateway]:
    policy = work / "policy.json"
    policy.write_text(json.dumps(POLICY))
    front = harness.free_port()
    lines = ["[listen]", 'host = "127.0.0.1"', f"port = {front}", "",
             "[http]", f'parser = "{parser}"', "",
             "[policy]", f"files = [{json.dumps(str(policy))}]",
             'deny_tools_call_as = "jsonrpc_error"', "",
             "[audit]", f"path = {json.dumps(str(work / f'audit-{parser}.db'))}", "",
             "[servers.modern]", 'transport = "http"',
             f"url = {json.dumps(f'http://127.0.0.1:{upstream_port}/mcp')}", ""]
    config = work / f"mcpwall-{parser}.toml"
    config.write_text("\n".join(lines))
    log = work / f"mcpwall-{parser}.log"
    with harness.background([sys.executable, "-m", "firewall", "serve", str(config)],
                            log, cwd=work) as proc:
        harness.wait_for_port(front, proc, log)
        gateway = Gateway(f"http://127.0.0.1:{front}", work, work / f"audit-{parser}.db")
        # mcpwall learns regional's x-mcp-header annotations from a tools/list.
        listed = post(gateway, body("tools/list", {}), right("tools/list"))
        assert listed.status_code == 200, listed.text
        yield gateway


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    work = tmp_path_factory.mktemp("smuggling")
    port = harness.free_port()
    env = {"RECORD_FILE": str(work / "calls.jsonl"), "HEADERS_FILE": str(work / "headers.jsonl")}
    with harness.background([sys.executable, str(FIXTURE), "--port", str(port)],
                            work / "modern.log", env=env) as server:
        harness.wait_for_port(port, server, work / "modern.log")
        yield port, work


@pytest.fixture(scope="module")
def gateway(upstream: tuple[int, Path]) -> Iterator[Gateway]:
    port, work = upstream
    yield from _start(work, port, "httptools")


@pytest.fixture(scope="module", params=["httptools", "h11"])
def any_parser(request: pytest.FixtureRequest, upstream: tuple[int, Path],
               gateway: Gateway) -> Iterator[Gateway]:
    if request.param == "httptools":
        yield gateway
        return
    port, work = upstream
    yield from _start(work, port, request.param)


_ids = iter(range(1000, 10**6))


def body(method: str, params: dict[str, Any], meta: Any = META) -> dict[str, Any]:
    full = dict(params)
    if meta is not None:
        full["_meta"] = meta
    return {"jsonrpc": "2.0", "id": next(_ids), "method": method, "params": full}


def call(name: Any, arguments: dict[str, Any] | None = None, meta: Any = META) -> dict[str, Any]:
    return body("tools/call", {"name": name, "arguments": arguments or {}}, meta)


def right(method: str, name: str | None = None, **params: str) -> Headers:
    """The headers a conforming client sends for a body."""
    out = [("mcp-protocol-version", MODERN), ("mcp-method", method)]
    if name is not None:
        out.append(("mcp-name", name))
    out += [(f"mcp-param-{k}", v) for k, v in params.items()]
    return out


def without(headers: Headers, name: str) -> Headers:
    return [(k, v) for k, v in headers if k.lower() != name]


def replaced(headers: Headers, name: str, value: str) -> Headers:
    return [*without(headers, name), (name, value)]


def post(gateway: Gateway, message: dict[str, Any] | bytes, headers: Headers) -> httpx.Response:
    content = message if isinstance(message, bytes) else json.dumps(message).encode()
    return httpx.post(gateway.url, content=content, timeout=30, headers=[
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"), *headers])


@dataclass
class Case:
    """One request of the matrix and the refusal the spec asks for."""

    name: str
    message: dict[str, Any]
    headers: Headers
    code: int = MISMATCH
    status: int = 400
    notes: list[str] = field(default_factory=list)


def _tool_pairs() -> list[tuple[str, str]]:
    # (header names, body says): allowed over denied, and the reverse.
    return [("echo", "danger"), ("danger", "echo")]


def matrix() -> list[Case]:
    cases: list[Case] = []
    # -- MCP-Protocol-Version vs _meta ("Protocol Version Header") ----------------
    for shown, real in _tool_pairs():
        msg = call(real)
        cases += [
            Case(f"version-2025-header-modern-body-{real}", msg,
                 replaced(right("tools/call", real), "mcp-protocol-version", "2025-11-25")),
            Case(f"version-header-missing-{real}", msg,
                 without(right("tools/call", real), "mcp-protocol-version")),
            Case(f"version-header-differs-and-name-{shown}-{real}", msg,
                 replaced(right("tools/call", shown), "mcp-protocol-version", "2025-06-18")),
            Case(f"version-modern-header-2025-body-{real}",
                 call(real, meta={**META, "io.modelcontextprotocol/protocolVersion":
                                  "2025-11-25"}), right("tools/call", real)),
            # _meta without its version: the ladder's first step, invalid params.
            Case(f"version-meta-missing-{real}",
                 call(real, meta={"io.modelcontextprotocol/clientCapabilities": {}}),
                 right("tools/call", real), code=-32602),
            Case(f"version-no-meta-{real}", call(real, meta=None), right("tools/call", real),
                 code=-32602),
            Case(f"version-meta-not-a-string-{real}",
                 call(real, meta={**META, "io.modelcontextprotocol/protocolVersion": 20260728}),
                 right("tools/call", real)),
            # A version no one speaks, in both: not a mismatch, unsupported.
            Case(f"version-unknown-both-{real}",
                 call(real, meta={**META, "io.modelcontextprotocol/protocolVersion":
                                  "2099-01-01"}),
                 replaced(right("tools/call", real), "mcp-protocol-version", "2099-01-01"),
                 code=-32022),
        ]
    # -- Mcp-Method vs method ("Standard Request Headers"; values are case-sensitive) --
    for _, real in _tool_pairs():
        msg = call(real)
        cases += [
            Case(f"method-differs-list-{real}", msg, replaced(right("tools/call", real),
                                                             "mcp-method", "tools/list")),
            Case(f"method-missing-{real}", msg, without(right("tools/call", real), "mcp-method")),
            Case(f"method-case-{real}", msg, replaced(right("tools/call", real), "mcp-method",
                                                      "Tools/Call")),
            Case(f"method-upper-{real}", msg, replaced(right("tools/call", real), "mcp-method",
                                                       "TOOLS/CALL")),
            Case(f"method-empty-{real}", msg, replaced(right("tools/call", real), "mcp-method",
                                                       "")),
        ]
    cases.append(Case("method-list-body-call-header-danger", body("tools/list", {}),
                      right("tools/call", "danger")))
    cases.append(Case("method-prompts-get-body-call-header",
                      body("prompts/get", {"name": "secret"}), right("tools/call", "secret")))
    # -- Mcp-Name vs params.name / params.uri ("Value Encoding") -------------------
    for shown, real in _tool_pairs():
        msg = call(real)
        cases += [
            Case(f"name-differs-{shown}-{real}", msg, right("tools/call", shown)),
            Case(f"name-missing-{real}", msg, right("tools/call")),
            Case(f"name-empty-{real}", msg, right("tools/call", "")),
            Case(f"name-base64-other-{shown}-{real}", msg, right("tools/call", b64(shown))),
            Case(f"name-base64-not-canonical-{real}", msg, right("tools/call", noncanonical(real))),
            Case(f"name-base64-not-base64-{real}", msg, right("tools/call", "=?base64?%%%?=")),
            Case(f"name-base64-upper-marker-{real}", msg,
                 right("tools/call", b64(real).replace("base64", "BASE64"))),
            Case(f"name-base64-invalid-utf8-{real}", msg,
                 right("tools/call", "=?base64?" + base64.b64encode(b"\xff" + real.encode())
                       .decode() + "?=")),
            Case(f"name-base64-of-sentinel-{real}", msg,
                 right("tools/call", b64(b64(real)))),
            Case(f"name-padded-{shown}-{real}", call(f" {real}"), right("tools/call", real)),
            Case(f"name-comma-list-{shown}-{real}", msg, right("tools/call", f"{shown}, {real}")),
            Case(f"name-not-a-string-{real}", call(7), right("tools/call", "7")),
        ]
    # Non-ASCII names in plain header bytes (Latin-1, UTF-8): the raw byte tests below.
    for shown, real in (("greeting", "secret"), ("secret", "greeting")):
        msg = body("prompts/get", {"name": real})
        cases += [Case(f"prompt-name-differs-{shown}-{real}", msg, right("prompts/get", shown)),
                  Case(f"prompt-name-missing-{real}", msg, right("prompts/get")),
                  Case(f"prompt-name-base64-{shown}-{real}", msg,
                       right("prompts/get", b64(shown)))]
    for shown, real in (("file:///public/a", "file:///secret/a"),
                        ("file:///secret/a", "file:///public/a")):
        msg = body("resources/read", {"uri": real})
        cases += [Case(f"uri-differs-{real[8:14]}", msg, right("resources/read", shown)),
                  Case(f"uri-missing-{real[8:14]}", msg, right("resources/read")),
                  Case(f"uri-base64-{real[8:14]}", msg, right("resources/read", b64(shown)))]
    # -- Mcp-Param-* vs arguments ("Custom Headers from Tool Parameters") ------------
    for shown, real in (("us-west1", "eu-north1"), ("eu-north1", "us-west1")):
        msg = call("regional", {"region": real, "query": "q"})
        cases += [
            Case(f"param-differs-{real}", msg, right("tools/call", "regional", region=shown)),
            Case(f"param-base64-differs-{real}", msg,
                 right("tools/call", "regional", region=b64(shown))),
            Case(f"param-missing-{real}", msg, right("tools/call", "regional")),
            Case(f"param-odd-name-case-differs-{real}", msg,
                 [*right("tools/call", "regional"), ("MCP-PARAM-REGION", shown)]),
            Case(f"param-header-without-argument-{shown}",
                 call("regional", {"query": "q"}), right("tools/call", "regional",
                                                         region=shown)),
        ]
    shard = call("regional", {"region": "us-west1", "shard": 42})
    dry = call("regional", {"region": "us-west1", "dry": True})
    for value in ("41", "4.2e1", "0x2a", "+42", "42.5", "41.99999999999999999", "forty-two",
                  "4 2", b64("41"), "true"):
        cases.append(Case(f"param-integer-{value.strip() or 'blank'}", dict(shard),
                          right("tools/call", "regional", region="us-west1", shard=value)))
    for value in ("True", "TRUE", "1", "yes", "false", b64("false"), "42"):
        cases.append(Case(f"param-boolean-{value}", dict(dry),
                          right("tools/call", "regional", region="us-west1", dry=value)))
    cases.append(Case("param-integer-for-a-float", call("regional", {"region": "us-west1",
                                                                      "shard": 42.0}),
                      right("tools/call", "regional", region="us-west1", shard="42")))
    cases.append(Case("param-integer-beyond-safe", call("regional", {"region": "us-west1",
                                                                      "shard": 2**53}),
                      right("tools/call", "regional", region="us-west1", shard=str(2**53))))
    # -- duplicated headers (either order) ---------------------------------------------
    for first, second in (("echo", "danger"), ("danger", "echo")):
        for real in ("echo", "danger"):
            cases.append(Case(f"duplicate-name-{first}-{second}-body-{real}", call(real),
                              [*right("tools/call", real), ("mcp-name", first)]
                              if first != real else
                              [*right("tools/call", first), ("mcp-name", second)]))
    cases.append(Case("duplicate-name-same-value", call("echo"),
                      [*right("tools/call", "echo"), ("mcp-name", "echo")]))
    cases.append(Case("duplicate-name-joined-is-the-body", call("echo, danger"),
                      [*right("tools/call", "echo"), ("mcp-name", "danger")]))
    cases.append(Case("duplicate-method", call("echo"),
                      [*right("tools/call", "echo"), ("mcp-method", "tools/list")]))
    cases.append(Case("duplicate-method-same-value", call("echo"),
                      [*right("tools/call", "echo"), ("mcp-method", "tools/call")]))
    cases.append(Case("duplicate-version", call("echo"),
                      [*right("tools/call", "echo"), ("mcp-protocol-version", MODERN)]))
    cases.append(Case("duplicate-param", call("regional", {"region": "us-west1"}),
                      [*right("tools/call", "regional", region="us-west1"),
                       ("mcp-param-region", "eu-north1")]))
    # -- header names in odd case (names are case-insensitive, "Case Sensitivity") --
    for shown, real in _tool_pairs():
        cases.append(Case(f"odd-case-name-{shown}-{real}", call(real),
                          [("MCP-protocol-VERSION", MODERN), ("mCp-MeThOd", "tools/call"),
                           ("mcp-NAME", shown)]))
    return cases


MATRIX = matrix()


def _refused(gateway: Gateway, case: Case) -> None:
    posts, calls = len(gateway.posts_seen()), len(gateway.calls_seen())
    recorded = len(gateway.denials())
    reply = post(gateway, case.message, case.headers)
    assert reply.status_code == case.status, (case.name, reply.status_code, reply.text)
    answer = reply.json()
    assert answer["id"] == case.message["id"], (case.name, answer)
    assert answer["error"]["code"] == case.code, (case.name, answer)
    rows = gateway.denials(recorded + 1)[recorded:]
    assert [(m, r) for m, _, r in rows] == [(case.message["method"], "protocol")], (
        case.name, rows)
    assert len(gateway.posts_seen()) == posts, (case.name, gateway.posts_seen()[posts:])
    assert len(gateway.calls_seen()) == calls, (case.name, gateway.calls_seen()[calls:])


@pytest.mark.parametrize("case", MATRIX, ids=[c.name for c in MATRIX])
def test_every_mismatch_is_refused_recorded_and_never_reaches_the_server(
        gateway: Gateway, case: Case) -> None:
    """Streamable HTTP, "Server Validation": a header that is missing, does not match
    the body (after Base64 decoding), or holds invalid characters is answered 400
    with HeaderMismatch (-32020) under the request's id; a version no one speaks
    with -32022 (UnsupportedProtocolVersionError), a ``_meta`` without its version
    with -32602 (the ladder of firewall/protocol/revision.py, rule 2). Each is a
    ``protocol`` denial in the audit trail, and the upstream never sees a POST."""
    _refused(gateway, case)


@pytest.mark.parametrize(("target", "headers", "method"), [
    (call("echo"), right("tools/call", "echo"), None),
    (call("danger"), right("tools/call", "danger"), "tools.danger"),
    (body("prompts/get", {"name": "secret"}), right("prompts/get", "secret"), "prompts.secret"),
    (body("resources/read", {"uri": "file:///secret/a"}),
     right("resources/read", "file:///secret/a"), "resources.file:///secret/*"),
    (call("regional", {"region": "eu-north1"}), right("tools/call", "regional",
                                                      region="eu-north1"), "tools.regional"),
    (call("regional", {"region": "us-west1", "shard": 42, "dry": False}),
     right("tools/call", "regional", region="us-west1", shard="42.0", dry="false"), None),
    (call("regional", {"region": "us-west1", "shard": -7, "dry": True}),
     right("tools/call", "regional", region="us-west1", shard=b64("-7"), dry=b64("true")), None),
    (call("é"), right("tools/call", b64("é")), None),
    (call("=?base64?ZWNobw==?="), right("tools/call", b64("=?base64?ZWNobw==?=")), None),
    (call("echo"), [("MCP-PROTOCOL-VERSION", MODERN), ("MCP-METHOD", "tools/call"),
                    ("MCP-NAME", "echo")], None),
], ids=["allowed", "denied", "prompt-denied", "resource-denied", "param-denied",
        "numeric-forms", "base64-forms", "nonascii-base64", "sentinel-looking-name",
        "upper-case-names"])
def test_with_agreeing_headers_the_body_decides(gateway: Gateway, target: dict[str, Any],
                                                headers: Headers, method: str | None) -> None:
    """Headers that agree with the body: the policy decides the body's target. What
    reaches the server carries headers made from the decided body only (the
    client's own forms never go on)."""
    posts, recorded = len(gateway.posts_seen()), len(gateway.denials())
    reply = post(gateway, target, headers)
    if method is None:
        assert reply.status_code == 200, reply.text
        seen = gateway.posts_seen()[posts:]
        assert len(seen) == 1
        name = target["params"]["name"]
        # Plain when header-safe, else (non-ASCII, sentinel-shaped) the Base64 form.
        assert seen[0]["mcp-name"] == (b64(name) if name in ("é", "=?base64?ZWNobw==?=")
                                       else name)
        for key, value in target["params"]["arguments"].items():
            if key in ("shard", "dry"):
                assert seen[0][f"mcp-param-{key}"] == json.dumps(value)
        return
    assert reply.json()["error"]["data"]["rule"] == method, reply.text
    assert len(gateway.posts_seen()) == posts
    rows = gateway.denials(recorded + 1)[recorded:]
    assert [r for _, _, r in rows] == [method]


def test_headers_the_body_does_not_bear_are_never_forwarded(gateway: Gateway) -> None:
    """``Mcp-Name`` on a method that names nothing, and an ``Mcp-Param-*`` no
    ``x-mcp-header`` declares: "Intermediate servers that do not recognize an
    Mcp-Param-{Name} header MUST forward it and otherwise ignore it" speaks of
    headers an intermediary does not parse; mcpwall parses the body and sends
    the upstream only headers made from it, so nothing a router might read
    differs from what was decided."""
    posts = len(gateway.posts_seen())
    reply = post(gateway, body("tools/list", {}),
                 [*right("tools/list", "danger"), ("mcp-param-region", "eu-north1")])
    assert reply.status_code == 200
    reply = post(gateway, call("echo", {"region": "x"}),
                 [*right("tools/call", "echo"), ("mcp-param-other", "danger")])
    assert reply.status_code == 200
    assert gateway.posts_seen()[posts:] == [
        {"mcp-method": "tools/list", "mcp-protocol-version": MODERN},
        {"mcp-method": "tools/call", "mcp-name": "echo", "mcp-protocol-version": MODERN}]


def test_a_tools_call_without_a_name_never_reaches_the_server(gateway: Gateway) -> None:
    """No body name to compare ``Mcp-Name`` with: the request is invalid params, decided
    and refused, whatever the header names."""
    posts = len(gateway.posts_seen())
    message = body("tools/call", {"arguments": {}})
    reply = post(gateway, message, right("tools/call", "echo"))
    assert reply.json()["error"]["code"] in (-32602, MISMATCH), reply.text
    assert len(gateway.posts_seen()) == posts


def test_a_2025_session_request_whose_body_claims_the_revision_is_a_mismatch(
        gateway: Gateway) -> None:
    """"Protocol Version Header": the header must match ``_meta``'s version. A request
    of a 2025 session (its MCP-Protocol-Version a handshake version) whose
    ``_meta`` names 2026-07-28 behind JSON escapes (``\\/`` or ``\\u``) is still
    a body that claims the revision: -32020, never forwarded over the session."""
    init = httpx.post(gateway.url, json={
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                   "clientInfo": {"name": "raw", "version": "0"}}},
        headers={"accept": "application/json, text/event-stream"}, timeout=30)
    assert init.status_code == 200, init.text
    session = [("mcp-protocol-version", "2025-11-25")]
    if "mcp-session-id" in init.headers:
        session.append(("mcp-session-id", init.headers["mcp-session-id"]))
    httpx.post(gateway.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
               headers=[("accept", "application/json, text/event-stream"), *session],
               timeout=30)
    for escaped in (b"io.modelcontextprotocol\\/protocolVersion",
                    b"io.modelcontextprotocol/protocol\\u0056ersion"):
        message = call("danger")
        raw = json.dumps(message).encode().replace(
            b"io.modelcontextprotocol/protocolVersion", escaped)
        posts, calls, recorded = (len(gateway.posts_seen()), len(gateway.calls_seen()),
                                  len(gateway.denials()))
        reply = post(gateway, raw, session)
        assert (reply.status_code, reply.json()["error"]["code"]) == (400, MISMATCH), reply.text
        assert reply.json()["id"] == message["id"]
        rows = gateway.denials(recorded + 1)[recorded:]
        assert [(m, r) for m, _, r in rows] == [("tools/call", "protocol")]
        assert len(gateway.posts_seen()) == posts and len(gateway.calls_seen()) == calls


# -- raw header bytes: what each HTTP/1.1 parser lets through ---------------------------


def raw_post(gateway: Gateway, message: dict[str, Any], head: bytes) -> tuple[int, bytes]:
    """POST ``message`` with ``head`` (extra header lines, CRLF-terminated, as bytes)."""
    data = json.dumps(message).encode()
    host, port = gateway.base.removeprefix("http://").split(":")
    request = (b"POST /servers/modern/mcp HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
               b"Content-Type: application/json\r\n"
               b"Accept: application/json, text/event-stream\r\n"
               b"Content-Length: " + str(len(data)).encode() + b"\r\nConnection: close\r\n"
               + head + b"\r\n" + data)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    status_line, _, rest = received.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


STANDARD = (b"MCP-Protocol-Version: " + MODERN.encode() + b"\r\nMcp-Method: tools/call\r\n")
RAW_CASES = [
    ("nul-in-name", "echo", b"Mcp-Name: echo\x00danger\r\n"),
    ("nul-trailing", "echo", b"Mcp-Name: echo\x00\r\n"),
    ("bare-cr", "danger", b"Mcp-Name: echo\rMcp-Name: danger\r\n"),
    ("bare-lf-injects-a-header", "danger", b"Mcp-Name: danger\nMcp-Name: echo\r\n"),
    ("obs-fold", "danger", b"Mcp-Name: echo\r\n danger\r\n"),
    ("vertical-tab", "echo", b"Mcp-Name: echo\x0b\r\n"),
    ("form-feed", "echo", b"Mcp-Name: \x0cecho\r\n"),
    ("unit-separator", "echo", b"Mcp-Name: echo\x1f\r\n"),
    ("del", "echo", b"Mcp-Name: echo\x7f\r\n"),
    ("latin1-nbsp", "echo", b"Mcp-Name: echo\xa0\r\n"),
    ("latin1-e-acute", "\u00e9", b"Mcp-Name: \xe9\r\n"),
    ("utf8-e-acute", "\u00e9", b"Mcp-Name: \xc3\xa9\r\n"),
    ("method-vertical-tab", "echo", b"Mcp-Name: echo\r\n"),  # the method carries it below
    ("space-before-colon", "danger", b"Mcp-Name : echo\r\nMcp-Name: danger\r\n"),
]


@pytest.mark.parametrize(("label", "real", "head"), RAW_CASES, ids=[c[0] for c in RAW_CASES])
def test_raw_header_bytes_are_refused_by_the_parser_or_as_a_mismatch(
        any_parser: Gateway, label: str, real: str, head: bytes) -> None:
    """Streamable HTTP, "Value Encoding" and "Server Validation": header values are
    visible ASCII, space and tab (RFC 9110); a value with anything else (control
    characters, DEL, Latin-1 or raw UTF-8 bytes) "contains invalid characters"
    and is refused with -32020, even when it would equal the body once stripped
    or decoded. A request the HTTP parser itself cannot read is refused 400 by
    it. Either way nothing reaches the server."""
    gateway = any_parser
    standard = STANDARD
    if label == "method-vertical-tab":
        standard = STANDARD.replace(b"tools/call\r\n", b"tools/call\x0b\r\n")
    posts, calls = len(gateway.posts_seen()), len(gateway.calls_seen())
    message = call(real)
    status, content = raw_post(gateway, message, standard + head)
    assert status == 400, (label, status, content)
    if content.startswith(b"{"):
        answer = json.loads(content)
        assert answer["error"]["code"] == MISMATCH, (label, answer)
        assert answer["id"] == message["id"]
    assert len(gateway.posts_seen()) == posts, label
    assert len(gateway.calls_seen()) == calls, label


def test_tabs_and_spaces_around_a_value_are_not_part_of_it(any_parser: Gateway) -> None:
    """RFC 9110 field values: leading and trailing spaces and tabs are not part of the
    value, so a header padded with them still names the body's target."""
    posts = len(any_parser.posts_seen())
    status, content = raw_post(any_parser, call("echo"),
                               STANDARD + b"Mcp-Name: \t echo \t\r\n")
    assert status == 200, content
    assert any_parser.posts_seen()[posts:][0]["mcp-name"] == "echo"
