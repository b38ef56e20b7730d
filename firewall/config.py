"""The gateway configuration: one TOML file decoded into msgspec Structs.

Rules this module keeps:

1. Unknown keys are errors, everywhere (``forbid_unknown_fields``): a typo in a
   security configuration must never be silently ignored.
2. Every error names the file, the key path and what was expected
   (:class:`ConfigError`), e.g. ``gw.toml: servers.vm.command: Expected `str`, got `int```.
3. Relative paths in a config file are resolved against the file's directory,
   so a config means the same thing whatever the working directory.

Example::

    config = load_config(Path("mcpwall.toml"))
    for name, server in config.servers.items(): ...
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path
from typing import Any, Final, Literal

import msgspec

from firewall.identity import TokenEntry
from firewall.settings import admin as admin_table
from firewall.settings.admin import AdminSettings
from firewall.settings.approvals import ApprovalSettings
from firewall.settings.audit import AuditSettings
from firewall.settings.kill_switch import KillSwitchSettings
from firewall.settings.limits import TLS_FILES, LimitSettings, check_limits

DEFAULT_PORT = 8765
# Unless configured, one principal may hold a quarter of a cap (sessions,
# children): it cannot starve the others.
PRINCIPAL_SHARE: Final = 4


class ConfigError(Exception):
    """A configuration that cannot be used; the message names file and key path."""


class _Base(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class ListenSettings(_Base):
    """Where the HTTP front listens, and the limits that protect it."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    # Origins allowed to call the endpoints (DNS-rebinding protection). Requests
    # without an Origin header (non-browser clients) are allowed.
    allowed_origins: list[str] = msgspec.field(
        default_factory=lambda: ["http://127.0.0.1", "http://localhost", "null"]
    )
    max_body_bytes: int = 4 * 1024 * 1024
    max_sessions: int = 1024
    # Sessions one principal may hold across the whole front; unset: a quarter
    # of max_sessions. Not applied with authentication off (one principal).
    max_sessions_per_principal: int | None = None
    session_idle_seconds: float = 1800.0
    upstream_timeout_seconds: float = 300.0
    shutdown_grace_seconds: float = 10.0
    keepalive_seconds: float = 15.0
    # The longest a client may cache a list or read result (ttlMs) relayed under
    # the 2026-07-28 revision: a policy reload reaches cached lists within it.
    max_cache_ttl_seconds: float = 60.0
    # subscriptions/listen streams (2026-07-28) one principal may hold open at
    # once, and the longest one lives (then it ends gracefully; the client
    # listens again).
    max_listen_streams_per_principal: int = 16
    listen_stream_max_seconds: float = 3600.0
    # Connections served at once; beyond, [http] reserve_connections more are
    # taken for /healthz only, and the rest are refused (503, Retry-After).
    max_connections: int = 1024

    def sessions_per_principal(self) -> int:
        """The effective ``max_sessions_per_principal`` (default: max_sessions / 4)."""
        if self.max_sessions_per_principal is not None:
            return self.max_sessions_per_principal
        return max(1, self.max_sessions // PRINCIPAL_SHARE)


class HttpSettings(_Base):
    """How the HTTP listeners (the front and the operator listener) parse HTTP/1.1."""

    # httptools (llhttp, in C) or h11 (hypercorn's own, pure Python).
    parser: Literal["httptools", "h11"] = "httptools"
    # A request head must be complete this long after the connection opened, or
    # after its first byte; else 408 and the connection closes (slowloris).
    head_timeout_seconds: float = 10.0
    # A request body must be complete this long after its head, plus one second
    # for every body_min_bytes_per_second bytes received; else 408 and close.
    body_timeout_seconds: float = 30.0
    body_min_bytes_per_second: int = 16384
    # Between requests, a connection stays open this long.
    keep_alive_seconds: float = 75.0
    # Connections each listener takes beyond its max_connections, one request
    # each: GET /healthz is answered, anything else 503 with Retry-After.
    reserve_connections: int = 16


class LogSettings(_Base):
    """Log output: ``auto`` is console on a TTY, JSON lines otherwise."""

    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


class PolicySettings(_Base):
    """Fleet-wide policy files and how refusals look on the wire."""

    files: list[str] = msgspec.field(default_factory=list)
    dry_run: bool = False
    # How a refused tools/call reaches the client: a tool result with
    # isError=true (the model sees why) or a JSON-RPC error.
    deny_tools_call_as: Literal["tool_result", "jsonrpc_error"] = "tool_result"
    # The longest one match of a policy pattern against a call may run, in
    # milliseconds; past it the call is refused (see docs/policy.md).
    regex_timeout_ms: int = 20


class AuthSettings(_Base):
    """Bearer tokens (SHA-256 digests only). With none, callers are anonymous."""

    tokens: list[TokenEntry] = msgspec.field(default_factory=list)


class StdioServer(_Base, tag="stdio", tag_field="transport"):
    """An MCP server run as a supervised child process, speaking stdio."""

    command: str
    args: list[str] = msgspec.field(default_factory=list)
    env: dict[str, str] = msgspec.field(default_factory=dict)
    cwd: str | None = None
    policy: list[str] = msgspec.field(default_factory=list)
    # One child per client session (the default): sessions never share state.
    max_children: int = 32
    # Children (sessions) of this server one principal may run; unset: a
    # quarter of max_children, so no principal can take them all.
    max_children_per_principal: int | None = None
    idle_seconds: float = 900.0
    restart_attempts: int = 3
    max_line_bytes: int = 16 * 1024 * 1024
    terminate_grace_seconds: float = 5.0
    # Carry 2026-07-28 requests over a 2025 session mcpwall opens itself
    # (serve only). Off by default: the bridge carries the server's own
    # requests during a call as MRTR input requests and a call's progress
    # and log messages, but not its other notifications nor its requests
    # that belong to no call, so a client in auto mode keeps the 2025
    # handshake, where they work. False: such requests get -32022 naming the 2025 versions.
    bridge: bool = False

    def children_per_principal(self) -> int:
        """The effective ``max_children_per_principal`` (default: max_children / 4)."""
        if self.max_children_per_principal is not None:
            return self.max_children_per_principal
        return max(1, self.max_children // PRINCIPAL_SHARE)


class HttpServer(_Base, tag="http", tag_field="transport"):
    """An MCP server reached over Streamable HTTP."""

    url: str
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    policy: list[str] = msgspec.field(default_factory=list)
    max_connections: int = 64
    connect_timeout_seconds: float = 10.0
    # Carry 2026-07-28 requests over a 2025 session of mcpwall's own once the
    # server showed it speaks only the handshake revisions (serve only; as
    # StdioServer.bridge, off by default). False: they get -32022.
    bridge: bool = False


ServerSettings = StdioServer | HttpServer


class Config(_Base):
    """The whole gateway configuration."""

    listen: ListenSettings = msgspec.field(default_factory=ListenSettings)
    http: HttpSettings = msgspec.field(default_factory=HttpSettings)
    log: LogSettings = msgspec.field(default_factory=LogSettings)
    policy: PolicySettings = msgspec.field(default_factory=PolicySettings)
    audit: AuditSettings = msgspec.field(default_factory=AuditSettings)
    auth: AuthSettings = msgspec.field(default_factory=AuthSettings)
    approvals: ApprovalSettings = msgspec.field(default_factory=ApprovalSettings)
    kill_switch: KillSwitchSettings = msgspec.field(default_factory=KillSwitchSettings)
    # Where token buckets live: in this process, or in a Redis shared by a fleet.
    limits: LimitSettings = msgspec.field(default_factory=LimitSettings)
    # The operator listener (API, metrics, console); none without an [admin] table.
    admin: AdminSettings | None = None
    servers: dict[str, ServerSettings] = msgspec.field(default_factory=dict)
    # Where the file came from; relative paths inside were resolved against it.
    source: str = "<built-in>"


_PATH_RE = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_SERVER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _key_path(raw: str) -> str:
    """`$.servers.vm.args[0]` -> `servers.vm.args[0]`; `$["a b"]` is kept readable."""
    path = raw[1:] if raw.startswith(".") else raw
    return path or "(top level)"


def _describe(exc: msgspec.ValidationError) -> tuple[str, str]:
    text = str(exc)
    m = _PATH_RE.search(text)
    if m is None:
        return "(top level)", text
    return _key_path(m.group("path")), text[: m.start()]


def _convert(data: Any, kind: type[Any], source: str, prefix: str) -> Any:
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as exc:
        where, what = _describe(exc)
        if prefix:
            where = prefix if where == "(top level)" else f"{prefix}.{where}".replace(".[", "[")
        raise ConfigError(f"{source}: {where}: {what}") from None


def parse_config(text: str, source: str = "<string>", base: Path | None = None) -> Config:
    """Decode TOML text into a :class:`Config`; raise :class:`ConfigError`."""
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    servers = data.pop("servers", {})
    config = _convert(data, Config, source, "")
    if not isinstance(servers, dict):
        raise ConfigError(f"{source}: servers: Expected `table`, got `{type(servers).__name__}`")
    # Each server on its own, so that errors name it (msgspec says `servers[...]`).
    fleet = {name: _convert(entry, ServerSettings, source, f"servers.{name}")  # type: ignore[arg-type]
             for name, entry in servers.items()}
    config = msgspec.structs.replace(config, servers=fleet)
    _check(config, source)
    return _resolve(config, source, base)


def load_config(path: Path) -> Config:
    """Read and decode a config file; raise :class:`ConfigError` with the file's name."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_config(text, str(path), path.resolve().parent)


def _check(config: Config, source: str) -> None:
    for name, server in config.servers.items():
        if not _SERVER_NAME.match(name):
            raise ConfigError(
                f"{source}: servers.{name}: expected a name of letters, digits, '_', '.', '-' "
                "(it becomes the URL path /servers/NAME/mcp)"
            )
        if isinstance(server, HttpServer) and not server.url.startswith(("http://", "https://")):
            raise ConfigError(f"{source}: servers.{name}.url: expected an http:// or https:// URL")
        if isinstance(server, StdioServer):
            _check_cap(source, f"servers.{name}", "max_children", server.max_children, None)
            _check_cap(source, f"servers.{name}", "max_children_per_principal",
                       server.max_children_per_principal, server.max_children)
    if not 0 < config.listen.port < 65536:
        raise ConfigError(f"{source}: listen.port: expected 1..65535, got {config.listen.port}")
    for key in ("max_body_bytes", "max_sessions", "max_connections",
                "max_listen_streams_per_principal", "listen_stream_max_seconds"):
        if getattr(config.listen, key) <= 0:
            raise ConfigError(f"{source}: listen.{key}: expected a positive number")
    for key in ("head_timeout_seconds", "body_timeout_seconds", "body_min_bytes_per_second",
                "keep_alive_seconds"):
        if not getattr(config.http, key) > 0:
            raise ConfigError(f"{source}: http.{key}: expected a positive number")
    if not 1 <= config.policy.regex_timeout_ms <= 10_000:
        raise ConfigError(f"{source}: policy.regex_timeout_ms: expected 1..10000, "
                          f"got {config.policy.regex_timeout_ms}")
    if config.http.reserve_connections < 0:
        raise ConfigError(f"{source}: http.reserve_connections: expected 0 or more")
    _check_cap(source, "listen", "max_sessions_per_principal",
               config.listen.max_sessions_per_principal, config.listen.max_sessions)
    if config.admin is not None:
        check_admin(config.admin, config.listen, source)
    problem = check_limits(config.limits, source)
    if problem is not None:
        raise ConfigError(problem)


def _check_cap(source: str, table: str, key: str, value: int | None, bound: int | None) -> None:
    """A cap is a positive count, at most the cap it is a share of (``bound``)."""
    if value is None:
        return
    if value <= 0 or (bound is not None and value > bound):
        expected = f"1..{bound}" if bound is not None else "a positive number"
        parent = {"max_children_per_principal": "max_children",
                  "max_sessions_per_principal": "max_sessions"}.get(key)
        why = f" (at most {table}.{parent})" if parent else ""
        raise ConfigError(f"{source}: {table}.{key}: expected {expected}{why}, got {value}")


def check_admin(admin: AdminSettings, listen: ListenSettings, source: str) -> None:
    """Refuse an operator listener that is unsafe or shares the agents' address."""
    problem = admin_table.check_admin(admin, listen.host, listen.port, source)
    if problem is not None:
        raise ConfigError(problem)


def _resolve(config: Config, source: str, base: Path | None) -> Config:
    if base is None:
        return msgspec.structs.replace(config, source=source)

    def rel(p: str) -> str:
        return str((base / p).resolve()) if not Path(p).is_absolute() else p

    servers: dict[str, ServerSettings] = {}
    for name, server in config.servers.items():
        server = msgspec.structs.replace(server, policy=[rel(p) for p in server.policy])
        if isinstance(server, StdioServer) and server.cwd is not None:
            server = msgspec.structs.replace(server, cwd=rel(server.cwd))
        servers[name] = server
    return msgspec.structs.replace(
        config,
        source=source,
        policy=msgspec.structs.replace(config.policy, files=[rel(p) for p in config.policy.files]),
        audit=msgspec.structs.replace(config.audit, path=rel(config.audit.path)),
        approvals=msgspec.structs.replace(config.approvals, path=rel(config.approvals.path)),
        kill_switch=msgspec.structs.replace(config.kill_switch, path=rel(config.kill_switch.path)),
        limits=msgspec.structs.replace(config.limits, **{
            key: rel(value) for key in TLS_FILES
            if (value := getattr(config.limits, key)) is not None}),
        servers=servers,
    )


def bundled_rules_dir() -> Path:
    """Where the policy packs live: beside the package when installed, else the checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_rules", here.parent / "rules"):
        if candidate.is_dir():
            return candidate
    raise ConfigError("the bundled rules/ directory is missing from this installation")


def default_config(workdir: Path | None = None) -> Config:
    """The embedded default: the demo virtualization server behind its policy pack.

    The audit database goes to the working directory.
    """
    cwd = workdir or Path.cwd()
    demo = StdioServer(command=sys.executable, args=["-m", "firewall.demo"])
    return Config(
        policy=PolicySettings(files=[str(bundled_rules_dir() / "virtualization.json")]),
        audit=msgspec.structs.replace(AuditSettings(), path=str(cwd / AuditSettings().path)),
        approvals=ApprovalSettings(path=str(cwd / ApprovalSettings().path)),
        kill_switch=KillSwitchSettings(path=str(cwd / KillSwitchSettings().path)),
        servers={"virtualization": demo},
        source="<built-in default>",
    )
