"""PNG plots of a comparison report (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

TITLES = {"stdio": "stdio front, stdio upstream",
          "http_stdio": "HTTP front, stdio upstream",
          "http_http": "HTTP front, HTTP upstream"}
COLORS = {"direct": "#888888", "mcpwall": "#1f77b4", "mcpwall policy": "#17becf",
          "peer": "#ff7f0e"}


def _color(name: str) -> str:
    if name == "direct":
        return COLORS["direct"]
    if name.startswith("mcpwall"):
        return COLORS["mcpwall policy" if "policy" in name else "mcpwall"]
    return COLORS["peer"]


def _bars(ax: Any, names: list[str], values: list[float], title: str, log: bool = False) -> None:
    if not values:
        ax.set_visible(False)
        return
    ax.barh(range(len(names)), values, color=[_color(n) for n in names])
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_title(title, fontsize=9)
    if log and min(values) > 0:
        ax.set_xscale("log")
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:,.3g}", va="center", fontsize=7)


def scenario(results: dict[str, dict[str, Any]], title: str, path: Path) -> Path:
    """Throughput, latency, CPU and memory of each contender in one figure."""
    ok = {n: r for n, r in results.items() if "failed" not in r}
    names = list(ok)
    fig, axes = plt.subplots(2, 2, figsize=(13, 7))
    _bars(axes[0][0], names, [ok[n]["saturation_rps"] for n in names],
          "calls/s at saturation (log)", log=True)
    timed = [n for n in names if "latency_ms" in ok[n]]
    _bars(axes[0][1], timed, [ok[n]["latency_ms"]["p50"] for n in timed],
          f"p50 latency ms at {ok[timed[0]]['offered_rate']:g} calls/s (log)"
          if timed else "p50 latency", log=True)
    _bars(axes[1][0], names, [ok[n]["cpu_per_1k"] for n in names],
          "CPU seconds per 1,000 calls (log)", log=True)
    _bars(axes[1][1], names, [ok[n]["peak_rss_mb"] for n in names], "peak RSS MB")
    failed = [n for n in results if n not in ok]
    fig.suptitle(title + (f"   (failed: {', '.join(failed)})" if failed else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def scaling(data: dict[str, dict[str, Any]], title: str, xlabel: str, path: Path) -> Path:
    """Calls/s and CPU per call against the size of the work, one line per contender."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for name, by_size in data.items():
        points = [(int(s), r) for s, r in by_size.items() if "rps" in r]
        if not points:
            continue
        xs = [x for x, _ in points]
        style = {"marker": "o", "label": name, "color": _color(name),
                 "linestyle": "--" if "policy" in name else "-"}
        axes[0].plot(xs, [r["rps"] for _, r in points], **style)
        axes[1].plot(xs, [r["cpu_per_1k"] for _, r in points], **style)
    for ax, ylabel in zip(axes, ("calls/s", "CPU s per 1,000 calls"), strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def draw(report: dict[str, Any], out: Path) -> list[Path]:
    """Every plot of the report, written under ``out``."""
    paths = [scenario(report[key], title, out / f"{key}.png")
             for key, title in TITLES.items() if key in report]
    if "sessions" in report:
        paths.append(scaling(report["sessions"], "concurrent sessions, HTTP upstream",
                             "sessions (one connection each)", out / "sessions.png"))
    if "tools" in report:
        paths.append(scaling(report["tools"], "tools/list size, stdio front",
                             "tools in the upstream's answer", out / "tools.png"))
    return paths
