"""Redaction in bounded time: an operator's careless value pattern cannot let a
hostile argument stall the audit writer, and a search that gives up redacts the
whole string (a secret is never kept because a search timed out)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firewall.audit.redaction import Redactor, _scoped
from firewall.settings.audit import DEFAULT_REDACT_NAMES, DEFAULT_REDACT_VALUES

KEY = b"k" * 32


@pytest.mark.timeout(20)
def test_a_catastrophic_pattern_and_a_hostile_string_redact_the_whole_string() -> None:
    r = Redactor.compile([], [r"^(a|a)*$"], KEY)
    hostile = "a" * 40 + "!"
    out = r.apply({"q": hostile, "n": 1})
    assert out == {"q": r.token(hostile), "n": 1}
    assert r.timeouts == 1


def test_short_strings_stay_on_re_and_long_ones_take_the_bounded_engine() -> None:
    r = Redactor.compile([], [r"\bsk-\w{20,}"], KEY)
    secret = "sk-" + "x" * 24
    short = f"key {secret} end"
    long = "y " * 400 + secret + " z" * 400
    assert r.apply({"a": short})["a"] == f"key {r.token(secret)} end"
    assert r.apply({"a": long})["a"] == "y " * 400 + r.token(secret) + " z" * 400
    assert r.timeouts == 0


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(["sk-", "AKIA", "Bearer ", "eyJ", "x", " ", ".", "a" * 20,
                                 "0123456789ABCDEF", "-", "_"]), max_size=80),
       st.integers(min_value=0, max_value=600))
def test_the_bounded_path_redacts_exactly_what_re_does(parts: list[str], pad: int) -> None:
    r = Redactor.compile(DEFAULT_REDACT_NAMES, DEFAULT_REDACT_VALUES, KEY)
    text = " " * pad + "".join(parts)
    reference = re.compile("|".join(_scoped(p) for p in DEFAULT_REDACT_VALUES))
    expected = reference.sub(lambda m: r.token(m.group(0)), text)
    assert r.apply({"v": text})["v"] == expected
