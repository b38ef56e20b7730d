"""The 2026-07-28 revision's rules, sans-IO (firewall/protocol/revision.py)."""

from __future__ import annotations

import base64
import re
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from firewall.protocol import revision

META = {revision.META_VERSION: "2026-07-28", revision.META_CAPABILITIES: {}}
HEADERS = {"mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": "vm"}
REGION = (revision.ParamHeader(("region",), "Region", "string"),
          revision.ParamHeader(("limits", "n"), "N", "integer"))


def _params(**arguments: Any) -> dict[str, Any]:
    return {"name": "vm", "arguments": arguments, "_meta": META}


@given(st.text())
def test_header_values_round_trip_through_the_sentinel(value: str) -> None:
    encoded = revision.encode_value(value)
    assert encoded.isascii() and "\n" not in encoded
    assert revision.decode_value(encoded) == value


@given(st.one_of(st.text(), st.text(alphabet="=?base64YQ+/ \x7f\t").map(lambda t: "=?" + t),
                 st.binary().map(lambda b: f"=?base64?{base64.b64encode(b).decode()}?=")))
def test_header_values_as_the_sentinel_rules_define_them(value: str) -> None:
    # The definitions by regular expression (the functions test bytes first).
    safe = re.fullmatch(r"[\x20-\x7E]*", value) is not None
    sentinel = re.fullmatch(r"=\?base64\?([A-Za-z0-9+/]*={0,2})\?=", value)
    plain = safe and value == value.strip() and sentinel is None
    assert (revision.encode_value(value) == value) is plain
    if sentinel is None:
        assert revision.decode_value(value) == value
    else:
        assert revision.decode_value(value) != value or sentinel.group(1) == ""


def test_a_malformed_sentinel_never_matches() -> None:
    assert revision.decode_value("=?base64?not base64?=") == "=?base64?not base64?="  # no sentinel
    assert revision.decode_value("=?base64?Zm9v=?=") is None  # not canonical
    assert revision.decode_value("=?base64?Zm9v?=") == "foo"


def test_the_ladder_first_failure_wins() -> None:
    ok = revision.check_modern(HEADERS, "tools/call", _params(), None)
    assert ok is None
    no_meta = revision.check_modern(HEADERS, "tools/call", {"name": "vm"}, None)
    assert no_meta is not None and no_meta.code == -32602
    name = revision.check_modern({**HEADERS, "mcp-name": "other"}, "tools/call", _params(), None)
    assert name is not None and name.code == revision.HEADER_MISMATCH
    method = revision.check_modern({**HEADERS, "mcp-method": "tools/list"}, "tools/call",
                                   _params(), None)
    assert method is not None and method.code == revision.HEADER_MISMATCH
    missing = revision.check_modern({k: v for k, v in HEADERS.items() if k != "mcp-name"},
                                    "tools/call", _params(), None)
    assert missing is not None and missing.code == revision.HEADER_MISMATCH
    old = {**META, revision.META_VERSION: "1999-01-01"}
    version = revision.check_modern({**HEADERS, "mcp-protocol-version": "1999-01-01"},
                                    "tools/call", {"name": "vm", "_meta": old}, None)
    assert version is not None and version.code == revision.UNSUPPORTED_PROTOCOL_VERSION
    assert version.data == {"supported": list(revision.SUPPORTED_VERSIONS),
                            "requested": "1999-01-01"}
    removed = revision.check_modern({**HEADERS, "mcp-method": "ping"}, "ping", {"_meta": META},
                                    None)
    assert removed is not None and (removed.code, removed.status) == (-32601, 404)


def test_param_headers_both_absent_or_equal() -> None:
    def check(headers: dict[str, str], **arguments: Any) -> int | None:
        problem = revision.check_modern({**HEADERS, **headers}, "tools/call",
                                        _params(**arguments), REGION)
        return None if problem is None else problem.code

    assert check({}) is None
    assert check({"mcp-param-region": "eu"}, region="eu") is None
    assert check({"mcp-param-region": "=?base64?ZXU=?="}, region="eu") is None
    assert check({}, region="eu") == revision.HEADER_MISMATCH
    assert check({"mcp-param-region": "us"}, region="eu") == revision.HEADER_MISMATCH
    assert check({"mcp-param-region": "eu"}) == revision.HEADER_MISMATCH
    assert check({"mcp-param-n": "42.0"}, limits={"n": 42}) is None  # numerically equal
    assert check({"mcp-param-n": "43"}, limits={"n": 42}) == revision.HEADER_MISMATCH


def test_upstream_headers_are_made_from_the_body_alone() -> None:
    params = _params(region="Zürich", limits={"n": 7})
    params["name"] = " padded "
    made = revision.upstream_headers("2026-07-28", "tools/call", params, REGION)
    assert made == [("mcp-protocol-version", "2026-07-28"), ("mcp-method", "tools/call"),
                    ("mcp-name", revision.encode_value(" padded ")),
                    ("mcp-param-region", revision.encode_value("Zürich")),
                    ("mcp-param-n", "7")]


def test_x_mcp_header_annotations_valid_only_where_statically_reachable() -> None:
    schema = {"type": "object", "properties": {
        "region": {"type": "string", "x-mcp-header": "Region"},
        "limits": {"type": "object", "properties": {
            "n": {"type": "integer", "x-mcp-header": "N"}}}}}
    assert revision.param_headers_of(schema) == REGION
    under_items = {"type": "object", "properties": {"xs": {"type": "array", "items": {
        "type": "string", "x-mcp-header": "X"}}}}
    assert revision.param_headers_of(under_items) is None
    number = {"type": "object", "properties": {"x": {"type": "number", "x-mcp-header": "X"}}}
    assert revision.param_headers_of(number) is None
    twice = {"type": "object", "properties": {
        "a": {"type": "string", "x-mcp-header": "A"}, "b": {"type": "string", "x-mcp-header": "a"}}}
    assert revision.param_headers_of(twice) is None


def test_cache_bounds_and_discover_view() -> None:
    assert revision.bound_cache({"ttlMs": 10, "cacheScope": "public"}, 60_000, False) is None
    assert revision.bound_cache({"ttlMs": 3_600_000, "cacheScope": "public"}, 60_000, True) == {
        "ttlMs": 60_000, "cacheScope": "private"}
    seen = revision.discover_view({"supportedVersions": ["2027-01-01", "2026-07-28"]})
    assert seen == {"supportedVersions": ["2026-07-28"]}


def test_era_of_a_header() -> None:
    assert revision.era_of(None) == "handshake"
    assert revision.era_of("2025-06-18") == "handshake"
    assert revision.era_of(" 2026-07-28 ") == "modern"
    assert revision.era_of("1999-01-01") == "unsupported"
    assert revision.check_handshake({"_meta": META}) is not None
    assert revision.check_handshake({"_meta": {}}) is None


def test_a_header_value_with_invalid_characters_never_matches() -> None:
    """RFC 9110 field values: visible ASCII, space, tab. Anything else (a control
    character Python's ``str.strip`` would drop, a Latin-1 byte) is a mismatch,
    even when the rest equals the body."""
    assert revision.check_modern({**HEADERS, "mcp-name": " \tvm\t "}, "tools/call", _params(),
                                 None) is None
    for bad in ("vm\x0b", "\x1fvm", "vm\x7f", "vm\xa0", "\x00vm"):
        for header in ("mcp-name", "mcp-method", "mcp-protocol-version"):
            value = {"mcp-name": bad, "mcp-method": bad.replace("vm", "tools/call"),
                     "mcp-protocol-version": bad.replace("vm", "2026-07-28")}[header]
            problem = revision.check_modern({**HEADERS, header: value}, "tools/call",
                                            _params(), None)
            assert problem is not None and problem.code == revision.HEADER_MISMATCH, (header, bad)
    named = {**_params(), "name": "\u00e9"}
    assert revision.check_modern({**HEADERS, "mcp-name": "\u00e9"}, "tools/call", named,
                                 None) is not None
    assert revision.check_modern({**HEADERS, "mcp-name": revision.encode_value("\u00e9")},
                                 "tools/call", named, None) is None


def test_integers_compare_as_numbers_exactly() -> None:
    spec = (revision.ParamHeader(("n",), "N", "integer"),)
    for header, ok in (("42", True), ("42.0", True), ("042", True), ("41.99999999999999999", False),
                       ("42.00000000000000001", False), ("4.2e1", False), ("+42", False)):
        problem = revision.check_params({"mcp-param-n": header}, {"n": 42}, spec)
        assert (problem is None) is ok, header


def test_a_metadata_header_sent_twice_is_a_mismatch() -> None:
    for name in ("mcp-name", "mcp-method", "mcp-protocol-version", "mcp-param-region"):
        problem = revision.check_repeated(["accept", name])
        assert problem is not None and problem.code == revision.HEADER_MISMATCH
    assert revision.check_repeated(["accept", "cookie"]) is None
