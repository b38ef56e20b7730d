"""The stdio line framing: any chunking gives the same lines; memory stays bounded."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from firewall.protocol.framing import TOO_LONG, LineSplitter


def split_all(data: bytes, cuts: list[int], cap: int) -> list[bytes]:
    s = LineSplitter(cap)
    out: list[bytes] = []
    prev = 0
    for cut in sorted(c % (len(data) + 1) for c in cuts):
        out += s.feed(data[prev:cut])
        prev = cut
    out += s.feed(data[prev:])
    rest = s.remainder()
    return out + ([rest] if rest else [])


lines = st.lists(st.binary(min_size=1, max_size=40).filter(
    lambda b: b"\n" not in b and b.strip() != b"" and not b.endswith(b"\r")), max_size=10)


@given(lines, st.lists(st.integers(min_value=0), max_size=8))
def test_any_chunking_gives_the_same_lines(msgs: list[bytes], cuts: list[int]) -> None:
    data = b"".join(m + b"\n" for m in msgs)
    assert split_all(data, cuts, 1000) == msgs


@given(lines, st.lists(st.integers(min_value=0), max_size=8), st.integers(1, 30))
def test_long_lines_are_reported_once_and_not_buffered(
    msgs: list[bytes], cuts: list[int], cap: int
) -> None:
    data = b"".join(m + b"\n" for m in msgs)
    expected = [m if len(m) <= cap else TOO_LONG for m in msgs]
    got = split_all(data, cuts, cap)
    assert got == expected
    assert all(g is TOO_LONG for g, m in zip(got, msgs, strict=True) if len(m) > cap)


def test_buffer_stays_bounded() -> None:
    s = LineSplitter(100)
    for _ in range(1000):
        assert s.feed(b"x" * 1000) in ([TOO_LONG], [])
        assert s.buffered <= 100
    assert s.feed(b"\nok\n") == [b"ok"]


def test_crlf_and_blank_lines() -> None:
    assert LineSplitter(10).feed(b"a\r\n\n  \nb\n") == [b"a", b"b"]
