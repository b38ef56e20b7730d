"""The SSE encoder and incremental parser (firewall.protocol.sse)."""

from __future__ import annotations

import pytest
from httpx2._sse import _SSEParser as ReferenceParser  # the parser the MCP SDK client uses
from hypothesis import given, settings
from hypothesis import strategies as st
from sse_starlette.event import ServerSentEvent as ReferenceEvent

from firewall.protocol.sse import (
    COMMENT_KEEPALIVE,
    Event,
    SSEError,
    SSEParser,
    encode_comment,
    encode_event,
)


def feed_chunks(parser: SSEParser, stream: bytes, cuts: list[int]) -> list[Event]:
    """Feed ``stream`` split at the ``cuts`` offsets; collect every event."""
    events: list[Event] = []
    start = 0
    for cut in [*sorted({c % (len(stream) + 1) for c in cuts}), len(stream)]:
        events.extend(parser.feed(stream[start:cut]))
        start = cut
    return events


# --- examples ------------------------------------------------------------------


def test_single_event_with_every_field() -> None:
    parser = SSEParser()
    events = parser.feed(b'id: 42\nevent: message\nretry: 1500\ndata: {"a":1}\n\n')
    assert events == [Event(data=b'{"a":1}', id="42", event="message", retry=1500)]
    assert parser.last_event_id == "42"
    assert parser.retry == 1500


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_line_endings_and_multiline_data(eol: bytes) -> None:
    stream = eol.join([b"data: first", b"data:second", b"data:  third", b"", b""])
    assert SSEParser().feed(stream) == [Event(data=b"first\nsecond\n third")]


def test_crlf_split_between_cr_and_lf_is_one_line_end() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\n\r") == [Event(data=b"a")]
    # The CR right before is a blank line by itself; the LF after it must not
    # count again as a second blank line (it would dispatch nothing anyway) nor
    # glue to the next field.
    assert parser.feed(b"\ndata: b\r\n\r\n") == [Event(data=b"b")]


def test_comments_and_unknown_fields_are_ignored() -> None:
    stream = b": hello\nfoo: bar\ndata: x\n:another\n\n" + COMMENT_KEEPALIVE
    assert SSEParser().feed(stream) == [Event(data=b"x")]


def test_field_without_colon_has_empty_value() -> None:
    assert SSEParser().feed(b"data\ndata\n\n") == [Event(data=b"\n")]


def test_dataless_block_updates_last_id_but_dispatches_nothing() -> None:
    parser = SSEParser()
    assert parser.feed(b"id: 7\nretry: 10\n\n") == []
    assert parser.last_event_id == "7"
    assert parser.retry == 10
    # The ID is sticky for resumption but not stamped on later events.
    assert parser.feed(b"data: x\n\n") == [Event(data=b"x")]
    assert parser.last_event_id == "7"


def test_keep_dataless_returns_id_and_retry_blocks_for_relaying() -> None:
    parser = SSEParser(keep_dataless=True)
    assert parser.feed(b"id: 7\nretry: 10\n\n:only a comment\n\n") == [
        Event(data=None, id="7", retry=10)
    ]


def test_priming_event_with_empty_data_is_dispatched() -> None:
    # MCP servers send "id + empty data" first so clients can resume.
    assert SSEParser().feed(b"id: p0\ndata:\n\n") == [Event(data=b"", id="p0")]


def test_invalid_retry_and_nul_id_are_ignored() -> None:
    parser = SSEParser()
    assert parser.feed(b"id: a\0b\nretry: 1x\nretry: -1\ndata: x\n\n") == [Event(data=b"x")]
    assert parser.last_event_id is None
    assert parser.retry is None
    # A delay of more than ten digits is no delay anyone means (int() refuses
    # past 4,300 digits): ignored, and the event still comes.
    assert parser.feed(b"retry: " + b"9" * 5000 + b"\ndata: y\n\n") == [Event(data=b"y")]
    assert parser.retry is None


def test_utf8_split_mid_character() -> None:
    stream = encode_event("héllo — ✓".encode(), id="ü", event="é")
    for cut in range(len(stream) + 1):
        parser = SSEParser()
        events = parser.feed(stream[:cut]) + parser.feed(stream[cut:])
        assert events == [Event(data="héllo — ✓".encode(), id="ü", event="é")], cut


def test_bom_is_stripped_even_when_split() -> None:
    stream = b"\xef\xbb\xbfdata: x\n\n"
    for cut in range(len(stream) + 1):
        parser = SSEParser()
        assert parser.feed(stream[:cut]) + parser.feed(stream[cut:]) == [Event(data=b"x")]


def test_bom_only_at_stream_start() -> None:
    assert SSEParser().feed(b"data: a\n\n\xef\xbb\xbfdata: b\n\n") == [Event(data=b"a")]


def test_unterminated_event_is_held_until_blank_line() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: partial") == []
    assert parser.feed(b"\n") == []
    assert parser.feed(b"\n") == [Event(data=b"partial")]


def test_oversized_event_raises() -> None:
    parser = SSEParser(max_event_bytes=100)
    parser.feed(b"data: " + b"x" * 50 + b"\n")
    with pytest.raises(SSEError):
        parser.feed(b"data: " + b"y" * 60 + b"\n")


def test_oversized_unterminated_line_raises() -> None:
    parser = SSEParser(max_event_bytes=100)
    parser.feed(b"data: " + b"x" * 60)
    with pytest.raises(SSEError):
        parser.feed(b"x" * 60)


def test_encode_event_layout() -> None:
    assert encode_event(b'{"id":1}', id="1") == b'id: 1\ndata: {"id":1}\n\n'
    assert encode_event(b"a\nb\r\nc", event="e", retry=5) == (
        b"event: e\nretry: 5\ndata: a\ndata: b\ndata: c\n\n"
    )
    assert encode_event(None, id="9") == b"id: 9\n\n"
    assert encode_event(b"") == b"data: \n\n"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"data": b"x", "id": "a\nb"},
        {"data": b"x", "id": "a\0b"},
        {"data": b"x", "event": "a\rb"},
        {"data": b"x", "retry": -1},
        {"data": None},
    ],
)
def test_encode_event_rejects_what_cannot_be_framed(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        encode_event(**kwargs)  # type: ignore[arg-type]


def test_encode_comment() -> None:
    assert SSEParser().feed(encode_comment("ping") + encode_comment()) == []
    assert encode_comment("ping") == b": ping\n\n"
    with pytest.raises(ValueError):
        encode_comment("a\nb")


# --- properties ------------------------------------------------------------------

_line_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\r\n\0"),
    max_size=20,
)
_events = st.builds(
    Event,
    data=st.one_of(
        st.none(),
        st.lists(
            st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
            max_size=4,
        ).map(b"\n".join),
    ),
    id=st.one_of(st.none(), _line_text),
    event=st.one_of(st.none(), _line_text.filter(bool)),
    retry=st.one_of(st.none(), st.integers(min_value=0, max_value=10**10 - 1)),
).filter(lambda e: any(v is not None for v in (e.data, e.id, e.event, e.retry)))


@settings(deadline=None)  # a noisy shared machine must not fail a parser test
@given(
    events=st.lists(_events, max_size=8),
    comments=st.lists(st.booleans(), max_size=8),
    eol=st.sampled_from([b"\n", b"\r\n", b"\r"]),
    cuts=st.lists(st.integers(min_value=0), max_size=12),
)
def test_round_trip_under_any_chunking(
    events: list[Event], comments: list[bool], eol: bytes, cuts: list[int]
) -> None:
    blocks = []
    for i, event in enumerate(events):
        if i < len(comments) and comments[i]:
            blocks.append(COMMENT_KEEPALIVE)
        blocks.append(encode_event(event.data, event.id, event.event, event.retry))
    stream = b"".join(blocks).replace(b"\n", eol)
    parser = SSEParser(keep_dataless=True)
    assert feed_chunks(parser, stream, cuts) == events
    ids = [e.id for e in events if e.id is not None]
    assert parser.last_event_id == (ids[-1] if ids else None)


@settings(deadline=None)  # a noisy shared machine must not fail a parser test
@given(
    events=st.lists(_events.filter(lambda e: e.data is not None), max_size=6),
    cuts=st.lists(st.integers(min_value=0), max_size=12),
)
def test_parses_what_a_reference_encoder_writes(events: list[Event], cuts: list[int]) -> None:
    # sse-starlette (CRLF separators, str data) as an independent encoder.
    stream = b"".join(
        ReferenceEvent(
            data=(e.data or b"").decode("utf-8", "replace"), id=e.id, event=e.event, retry=e.retry
        ).encode()
        for e in events
    )
    expected = [
        Event(
            data=(e.data or b"").decode("utf-8", "replace").encode(),
            id=e.id,
            event=e.event,
            retry=e.retry,
        )
        for e in events
    ]
    assert feed_chunks(SSEParser(), stream, cuts) == expected


_field_line = st.one_of(
    st.tuples(
        st.sampled_from(["data", "id", "event", "retry", "other", ""]),
        st.sampled_from([":", ": ", ":  ", ""]),
        _line_text,
    ).map("".join),
    st.tuples(st.just("retry: "), st.integers(min_value=0, max_value=99999).map(str)).map("".join),
    st.just(""),
    st.just(": comment"),
)


@settings(deadline=None)  # a noisy shared machine must not fail a parser test
@given(
    lines=st.lists(_field_line, max_size=30),
    eol=st.sampled_from(["\n", "\r\n", "\r"]),
    cuts=st.lists(st.integers(min_value=0), max_size=12),
)
def test_agrees_with_the_mcp_sdk_client_parser(lines: list[str], eol: str, cuts: list[int]) -> None:
    """Differential test against httpx2's decoder on arbitrary field lines."""
    # The closing comment settles a trailing CR for both parsers (the
    # reference's flush() would turn a lone CR into a blank line and dispatch).
    text = "".join(line + eol for line in lines) + ":end\n"
    reference = [(e.data, e.event, e.id, e.retry) for e in ReferenceParser().decode(text)]
    ours = []
    last_id = ""
    for event in feed_chunks(SSEParser(keep_dataless=True), text.encode(), cuts):
        if event.id is not None:
            last_id = event.id
        data = (event.data or b"").decode()
        ours.append((data, event.event or "message", last_id, event.retry))
    assert ours == reference
