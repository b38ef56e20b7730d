"""What a request says about its client: the protocol revision, the client's
capabilities and its clientInfo (sans-IO).

MCP 2025 says it once per session, in ``initialize``; MCP 2026-07-28 has no
``initialize`` and says it in every request's ``params._meta``
(``io.modelcontextprotocol/protocolVersion``, ``.../clientCapabilities``,
``.../clientInfo``). Rules this module keeps:

1. A request is of the 2026-07-28 era exactly when its ``params._meta``
   carries the protocol version key (what the spec and the SDKs go by: a bare
   ``_meta`` is no evidence, 2025 requests carry ``progressToken`` there).
   An ``initialize`` request is of the 2025 era whatever its ``_meta``.
2. What is read is read from the value the policy saw (the Inbound's one
   decoded value); nothing here decodes bytes.
3. What reaches the audit trail is bounded: a version is at most
   :data:`MAX_VERSION` characters; clientInfo and capabilities at most
   :data:`MAX_INFO_BYTES` and :data:`MAX_CAPABILITIES_BYTES` once encoded,
   else they are replaced by ``{"truncated": N}`` (N: the encoded size) plus,
   for capabilities, the names of their members (at most 32).
4. Nothing here says who the caller is: identity comes from authentication
   only. clientInfo is what the client claims about itself, recorded as such.

Example::

    meta = of_params({"_meta": {VERSION_KEY: "2026-07-28",
                                INFO_KEY: {"name": "cli", "version": "1"}}})
    assert meta.modern and meta.version == "2026-07-28"
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from firewall.protocol.mcp import PROTOCOL_VERSIONS

VERSION_KEY: Final = "io.modelcontextprotocol/protocolVersion"
CAPABILITIES_KEY: Final = "io.modelcontextprotocol/clientCapabilities"
INFO_KEY: Final = "io.modelcontextprotocol/clientInfo"
# 2026-07-28: the lowest level of the log messages a request wants (none: no
# ``notifications/message`` for it); the levels low to high (RFC 5424 order).
LOG_LEVEL_KEY: Final = "io.modelcontextprotocol/logLevel"
LOG_LEVELS: Final = ("debug", "info", "notice", "warning", "error", "critical", "alert",
                     "emergency")

# The revisions of the stateless era mcpwall mediates (newest first).
MODERN_VERSIONS: Final = ("2026-07-28",)
# The error a request of a revision mcpwall does not mediate gets (2026-07-28).
UNSUPPORTED_PROTOCOL_VERSION: Final = -32022

MAX_VERSION: Final = 64
MAX_INFO_BYTES: Final = 1024
MAX_CAPABILITIES_BYTES: Final = 4096
_MAX_NAMES: Final = 32
_encoder: Final = msgspec.json.Encoder()


class ClientMeta(msgspec.Struct, frozen=True, gc=False):
    """The protocol revision, capabilities and clientInfo one request goes by.

    ``modern``: the request carried the 2026-07-28 envelope (rule 1);
    ``version`` is then what it claimed (any JSON value, as found), else the
    version of the session's ``initialize`` (None before one).
    """

    modern: bool = False
    version: Any = None
    capabilities: Any = None
    info: Any = None

    def elicits(self) -> bool:
        """Whether these capabilities offer elicitation in forms (an empty
        object means forms, as in 2025-06-18)."""
        caps = self.capabilities
        if type(caps) is not dict:
            return False
        elicitation = caps.get("elicitation")
        if type(elicitation) is not dict:
            return False
        return not elicitation or "form" in elicitation

    def supported(self) -> bool:
        """For a modern request: whether mcpwall mediates its revision."""
        return self.version in MODERN_VERSIONS


LEGACY: Final = ClientMeta()


def of_params(params: Any) -> ClientMeta:
    """The meta of a request whose decoded params are ``params`` (rule 1); for
    a 2025-era request, :data:`LEGACY` (the session's own meta applies)."""
    if type(params) is not dict:
        return LEGACY
    meta = params.get("_meta")
    if type(meta) is not dict or VERSION_KEY not in meta:
        return LEGACY
    return ClientMeta(True, meta[VERSION_KEY], meta.get(CAPABILITIES_KEY),
                      meta.get(INFO_KEY))


def of_initialize(params: Any) -> ClientMeta:
    """What a 2025 ``initialize`` request says (``protocolVersion``,
    ``capabilities``, ``clientInfo``), for the rest of its session."""
    if type(params) is not dict:
        return LEGACY
    return ClientMeta(False, params.get("protocolVersion"), params.get("capabilities"),
                      params.get("clientInfo"))


def log_level(params: Any) -> int | None:
    """The rank in :data:`LOG_LEVELS` of the level a 2026-07-28 request's
    ``_meta`` asks its log messages at; None when it asks none (or names no level).

    ``log_level({"_meta": {LOG_LEVEL_KEY: "warning"}})`` is 3."""
    meta = params.get("_meta") if type(params) is dict else None
    level = meta.get(LOG_LEVEL_KEY) if type(meta) is dict else None
    return LOG_LEVELS.index(level) if level in LOG_LEVELS else None


def message_level(params: Any) -> int | None:
    """The rank of a ``notifications/message``'s ``level``; None if it names none."""
    level = params.get("level") if type(params) is dict else None
    return LOG_LEVELS.index(level) if level in LOG_LEVELS else None


def audit_version(version: Any) -> str | None:
    """The version as the audit trail keeps it (rule 3): a string, cut to
    :data:`MAX_VERSION`; another JSON value as its encoding, cut the same way."""
    if version is None:
        return None
    text = version if type(version) is str else _encoder.encode(version).decode()
    return text[:MAX_VERSION]


def bounded(value: Any, limit: int) -> Any:
    """``value`` if its encoding fits in ``limit`` bytes, else a stand-in
    saying how large it was (rule 3). None stays None."""
    if value is None:
        return None
    try:
        size = len(_encoder.encode(value))
    except (TypeError, ValueError, OverflowError):  # pragma: no cover - decoded JSON
        return {"truncated": -1}
    if size <= limit:
        return value if type(value) is dict else {"value": value}
    out: dict[str, Any] = {"truncated": size}
    if type(value) is dict:
        out["members"] = sorted(str(k)[:64] for k in value)[:_MAX_NAMES]
    return out


def unsupported_error_data(requested: Any) -> dict[str, Any]:
    """The ``data`` of UnsupportedProtocolVersionError: what mcpwall mediates."""
    data: dict[str, Any] = {"supported": [*MODERN_VERSIONS, *PROTOCOL_VERSIONS]}
    if type(requested) is str:
        data["requested"] = requested[:MAX_VERSION]
    return data
