"""Bearer tokens: digests only, constant-time comparison, Caller mapping."""

from __future__ import annotations

import hashlib

import msgspec
import pytest

from firewall.identity import (
    IdentityError,
    TokenEntry,
    TokenTable,
    bearer_token,
    hash_token,
    new_token,
)
from firewall.policy.decision import Caller


def test_hash_token_is_sha256_hex() -> None:
    assert hash_token("abc") == hashlib.sha256(b"abc").hexdigest()


def test_authenticate_maps_token_to_caller() -> None:
    table = TokenTable(
        [
            TokenEntry(sha256=hash_token("t-one"), principal="agent-a", grant="g1", groups=["ops"]),
            TokenEntry(sha256=hash_token("t-two"), principal="agent-a", grant="g2"),
        ]
    )
    assert table.enabled and len(table) == 2
    assert table.authenticate("t-one") == Caller("agent-a", "g1", ("ops",))
    assert table.authenticate("t-two") == Caller("agent-a", "g2", ())
    assert table.authenticate("t-three") is None
    assert table.authenticate(None) is None
    assert table.authenticate("") is None


def test_grant_defaults_to_digest_prefix() -> None:
    digest = hash_token("x")
    entry = TokenEntry(sha256=digest, principal="p")
    assert entry.caller().grant == f"sha256:{digest[:12]}"


def test_empty_table_is_disabled() -> None:
    assert not TokenTable([]).enabled


@pytest.mark.parametrize("bad", ["abc", hash_token("x").upper(), hash_token("x") + "0", "z" * 64])
def test_bad_digest_is_refused(bad: str) -> None:
    with pytest.raises(IdentityError, match=r"auth.tokens\[0\].sha256"):
        TokenTable([TokenEntry(sha256=bad, principal="p")])


def test_duplicate_digest_is_refused() -> None:
    d = hash_token("x")
    with pytest.raises(IdentityError, match="twice"):
        TokenTable([TokenEntry(sha256=d, principal="a"), TokenEntry(sha256=d, principal="b")])


def test_token_entry_forbids_unknown_keys() -> None:
    with pytest.raises(msgspec.ValidationError, match="token"):
        msgspec.convert({"sha256": hash_token("x"), "principal": "p", "token": "x"}, TokenEntry)


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


def test_new_token_is_random_and_long() -> None:
    a, b = new_token(), new_token()
    assert a != b and len(a) >= 40
