"""The sans-IO rules of gateway.http.connection_limits: deadlines, the gate, the reserve."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from firewall.gateway.http.connection_limits import (
    Admission,
    Gate,
    Limits,
    Phase,
    deadline,
    fit_to_open_files,
    reserve_request,
)

LIMITS = Limits(head_timeout=10, body_timeout=30, body_min_rate=1000, keep_alive=75,
                max_connections=2, reserve=1)


def test_each_phase_has_its_deadline() -> None:
    assert deadline(LIMITS, Phase.HEAD, 100, 0) == 110
    assert deadline(LIMITS, Phase.IDLE, 100, 0) == 175
    assert deadline(LIMITS, Phase.BUSY, 100, 0) == math.inf
    # A body keeps its deadline ahead of it as long as it keeps the pace.
    assert deadline(LIMITS, Phase.BODY, 100, 0) == 130
    assert deadline(LIMITS, Phase.BODY, 100, 50_000) == 180


@given(st.integers(min_value=0, max_value=10**9))
def test_a_body_at_the_minimum_pace_is_never_cut(seconds: int) -> None:
    # At body_min_rate bytes a second, the deadline stays body_timeout ahead.
    received = seconds * LIMITS.body_min_rate
    assert deadline(LIMITS, Phase.BODY, 0, received) == seconds + LIMITS.body_timeout


def test_the_gate_serves_then_reserves_then_refuses_and_slots_come_back() -> None:
    gate = Gate(LIMITS)
    got = [gate.admit() for _ in range(4)]
    assert got == [Admission.SERVE, Admission.SERVE, Admission.RESERVE, Admission.REFUSE]
    assert gate.report() == {"open": 2, "max": 2, "reserve_open": 1, "refused": 1}
    gate.release(Admission.SERVE)
    gate.release(Admission.RESERVE)
    assert gate.admit() is Admission.SERVE and gate.admit() is Admission.RESERVE


def test_the_reserve_answers_health_only() -> None:
    assert reserve_request(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n") == b"GET"
    assert reserve_request(b"HEAD /healthz/?x=1 HTTP/1.0\r\n\r\n") == b"HEAD"
    assert reserve_request(b"GET /healthz HTTP/1.1\r\nHost: x\r\n") is None  # not all here
    assert reserve_request(b"POST /healthz HTTP/1.1\r\n\r\n") == b""
    assert reserve_request(b"GET /servers/vm/mcp HTTP/1.1\r\n\r\n") == b""
    assert reserve_request(b"GET /healthz HTTP/1.1\r\n" + b"X: y\r\n" * 2000) == b""


def test_a_cap_is_lowered_to_fit_the_open_files_limit() -> None:
    assert fit_to_open_files(1024, 400, 100_000) == 1024
    assert fit_to_open_files(1024, 400, 1024) == 624
    assert fit_to_open_files(1024, 4000, 1024) == 1
