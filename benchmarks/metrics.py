"""Result arithmetic for the comparison benchmark: percentiles, medians, ratios, tables."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0 < q <= 100) of ``values``."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 < q <= 100:
        raise ValueError(f"percentile must be in (0, 100], not {q}")
    ordered = sorted(values)
    # round() first: 99.9 / 100 * 1000 is 999.0000000000001 in floating point.
    rank = math.ceil(round(q / 100 * len(ordered), 9))
    return ordered[max(0, rank - 1)]


def latency_summary(latencies: Sequence[float]) -> dict[str, float]:
    """p50 / p99 / p99.9 in milliseconds of latencies given in seconds."""
    return {f"p{q:g}": percentile(latencies, q) * 1000 for q in (50, 99, 99.9)}


def median_or_none(values: Sequence[float | None]) -> float | None:
    """The median of the values that are present, or None if none are."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def ratio(value: float | None, base: float | None) -> float | None:
    """value / base, or None when either is missing or the base is zero."""
    if value is None or base is None or base == 0:
        return None
    return value / base


def fmt(value: float | None, spec: str = ",.0f", suffix: str = "") -> str:
    """A table cell: the formatted value, or a dash when it is missing."""
    return "-" if value is None else f"{value:{spec}}{suffix}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table, numbers right-aligned (every column after the first)."""
    lines = ["| " + " | ".join(header) + " |",
             "|" + "---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
