"""Prometheus metrics, derived from the audit events the mediator already emits.

:class:`ObservedAudit` sits between the gateway and the audit writer: each
event appended is counted (and published to the operators' live feed) after
it is handed to the writer, so the hot path gains one call and a few dict
updates, and no code in the mediator knows about metrics. Rules:

1. An event is counted when it is handed to the trail (a trail that fails
   stops the gateway's forwarding anyway). Counters only grow while the
   process lives; gauges (audit queue depth, pending approvals, sessions,
   kill switches) are read at scrape time.
2. The exposition is Prometheus text format 0.0.4, written by hand (a test
   parses it with ``prometheus_client``'s parser); label values are escaped.
3. Latency is the outcome event's ``latency_ns`` (decision to answer, upstream
   time included), in a histogram per server.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Coroutine, Iterable
from typing import Any, Final

import msgspec

from firewall.audit.events import (
    AuditPoint,
    DecisionEvent,
    Event,
    LifecycleEvent,
    OutcomeEvent,
    Receipt,
)
from firewall.gateway.operator.feed import Feed

BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                  10.0, 30.0, 60.0, 300.0)
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"


class Histogram:
    """Bucket counts, sum and count of one label set."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, value)] += 1
        self.sum += value


class Metrics:
    """The counters of one process."""

    def __init__(self) -> None:
        self.calls: defaultdict[tuple[str, str, str, str], int] = defaultdict(int)
        self.outcomes: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.latency: defaultdict[str, Histogram] = defaultdict(Histogram)
        self.limited: defaultdict[str, int] = defaultdict(int)
        self.restarts: defaultdict[str, int] = defaultdict(int)
        self.lifecycle: defaultdict[str, int] = defaultdict(int)

    def observe(self, event: Event) -> None:
        """Count one audit event."""
        if type(event) is DecisionEvent:
            self.calls[(event.server, event.method, event.tool or "", event.decision)] += 1
            if event.decision == "limited":
                self.limited[event.server] += 1
        elif type(event) is OutcomeEvent:
            self.outcomes[(event.server, event.status)] += 1
            self.latency[event.server].observe(event.latency_ns / 1e9)
        elif type(event) is LifecycleEvent:
            self.lifecycle[event.kind] += 1
            if event.kind == "upstream_restart":
                self.restarts[event.server or ""] += 1


class Gauges(msgspec.Struct, kw_only=True):
    """What a scrape reads from the live process."""

    audit_queue_depth: int | None = None
    approvals_pending: int | None = None
    sessions: dict[str, int] = msgspec.field(default_factory=dict)
    kill_switches: int = 0


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def _labels(names: Iterable[str], values: Iterable[str]) -> str:
    pairs = ",".join(f'{n}="{_label(v)}"' for n, v in zip(names, values, strict=True))
    return "{" + pairs + "}" if pairs else ""


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def _family(out: list[str], name: str, kind: str, help_text: str,
            samples: Iterable[tuple[str, float]]) -> None:
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} {kind}")
    out.extend(f"{name}{labels} {_number(value)}" for labels, value in samples)


def exposition(metrics: Metrics, gauges: Gauges) -> bytes:
    """The Prometheus text exposition of ``metrics`` and ``gauges``."""
    out: list[str] = []
    _family(out, "mcpwall_calls_total", "counter",
            "Requests decided, by server, method, tool and decision.",
            ((_labels(("server", "method", "tool", "decision"), key), n)
             for key, n in sorted(metrics.calls.items())))
    _family(out, "mcpwall_outcomes_total", "counter",
            "Forwarded requests answered, by server and outcome status.",
            ((_labels(("server", "status"), key), n)
             for key, n in sorted(metrics.outcomes.items())))
    out.append("# HELP mcpwall_call_latency_seconds Decision to answer, per server.")
    out.append("# TYPE mcpwall_call_latency_seconds histogram")
    for server, hist in sorted(metrics.latency.items()):
        running = 0
        for bound, count in zip([*BUCKETS, float("inf")], hist.counts, strict=True):
            running += count
            le = "+Inf" if bound == float("inf") else repr(bound)
            out.append(f"mcpwall_call_latency_seconds_bucket"
                       f"{_labels(('server', 'le'), (server, le))} {running}")
        out.append(f"mcpwall_call_latency_seconds_sum{_labels(('server',), (server,))} "
                   f"{hist.sum!r}")
        out.append(f"mcpwall_call_latency_seconds_count{_labels(('server',), (server,))} "
                   f"{running}")
    _family(out, "mcpwall_rate_limited_total", "counter",
            "Requests refused by a rate limit, per server.",
            ((_labels(("server",), (k,)), n) for k, n in sorted(metrics.limited.items())))
    _family(out, "mcpwall_upstream_restarts_total", "counter",
            "Upstream child processes restarted after they exited, per server.",
            ((_labels(("server",), (k,)), n) for k, n in sorted(metrics.restarts.items())))
    _family(out, "mcpwall_lifecycle_events_total", "counter",
            "Lifecycle events (sessions, policy reloads, approvals, kill switch), by kind.",
            ((_labels(("kind",), (k,)), n) for k, n in sorted(metrics.lifecycle.items())))
    _gauges(out, gauges)
    return ("\n".join(out) + "\n").encode()


def _gauges(out: list[str], gauges: Gauges) -> None:
    if gauges.audit_queue_depth is not None:
        _family(out, "mcpwall_audit_queue_depth", "gauge",
                "Audit events appended and not yet committed.",
                [("", gauges.audit_queue_depth)])
    if gauges.approvals_pending is not None:
        _family(out, "mcpwall_approvals_pending", "gauge",
                "Calls held for approval and not decided yet (in the approvals database).",
                [("", gauges.approvals_pending)])
    _family(out, "mcpwall_sessions", "gauge", "Open client sessions, per server.",
            ((_labels(("server",), (k,)), n) for k, n in sorted(gauges.sessions.items())))
    _family(out, "mcpwall_kill_switches", "gauge", "Kill switches that are on.",
            [("", gauges.kill_switches)])


class ObservedAudit:
    """An audit point that counts each event, and publishes it to the live feed."""

    __slots__ = ("feed", "inner", "metrics")

    def __init__(self, inner: AuditPoint, metrics: Metrics, feed: Feed) -> None:
        self.inner = inner
        self.metrics = metrics
        self.feed = feed

    def append(self, event: Event) -> Coroutine[Any, Any, Receipt]:
        """Count the event, then hand it to the trail (the caller awaits the trail's append).

        Not a coroutine itself: returning the trail's awaitable saves a
        coroutine frame per event on the hot path.
        """
        self.metrics.observe(event)
        if self.feed.readers:
            _publish(self.feed, event)
        return self.inner.append(event)


def _publish(feed: Feed, event: Event) -> None:
    if type(event) is DecisionEvent:
        feed.publish("decision", decision_entry(event))
    elif type(event) is LifecycleEvent and event.kind in ("approval", "kill_switch"):
        feed.publish(event.kind, {"ts_ns": event.ts_ns, "server": event.server,
                                  **event.detail})


def decision_entry(event: DecisionEvent) -> dict[str, Any]:
    """What the feed says about a decision (no arguments: they are not redacted here)."""
    return {"ts_ns": event.ts_ns, "call_id": event.call_id, "session": event.session,
            "principal": event.principal, "server": event.server, "method": event.method,
            "tool": event.tool or event.uri or event.prompt, "decision": event.decision,
            "rule": event.rule, "reason": event.reason}


__all__ = ["CONTENT_TYPE", "Gauges", "Metrics", "ObservedAudit", "exposition"]
