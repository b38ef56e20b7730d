"""Signed checkpoints and the external anchor.

A checkpoint signs the head of the chain: ``(chain, segment, seq, hash, ts_ns)``.
It is written in the database (``checkpoints`` table) and appended, as one JSON
line, to the anchor file outside it (and logged as ``audit_checkpoint``). The
hash chain alone shows an edited row; a signed checkpoint also shows a chain
that was recomputed after an edit; the anchor also shows a tail that was cut
off together with its checkpoints.

Keys: HMAC-SHA256 (a 32-byte secret, hex in a file or environment variable) or
Ed25519 (a PEM private key; verifiers need only the ``.pub`` file beside it).
A missing key file is generated with mode 0600.

Example::

    signer = load_signer(settings)
    cp = Checkpoint.sign(signer, chain="c1", segment=1, seq=10, hash=h, ts_ns=now)
    Anchor(settings.anchor()).append(cp, fsync=True)
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Protocol

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from firewall.audit.chain import FORMAT
from firewall.settings.audit import AuditSettings


class AuditKeyError(Exception):
    """A key that cannot be read or used; the message names its source."""


class Checkpoint(msgspec.Struct, frozen=True, kw_only=True):
    """A signed chain head, as stored in the database and in the anchor."""

    chain: str
    segment: int
    seq: int
    hash: str
    ts_ns: int
    algorithm: str
    key_id: str
    signature: str

    def message(self) -> bytes:
        """The bytes that are signed."""
        return checkpoint_message(self.chain, self.segment, self.seq, self.hash, self.ts_ns)

    @classmethod
    def sign(cls, signer: Signer, *, chain: str, segment: int, seq: int, hash: str,
             ts_ns: int) -> Checkpoint:
        """Sign a chain head."""
        sig = signer.sign(checkpoint_message(chain, segment, seq, hash, ts_ns))
        return cls(chain=chain, segment=segment, seq=seq, hash=hash, ts_ns=ts_ns,
                   algorithm=signer.algorithm, key_id=signer.key_id, signature=sig)


def checkpoint_message(chain: str, segment: int, seq: int, hash: str, ts_ns: int) -> bytes:
    """Canonical checkpoint bytes: a compact JSON array."""
    return msgspec.json.encode([FORMAT, "checkpoint", chain, segment, seq, hash, ts_ns])


class Signer(Protocol):
    """Signs checkpoints."""

    algorithm: str
    key_id: str

    def sign(self, message: bytes) -> str:
        """Hex signature of ``message``."""
        ...


class Verifier(Protocol):
    """Checks checkpoint signatures."""

    algorithm: str
    key_id: str

    def verify(self, message: bytes, signature: str) -> bool:
        """True if ``signature`` (hex) signs ``message``."""
        ...


class HmacKey:
    """HMAC-SHA256: signs and verifies with the same secret."""

    algorithm = "hmac-sha256"

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self.key_id = hashlib.sha256(b"mcpwall-key-id" + secret).hexdigest()[:16]

    def sign(self, message: bytes) -> str:
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def verify(self, message: bytes, signature: str) -> bool:
        return hmac.compare_digest(self.sign(message), signature)


class Ed25519Signer:
    """Ed25519 private key."""

    algorithm = "ed25519"

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.public = Ed25519PublicVerifier(key.public_key())
        self.key_id = self.public.key_id

    def sign(self, message: bytes) -> str:
        return self._key.sign(message).hex()


class Ed25519PublicVerifier:
    """Ed25519 public key: verifies only."""

    algorithm = "ed25519"

    def __init__(self, key: Ed25519PublicKey) -> None:
        self._key = key
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.key_id = hashlib.sha256(raw).hexdigest()[:16]

    def verify(self, message: bytes, signature: str) -> bool:
        try:
            self._key.verify(bytes.fromhex(signature), message)
        except (InvalidSignature, ValueError):
            return False
        return True


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def secret_key(env: str, path: Path, *, create: bool) -> bytes:
    """A hex secret from ``env`` (if named and set) or ``path`` (generated if asked)."""
    if env:
        value = os.environ.get(env)
        if value is None:
            raise AuditKeyError(f"environment variable {env} (the audit key) is not set")
        try:
            return bytes.fromhex(value.strip())
        except ValueError:
            raise AuditKeyError(f"environment variable {env}: expected a hex key") from None
    if not path.exists():
        if not create:
            raise AuditKeyError(f"{path}: no such key file")
        _write_private(path, secrets.token_hex(32).encode() + b"\n")
    try:
        return bytes.fromhex(path.read_text().strip())
    except ValueError:
        raise AuditKeyError(f"{path}: expected a hex key") from None
    except OSError as exc:
        raise AuditKeyError(f"{path}: cannot read: {exc.strerror}") from None


def load_signer(settings: AuditSettings) -> HmacKey | Ed25519Signer:
    """The checkpoint signer the settings name, generating a key file if needed."""
    path = settings.checkpoint_key()
    if settings.checkpoint_algorithm == "hmac-sha256":
        return HmacKey(secret_key(settings.checkpoint_key_env, path, create=True))
    if not path.exists():
        key = Ed25519PrivateKey.generate()
        _write_private(path, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        pub = path.with_name(path.name + ".pub")
        pub.write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise AuditKeyError(f"{path}: not a readable Ed25519 private key ({exc})") from None
    if not isinstance(loaded, Ed25519PrivateKey):
        raise AuditKeyError(f"{path}: not an Ed25519 private key")
    return Ed25519Signer(loaded)


def load_verifier(path: Path) -> HmacKey | Ed25519PublicVerifier:
    """A verifier from a key file: hex HMAC secret, Ed25519 PEM public or private key."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AuditKeyError(f"{path}: cannot read: {exc.strerror}") from None
    if data.startswith(b"-----BEGIN"):
        try:
            if b"PRIVATE" in data.split(b"\n", 1)[0]:
                priv = serialization.load_pem_private_key(data, password=None)
                if isinstance(priv, Ed25519PrivateKey):
                    return Ed25519PublicVerifier(priv.public_key())
            else:
                pub = serialization.load_pem_public_key(data)
                if isinstance(pub, Ed25519PublicKey):
                    return Ed25519PublicVerifier(pub)
        except (ValueError, TypeError) as exc:
            raise AuditKeyError(f"{path}: not a readable key ({exc})") from None
        raise AuditKeyError(f"{path}: not an Ed25519 key")
    try:
        return HmacKey(bytes.fromhex(data.decode().strip()))
    except (ValueError, UnicodeDecodeError):
        raise AuditKeyError(f"{path}: expected a hex HMAC key or a PEM Ed25519 key") from None


_anchor_decoder = msgspec.json.Decoder(Checkpoint)


class Anchor:
    """An append-only file of checkpoints, one JSON line each."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, checkpoint: Checkpoint, *, fsync: bool) -> None:
        """Append one checkpoint line (and fsync it in durable mode)."""
        line = msgspec.json.encode(checkpoint) + b"\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def read(self) -> tuple[list[Checkpoint], list[str]]:
        """All checkpoints, and a problem for each unreadable line (a torn last
        line after a crash is not a problem)."""
        if not self.path.exists():
            return [], []
        lines = self.path.read_bytes().split(b"\n")
        out: list[Checkpoint] = []
        problems: list[str] = []
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                out.append(_anchor_decoder.decode(line))
            except (msgspec.DecodeError, UnicodeDecodeError) as exc:
                if i == len(lines):  # torn final write, no newline yet
                    continue
                problems.append(f"{self.path}:{i}: unreadable anchor line ({exc})")
        return out, problems
