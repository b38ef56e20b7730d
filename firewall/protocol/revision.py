"""Protocol revisions per request, and the 2026-07-28 revision's header rules (sans-IO).

MCP has two eras: the handshake revisions (2025-03-26 to 2025-11-25:
``initialize``, sessions) and the stateless one (2026-07-28: every request
carries its version and client capabilities in ``params._meta``, no session).
A dual-era endpoint decides the era of each request on its own. Rules this
module keeps:

1. The era of a request: a ``MCP-Protocol-Version`` header naming a modern
   revision, or a body whose ``params._meta`` names one
   (``io.modelcontextprotocol/protocolVersion``), makes it modern; a
   handshake version or no header (2025-03-26) with no such ``_meta`` makes
   it a handshake request; any other header value is unsupported.
2. Header and body agree, and the body decides. A modern request is checked
   in one ladder, first failure wins (the order the SDKs use, so a client
   that disagrees with itself is told so before it is told its version is
   unsupported): ``_meta`` carries the version and the client capabilities
   (else -32602); ``MCP-Protocol-Version`` equals the body's version,
   ``Mcp-Method`` the body's method, ``Mcp-Name`` (its Base64 sentinel form
   decoded) the body's ``params.name`` or ``params.uri``, each ``Mcp-Param-*``
   the argument its tool's ``x-mcp-header`` names, when the tool's schema is
   known; each of these headers sent once, its value visible ASCII, spaces and
   tabs only (RFC 9110; spaces and tabs around it are not part of it), and an
   integer compared as a number exactly (else HeaderMismatch, -32020:
   :func:`check_repeated` for the headers sent twice, which the HTTP layer
   joins); the version is one mcpwall speaks
   (else -32022 with ``data.supported``); the method is not one the revision
   removed (``initialize``, ``ping``...: else 404, -32601). A handshake
   request whose body claims a modern version is a mismatch as well.
3. What goes upstream is made from the decided body: :func:`upstream_headers`
   writes ``MCP-Protocol-Version``, ``Mcp-Method``, ``Mcp-Name`` and the
   ``Mcp-Param-*`` headers anew from the message that was decided, never
   from the client's headers, so whatever routes on them downstream reads
   the decided body.
4. Cacheable results (``ttlMs``, ``cacheScope``) never outlive what mcpwall
   decided for longer than its cap: :func:`bound_cache` lowers ``ttlMs`` to
   the cap (a number however spelt; one that is no number, which a lenient
   reader may still take for one, is removed) and makes the scope
   ``private`` when the answer is the caller's own (filtered for it, or
   callers are told apart).
5. :class:`ResultView` is what every front does to a relayed answer of a
   cacheable method: tools/list teaches it the tools' ``x-mcp-header``
   annotations (at most :data:`MAX_LEARNT_TOOLS` tools, then it starts
   afresh, and at most :data:`MAX_PARAM_HEADERS` annotations of
   :data:`MAX_ANNOTATION_CHARS` characters a tool: a server cannot grow it
   without bound), ``server/discover`` names
   only the revisions mcpwall speaks, and rule 4 bounds the result.
"""

from __future__ import annotations

import base64
import binascii
import decimal
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal

import msgspec

from firewall.protocol import jsonrpc, mcp
from firewall.protocol.inbound import Inbound

MODERN_VERSIONS: Final = ("2026-07-28",)
HANDSHAKE_VERSIONS: Final = mcp.PROTOCOL_VERSIONS
# Newest first, as ``data.supported`` of -32022 lists them.
SUPPORTED_VERSIONS: Final = MODERN_VERSIONS + HANDSHAKE_VERSIONS
LATEST_MODERN: Final = MODERN_VERSIONS[0]

# The 2026-07-28 revision's error codes.
HEADER_MISMATCH: Final = -32020
MISSING_REQUIRED_CLIENT_CAPABILITY: Final = -32021
UNSUPPORTED_PROTOCOL_VERSION: Final = -32022
MODERN_ERRORS: Final = frozenset({HEADER_MISMATCH, MISSING_REQUIRED_CLIENT_CAPABILITY,
                                  UNSUPPORTED_PROTOCOL_VERSION})

META_VERSION: Final = "io.modelcontextprotocol/protocolVersion"
META_CAPABILITIES: Final = "io.modelcontextprotocol/clientCapabilities"
META_CLIENT_INFO: Final = "io.modelcontextprotocol/clientInfo"
META_VERSION_BYTES: Final = META_VERSION.encode()

DISCOVER: Final = "server/discover"
LISTEN: Final = "subscriptions/listen"
# Methods of the handshake revisions the stateless one removed: 404, -32601.
REMOVED_METHODS: Final = frozenset({mcp.INITIALIZE, mcp.PING, "logging/setLevel",
                                    mcp.RESOURCES_SUBSCRIBE, mcp.RESOURCES_UNSUBSCRIBE})
CACHEABLE: Final = frozenset({"tools/list", "prompts/list", "resources/list", "resources/read",
                              "resources/templates/list", DISCOVER})
# The body member Mcp-Name mirrors, by method.
NAME_BEARING: Final = {mcp.TOOLS_CALL: "name", mcp.PROMPTS_GET: "name",
                       mcp.RESOURCES_READ: "uri"}

VERSION_HEADER: Final = "mcp-protocol-version"
METHOD_HEADER: Final = "mcp-method"
NAME_HEADER: Final = "mcp-name"
PARAM_PREFIX: Final = "mcp-param-"

Era = Literal["handshake", "modern", "unsupported"]

_SENTINEL: Final = re.compile(r"^=\?base64\?(?P<payload>[A-Za-z0-9+/]*={0,2})\?=$")
_HEADER_SAFE: Final = re.compile(r"^[\x20-\x7E]*$")
# A field value as RFC 9110 allows it: visible ASCII, space and tab.
_FIELD_VALUE: Final = re.compile(r"^[\t\x20-\x7E]*$")
_TOKEN: Final = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_PRIMITIVE: Final = frozenset({"string", "integer", "boolean"})
_MAX_SAFE: Final = 2**53 - 1
_DECIMAL: Final = re.compile(r"^-?[0-9]+(\.[0-9]+)?$")
# Members whose values are data, not schemas: never walked for annotations.
_DATA_KEYWORDS: Final = frozenset({"x-mcp-header", "enum", "const", "default", "examples"})
# One tool's annotations as learnt (rule 5): beyond, taken as invalid.
MAX_PARAM_HEADERS: Final = 64
MAX_ANNOTATION_CHARS: Final = 4096


class Problem(msgspec.Struct, frozen=True):
    """Why a request cannot go on: its JSON-RPC error code, words and data."""

    code: int
    message: str
    data: dict[str, Any] | None = None
    # The HTTP status the revision gives it: 400, but 404 for a method it removed.
    status: int = 400


class ParamHeader(msgspec.Struct, frozen=True):
    """One ``x-mcp-header`` of a tool: the argument's path, the header token, its type."""

    path: tuple[str, ...]
    token: str
    type: str


def era_of(header_version: str | None) -> Era:
    """The era a ``MCP-Protocol-Version`` header names (absent: 2025-03-26, a handshake
    revision). The body may still claim the stateless revision (rule 1):
    :func:`body_version`. ``era_of("2026-07-28") == "modern"``."""
    if header_version is None:
        return "handshake"
    version = header_version.strip()
    if version in MODERN_VERSIONS:
        return "modern"
    return "handshake" if version in HANDSHAKE_VERSIONS else "unsupported"


def unsupported(requested: str | None, supported: tuple[str, ...] = SUPPORTED_VERSIONS) -> Problem:
    """The -32022 error naming the versions spoken here (a client picks one and retries)."""
    return Problem(UNSUPPORTED_PROTOCOL_VERSION,
                   f"Unsupported protocol version: {requested!r}",
                   {"supported": list(supported), "requested": requested})


def params_of(inbound: Inbound) -> Any:
    """The params of a decoded client message, from its one decoded value (None if absent)."""
    value = inbound.value
    if isinstance(value, dict):
        return value.get("params")
    params = getattr(value, "params", None)
    return None if params is msgspec.UNSET else params


def meta_of(params: Any) -> Mapping[str, Any] | None:
    """``params._meta`` when it is an object."""
    if isinstance(params, dict):
        meta = params.get("_meta")
        if isinstance(meta, dict):
            return meta
    return None


def body_version(params: Any) -> Any:
    """The protocol version the body claims (``_meta``), or None."""
    meta = meta_of(params)
    return None if meta is None else meta.get(META_VERSION)


def check_handshake(params: Any) -> Problem | None:
    """A handshake-era request whose body claims a modern version: a mismatch (rule 2)."""
    claimed = body_version(params)
    if claimed is None:
        return None
    return Problem(HEADER_MISMATCH, "Header mismatch: the body's _meta names protocol version "
                   f"{claimed!r} but MCP-Protocol-Version does not")


def check_modern(headers: Mapping[str, str], method: str, params: Any,
                 param_headers: tuple[ParamHeader, ...] | None) -> Problem | None:
    """The ladder of rule 2 for one modern request; None when it may go on.

    ``headers``: the request's headers, names lower-case. ``param_headers``:
    the tool's ``x-mcp-header`` annotations when mcpwall knows its schema
    (a tools/call), else None (``Mcp-Param-*`` then go unchecked, and not on).
    """
    meta = params.get("_meta") if isinstance(params, dict) else None
    if not isinstance(meta, dict) or META_VERSION not in meta or META_CAPABILITIES not in meta:
        return Problem(-32602, f"params._meta must carry {META_VERSION!r} and "
                               f"{META_CAPABILITIES!r}")
    version = meta[META_VERSION]
    header = headers.get(VERSION_HEADER)
    # The usual request: the header is, exactly, a revision spoken here that
    # the body names (a value field_value keeps as it is).
    if header is None or (
            (header != version or version not in MODERN_VERSIONS)
            and field_value(header) != version):
        return Problem(HEADER_MISMATCH, f"Header mismatch: MCP-Protocol-Version {header!r} does "
                                        f"not match the body's protocol version {version!r}")
    sent = headers.get(METHOD_HEADER)
    if sent is None or field_value(sent) != method:
        return Problem(HEADER_MISMATCH, f"Header mismatch: Mcp-Method {sent!r} does not match "
                                        f"the body's method {method!r}")
    member = NAME_BEARING.get(method)
    if member is not None and isinstance(params, dict):
        value = params.get(member)
        raw = headers.get(NAME_HEADER)
        if value is not None and (raw is None or decode_value(field_value(raw)) != value):
            return Problem(HEADER_MISMATCH, f"Header mismatch: Mcp-Name {raw!r} does not match "
                                            f"the body's {member} {value!r}")
    if param_headers is not None and isinstance(params, dict):
        arguments = params.get("arguments")
        problem = check_params(headers, arguments if isinstance(arguments, dict) else {},
                               param_headers)
        if problem is not None:
            return problem
    if not isinstance(version, str):
        return Problem(-32602, "the protocol version in _meta must be a string")
    if version not in MODERN_VERSIONS:
        return unsupported(version)
    if method in REMOVED_METHODS:
        return Problem(-32601, f"Method not found: {method!r} is not part of revision "
                               f"{version}", status=404)
    return None


def check_params(headers: Mapping[str, str], arguments: Mapping[str, Any],
                 spec: tuple[ParamHeader, ...]) -> Problem | None:
    """Each annotated argument and its ``Mcp-Param-*`` header: both absent, or equal."""
    for item in spec:
        name = PARAM_PREFIX + item.token.lower()
        raw = headers.get(name)
        value = _at(arguments, item.path)
        header = f"Mcp-Param-{item.token}"
        rendered = None if value is None else render_value(value)
        if rendered is None:
            if raw is not None:
                return Problem(HEADER_MISMATCH, f"Header mismatch: {header} is present but the "
                                                f"argument {'.'.join(item.path)!r} is not")
            continue
        if raw is None:
            return Problem(HEADER_MISMATCH, f"Header mismatch: {header} is missing but the "
                                            f"argument {'.'.join(item.path)!r} is present")
        decoded = decode_value(field_value(raw))
        if decoded is None or not _matches(item.type, value, rendered, decoded):
            return Problem(HEADER_MISMATCH, f"Header mismatch: {header} does not match the "
                                            f"argument {'.'.join(item.path)!r}")
    return None


def check_repeated(names: Iterable[str]) -> Problem | None:
    """A request-metadata header sent more than once (lower-case names): a mismatch.

    The HTTP layer joins repeated values with ``", "`` (RFC 9110), so two
    ``Mcp-Name`` lines ``a`` and ``b`` would read as a body name ``"a, b"``
    while a component that takes the first line reads ``a``."""
    for name in names:
        if name in (VERSION_HEADER, METHOD_HEADER, NAME_HEADER) or name.startswith(PARAM_PREFIX):
            return Problem(HEADER_MISMATCH, f"Header mismatch: {name} is sent more than once")
    return None


def field_value(raw: str) -> str | None:
    """A header value without the spaces and tabs around it; None when it holds anything
    but visible ASCII, space and tab (a value "contains invalid characters")."""
    # An ASCII string is printable exactly when it is all of 0x20-0x7E (no
    # tab): the common value, checked without the regular expression.
    if raw.isascii() and raw.isprintable():
        return raw.strip(" \t")
    return raw.strip(" \t") if _FIELD_VALUE.fullmatch(raw) else None


def upstream_headers(version: str, method: str, params: Any,
                     spec: tuple[ParamHeader, ...] | None) -> list[tuple[str, str]]:
    """The request-metadata headers of a decided message, made from its body (rule 3)."""
    out = [(VERSION_HEADER, version), (METHOD_HEADER, method)]
    if isinstance(params, dict):
        member = NAME_BEARING.get(method)
        value = params.get(member) if member is not None else None
        if isinstance(value, str):
            out.append((NAME_HEADER, encode_value(value)))
        arguments = params.get("arguments")
        if spec and isinstance(arguments, dict):
            for item in spec:
                found = _at(arguments, item.path)
                rendered = None if found is None else render_value(found)
                if rendered is not None:
                    out.append((PARAM_PREFIX + item.token.lower(), encode_value(rendered)))
    return out


def encode_value(value: str) -> str:
    """A header value: as is when plain printable ASCII, else the Base64 sentinel form."""
    # isascii() and isprintable() together are _HEADER_SAFE; only a value that
    # starts like the sentinel form can be one (the regular expressions cost
    # more than the rest of a request's header work).
    if value.isascii() and value.isprintable() and value == value.strip() and (
            not value.startswith("=?") or not _SENTINEL.fullmatch(value)):
        return value
    return f"=?base64?{base64.b64encode(value.encode()).decode('ascii')}?="


def decode_value(value: str | None) -> str | None:
    """A header value as the client meant it: the sentinel form decoded; None if malformed
    (or None already: see :func:`field_value`)."""
    if value is None:
        return None
    if not value.startswith("=?"):  # cannot be the sentinel form
        return value
    found = _SENTINEL.fullmatch(value)
    if found is None:
        return value
    payload = found.group("payload")
    try:
        raw = base64.b64decode(payload, validate=True)
    except binascii.Error:
        return None
    if base64.b64encode(raw).decode("ascii") != payload:  # only the canonical form
        return None
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return None


def render_value(value: Any) -> str | None:
    """An argument as its header carries it (string, integer, boolean), else None."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value) if -_MAX_SAFE <= value <= _MAX_SAFE else None
    if isinstance(value, str):
        return value
    return None


def param_headers_of(input_schema: Any) -> tuple[ParamHeader, ...] | None:
    """The ``x-mcp-header`` annotations of a tool's inputSchema; None when one is invalid.

    Valid: a token (RFC 9110), unique case-insensitively, on a string,
    integer or boolean property reached through ``properties`` only; at most
    :data:`MAX_PARAM_HEADERS` of them, their tokens and paths at most
    :data:`MAX_ANNOTATION_CHARS` characters in all (rule 5).
    """
    found: list[ParamHeader] = []
    if not _walk(input_schema, (), found, reachable=True):
        return None
    if len(found) > MAX_PARAM_HEADERS or sum(  # kept for as long as the front runs
            len(item.token) + sum(map(len, item.path)) for item in found) > MAX_ANNOTATION_CHARS:
        return None
    tokens = [item.token.lower() for item in found]
    if len(set(tokens)) != len(tokens):
        return None
    return tuple(found)


def _walk(node: Any, path: tuple[str, ...], out: list[ParamHeader], *, reachable: bool) -> bool:
    if isinstance(node, list):
        return all(_walk(item, path, out, reachable=False) for item in node)
    if not isinstance(node, dict):
        return True
    token = node.get("x-mcp-header")
    if token is not None:
        kind = node.get("type")
        if (not reachable or not path or not isinstance(token, str) or not _TOKEN.fullmatch(token)
                or kind not in _PRIMITIVE):
            return False
        out.append(ParamHeader(path, token, kind))
    for key, child in node.items():
        if key == "properties" and isinstance(child, dict):
            for name, sub in child.items():
                if not _walk(sub, (*path, name), out, reachable=reachable):
                    return False
        elif (key not in _DATA_KEYWORDS and isinstance(child, (dict, list))
              and not _walk(child, path, out, reachable=False)):
            return False
    return True


def _at(arguments: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = arguments
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def _matches(kind: str, value: Any, rendered: str, decoded: str) -> bool:
    if decoded == rendered:
        return True
    if kind == "integer" and not isinstance(value, bool) and isinstance(value, int):
        # Compared as numbers, exactly: "42.0" is 42 (plain decimals only), and
        # "41.99999999999999999" is not (as a float it would be).
        return _DECIMAL.fullmatch(decoded) is not None and decimal.Decimal(decoded) == value
    return False


def bound_cache(result: dict[str, Any], ttl_cap_ms: int, private: bool) -> dict[str, Any] | None:
    """A cacheable result within mcpwall's bounds (rule 4), or None when it is already.

    ``bound_cache({"tools": [], "ttlMs": 600000}, 60000, True)`` has ``ttlMs``
    60000 and ``cacheScope`` ``"private"``.
    """
    changes: dict[str, Any] = {}
    ttl: Any = result.get("ttlMs")
    number = isinstance(ttl, int | float) and not isinstance(ttl, bool)
    if number and ttl > ttl_cap_ms:  # 3600000.0 is read as an hour too
        changes["ttlMs"] = ttl_cap_ms
    if private and result.get("cacheScope", "private") != "private":
        changes["cacheScope"] = "private"
    if ttl is not None and not number:  # "3600000" is read as an hour: dropped
        return {k: v for k, v in {**result, **changes}.items() if k != "ttlMs"}
    return {**result, **changes} if changes else None


def discover_view(result: dict[str, Any]) -> dict[str, Any] | None:
    """A ``server/discover`` result as seen through mcpwall, or None when unchanged:
    ``supportedVersions`` narrowed to the revisions mcpwall speaks."""
    versions = result.get("supportedVersions")
    if not isinstance(versions, list):
        return None
    kept = [v for v in versions if v in SUPPORTED_VERSIONS]
    return None if kept == versions else {**result, "supportedVersions": kept}


MAX_LEARNT_TOOLS: Final = 4096  # x-mcp-header annotations kept per server (rule 5)


class ResultView:
    """The answers of one server as mcpwall relays them (rule 5); sans-IO.

    ``ttl_cap_ms``: the cap on ``ttlMs``; ``era_marked``: bound only the
    results that carry ``resultType`` (a front that relays both eras, such
    as ``wrap``, leaves the handshake revisions' results as they are).
    """

    __slots__ = ("era_marked", "param_headers", "ttl_cap_ms")

    def __init__(self, ttl_cap_ms: int, *, era_marked: bool = False) -> None:
        self.ttl_cap_ms = ttl_cap_ms
        self.era_marked = era_marked
        # Per tool (None: its annotation is invalid).
        self.param_headers: dict[str, tuple[ParamHeader, ...] | None] = {}

    def headers_of(self, params: Any) -> tuple[ParamHeader, ...] | None:
        """The ``x-mcp-header`` annotations of the tool a ``tools/call`` names,
        None while unknown (or invalid)."""
        if type(params) is not dict and not isinstance(params, Mapping):  # dict: no ABC check
            return None
        return self.param_headers.get(str(params.get("name")))

    def seen(self, method: str, line: bytes, private: bool) -> bytes:
        """An answer on its way to the client: learnt from, narrowed and bounded;
        ``line`` itself when nothing changes. ``private``: the answer is the
        caller's own (filtered for it, or callers are told apart)."""
        if method not in CACHEABLE:
            return line
        try:
            value = jsonrpc.decode_any(line)
        except jsonrpc.DECODE_ERRORS:
            return line
        result = value.get("result") if isinstance(value, dict) else None
        if not isinstance(result, dict):
            return line
        if method == mcp.TOOLS_LIST and isinstance(result.get("tools"), list):
            self.learn(result["tools"])
        if self.era_marked and "resultType" not in result:
            return line
        view = result
        if method == DISCOVER:
            view = discover_view(result) or result
        bounded = bound_cache(view, self.ttl_cap_ms, private)
        if bounded is not None:
            view = bounded
        if view is result:
            return line
        return jsonrpc.result_response(value.get("id"), view)

    def learn(self, tools: list[Any]) -> None:
        """Keep the ``x-mcp-header`` annotations of a tools/list's tools."""
        known = self.param_headers
        for tool in tools:
            if isinstance(tool, dict) and isinstance(tool.get("name"), str):
                if len(known) >= MAX_LEARNT_TOOLS and tool["name"] not in known:
                    known.clear()
                known[tool["name"]] = param_headers_of(tool.get("inputSchema"))
