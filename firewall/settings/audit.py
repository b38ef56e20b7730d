"""Audit trail settings: the ``[audit]`` table of the gateway configuration.

Every field has a default, so an empty ``[audit]`` table (or none at all) gives
a working, durable, signed trail in ``mcpwall-audit.db``. Relative paths other
than ``path`` itself are resolved against the database's directory, so the key
files and the anchor travel with the database unless you point them elsewhere
(which you should, for the anchor: see docs/audit.md).

Example (TOML)::

    [audit]
    path = "/var/lib/mcpwall/audit.db"
    mode = "durable"
    checkpoint_every_rows = 1000
    anchor_path = "/var/log/mcpwall/audit.anchor"
    [audit.redaction]
    names = ["*password*", "*token*"]
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import msgspec

# Argument names whose values are always redacted (fnmatch globs, case-insensitive).
DEFAULT_REDACT_NAMES: tuple[str, ...] = (
    "*password*", "*passwd*", "*passphrase*", "*secret*", "*token*", "*api_key*",
    "*apikey*", "*api-key*", "authorization", "*credential*", "*private_key*",
    "*privatekey*", "cookie", "set-cookie", "*session_key*",
)

# Value patterns redacted wherever they appear inside a string (Python regexes).
DEFAULT_REDACT_VALUES: tuple[str, ...] = (
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
    r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\b",  # JWT
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",  # AWS access key id
    r"\bgh[pousr]_[A-Za-z0-9]{30,}\b",  # GitHub tokens
    r"\bgithub_pat_[A-Za-z0-9_]{40,}\b",
    r"\bxox[abprs]-[A-Za-z0-9-]{10,}\b",  # Slack
    r"\bsk-[A-Za-z0-9_-]{20,}\b",  # OpenAI / Anthropic style secret keys
    r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{8,}",
    r"(?i)\b(?:password|passwd|pwd)=[^\s&;]+",
)


class RedactionSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Which argument values are replaced by a keyed hash before they are stored."""

    names: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_REDACT_NAMES))
    values: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_REDACT_VALUES))
    # The HMAC key for the replacement hashes: an environment variable holding
    # it (hex), else a file; generated (0600) beside the database when absent.
    key_env: str = ""
    key_file: str = ""


class AuditSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Where and how the audit trail is written."""

    path: str = "mcpwall-audit.db"
    # durable: a call is forwarded only after its decision event is committed
    # with fsync. fast: appends return at once; commits follow asynchronously.
    mode: Literal["durable", "fast"] = "durable"
    # Events queued and not yet committed; callers wait when it is full.
    queue_size: int = 10_000
    # At most this many events in one transaction (group commit).
    max_batch: int = 5_000
    checkpoint_every_rows: int = 10_000
    checkpoint_every_seconds: float = 60.0
    checkpoint_algorithm: Literal["hmac-sha256", "ed25519"] = "hmac-sha256"
    # HMAC: hex key in this environment variable, else this file (hex).
    # Ed25519: this file holds the PEM private key; the public key is written
    # beside it with the suffix ".pub". Default file: <database>.key.
    checkpoint_key_env: str = ""
    checkpoint_key_file: str = ""
    # The external anchor: every checkpoint is also appended to this file
    # (default <database>.anchor) and, with anchor_log, logged.
    anchor_path: str = ""
    anchor_log: bool = True
    redaction: RedactionSettings = msgspec.field(default_factory=RedactionSettings)
    # Who writes the file: a child process (the trio thread only encodes
    # events, the child builds rows, inserts and commits on another core) or a
    # thread of the gateway process (one GIL for both sides). "auto": the
    # process for `serve`, the thread for `wrap` (one client's session, where
    # starting a second interpreter would only delay the first answer).
    writer: Literal["auto", "process", "thread"] = "auto"
    # The derived tables (full-text index of arguments, session, principal and
    # outcome lookups) are filled when the writer has nothing to commit or in
    # steps after a commit (at most half this many rows); when this many rows
    # wait for them, each commit indexes as many rows as it appends. Queries
    # always cover the rows not indexed yet. 0: index in every commit.
    fts_max_lag: int = 40_000
    # Segment rotation; 0 disables. The chain continues across segments.
    segment_max_bytes: int = 0
    segment_max_age_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.queue_size < 1:
            raise ValueError("queue_size: expected a positive number")
        if self.max_batch < 1:
            raise ValueError("max_batch: expected a positive number")
        if self.checkpoint_every_rows < 1:
            raise ValueError("checkpoint_every_rows: expected a positive number")
        if self.fts_max_lag < 0:
            raise ValueError("fts_max_lag: expected zero or a positive number")
        if self.checkpoint_every_seconds <= 0:
            raise ValueError("checkpoint_every_seconds: expected a positive number")

    # -- derived paths ---------------------------------------------------
    def database(self) -> Path:
        """The active database file."""
        return Path(self.path)

    def _beside(self, value: str, suffix: str) -> Path:
        db = self.database()
        if not value:
            return db.with_name(db.name + suffix)
        p = Path(value)
        return p if p.is_absolute() else db.parent / p

    def anchor(self) -> Path:
        """The external anchor file."""
        return self._beside(self.anchor_path, ".anchor")

    def checkpoint_key(self) -> Path:
        """The checkpoint key file (HMAC secret or Ed25519 private key)."""
        return self._beside(self.checkpoint_key_file, ".key")

    def redaction_key(self) -> Path:
        """The redaction key file."""
        return self._beside(self.redaction.key_file, ".redaction-key")
