"""The comparison benchmark's harness: answer checks, result math, process accounting.

Fast and timing-free: these run the generators briefly against the real echo
servers of benchmarks/ and check what they count, never how fast anything is.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import compare  # noqa: E402
import http_load  # noqa: E402
import metrics  # noqa: E402
import proctree  # noqa: E402
import pyspy_profile  # noqa: E402
from echo_server import answer, echo_text, tool_list  # noqa: E402
from stdio_load import (  # noqa: E402
    StdioTarget,
    WrongAnswer,
    call_request,
    check_echo,
    check_tool_count,
    list_request,
)

ECHO = [sys.executable, str(BENCH / "echo_server.py")]
# Answers every tools/call with the n of the call before it: ids match, results do not.
OFF_BY_ONE = r'''
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if "id" not in m:
        continue
    args = (m.get("params") or {}).get("arguments", {})
    n = args.get("n", 0) - 1 if m["method"] == "tools/call" else 0
    text = json.dumps({**args, "n": n}, sort_keys=True, separators=(",", ":"))
    print(json.dumps({"jsonrpc": "2.0", "id": m["id"], "result": {
        "content": [{"type": "text", "text": text}]}}), flush=True)
'''


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 1001)]  # 1 .. 1000
    assert metrics.percentile(values, 50) == 500
    assert metrics.percentile(values, 99) == 990
    assert metrics.percentile(values, 99.9) == 999
    assert metrics.percentile(values, 100) == 1000
    assert metrics.percentile([7.0], 99.9) == 7.0
    assert metrics.percentile([3.0, 1.0, 2.0], 50) == 2.0  # unsorted input
    with pytest.raises(ValueError):
        metrics.percentile([], 50)
    with pytest.raises(ValueError):
        metrics.percentile([1.0], 0)


def test_latency_summary_is_in_milliseconds() -> None:
    summary = metrics.latency_summary([0.001] * 990 + [0.010] * 9 + [0.100])
    assert summary == {"p50": 1.0, "p99": 1.0, "p99.9": 10.0}


def test_ratios_against_direct_and_mcpwall() -> None:
    def row(rps: float, p50: float) -> dict[str, object]:
        return {"rps": rps, "saturation_rps": rps * 2, "cpu_per_1k": 1000 / rps,
                "peak_rss_mb": 10.0, "offered_rate": 100.0,
                "latency_ms": {"p50": p50, "p99": p50, "p99.9": p50}}

    results = {"direct": row(1000, 1.0), "mcpwall wrap": row(500, 1.25),
               "peer": row(100, 5.0), "broken peer": {"failed": "could not connect"}}
    compare.ratios(results)
    assert results["mcpwall wrap"]["vs_direct"]["rps"] == 0.5
    assert results["peer"]["vs_direct"]["rps"] == 0.1
    assert results["peer"]["vs_mcpwall"]["rps"] == 0.2
    assert results["peer"]["vs_mcpwall"]["cpu_per_1k"] == 5.0
    assert results["mcpwall wrap"]["added_p50_ms"] == 0.25
    assert "vs_direct" not in results["broken peer"]
    assert metrics.ratio(1.0, None) is None and metrics.ratio(1.0, 0) is None
    table = compare.render("t", results, 16)
    assert "failed: could not connect" in table and "0.20x" in table


def test_body_answers_json_and_sse() -> None:
    message = answer(json.loads(call_request(42)), tool_list(0))
    body = json.dumps(message).encode()
    assert http_load.body_answers(body) == 42
    sse = b"event: message\ndata: " + body + b"\n\n"
    assert http_load.body_answers(sse) == 42
    wrong = body.replace(b'\\"n\\": 42', b'\\"n\\": 41').replace(b'\\"n\\":42', b'\\"n\\":41')
    assert wrong != body and http_load.body_answers(wrong) is None
    assert http_load.body_answers(b'{"jsonrpc":"2.0","error":{}}') is None
    listing = json.dumps(answer(json.loads(list_request(7)), tool_list(10))).encode()
    assert http_load.body_answers(listing, "list", 11) == 7
    assert http_load.body_answers(listing, "list", 10) is None


def test_echo_checks() -> None:
    tools = tool_list(3)
    check_echo(5, answer({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                          "params": {"name": "echo", "arguments": {"n": 5}}}, tools) or {})
    with pytest.raises(WrongAnswer):
        check_echo(5, {"result": {"content": [{"type": "text", "text": echo_text({"n": 4})}]}})
    with pytest.raises(WrongAnswer):
        check_echo(5, {"error": {"code": -32601, "message": "no"}})
    check_tool_count(4)(1, answer({"id": 1, "method": "tools/list"}, tools) or {})
    with pytest.raises(WrongAnswer):
        check_tool_count(1)(1, answer({"id": 1, "method": "tools/list"}, tools) or {})


@pytest.mark.slow
def test_stdio_generator_checks_every_answer() -> None:
    with StdioTarget(ECHO) as target:
        assert target.pipeline(300, 16) > 0
        latencies = target.paced(rate=500, seconds=0.2)
        assert len(latencies) == 100 and min(latencies) >= 0
        target.pipeline(10, 4, list_request, check_tool_count(1))
    with StdioTarget([sys.executable, "-c", OFF_BY_ONE]) as liar, \
            pytest.raises(WrongAnswer, match="wrong answer"):
        liar.pipeline(10, 4)


@pytest.mark.slow
def test_proctree_counts_children() -> None:
    child = subprocess.Popen([*ECHO], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        pids = proctree.tree(child.pid)
        assert pids == [child.pid]
        import os

        assert child.pid in proctree.tree(os.getpid())
        assert proctree.peak_rss_bytes(pids) > 1_000_000
        assert proctree.cpu_seconds(pids) >= 0
    finally:
        child.kill()
        child.wait()


def test_profile_summary_ranks_busy_frames() -> None:
    head = 'process 7:"python -m firewall wrap";run (firewall/gateway/front/wrap.py:74)'
    raw = "\n".join([
        f"{head};decide (/x/site-packages/firewall/policy/engine.py:10) 30",
        f"{head};append_rows (firewall/audit/writer.py:99) 10",
        f"{head};EpollIOManager.get_events (trio/_core/_io_epoll.py:220) 60",
        "garbage line",
    ])
    summary = pyspy_profile.summarize(raw)
    assert summary["samples"] == 100
    assert summary["waiting"] == 0.6
    assert summary["self"] == [[0.75, "decide (firewall/policy/engine.py)"],
                               [0.25, "append_rows (firewall/audit/writer.py)"]]
    assert [1.0, "firewall/gateway/front/wrap.py"] in summary["inclusive_by_file"]
    assert pyspy_profile.summarize("")["self"] == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def http_echo(tmp_path: Path):  # type: ignore[no-untyped-def]
    port = _free_port()
    proc = subprocess.Popen([sys.executable, str(BENCH / "http_echo_server.py"), str(port),
                             "--tools", "5"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        http_load.wait_http(url, lambda: proc.poll() is None)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.slow
def test_http_pacer_checks_answers(http_echo: str, tmp_path: Path) -> None:
    sid = http_load.open_session(http_echo)
    assert sid
    sessions = http_load.write_sessions(tmp_path / "sessions.txt", [sid])
    run = http_load.paced(http_echo, sessions, rate=200, seconds=0.25, connections=2)
    assert run["bad"] == 0 and len(run["latencies"]) >= 40


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_wrk_script_counts_right_and_wrong_answers(http_echo: str, tmp_path: Path) -> None:
    wrk = [shutil.which("wrk") or "wrk"]
    sids = http_load.open_sessions(http_echo, 3)
    sessions = http_load.write_sessions(tmp_path / "sessions.txt", sids)
    calls = http_load.wrk_run(wrk, http_echo, sessions, 1, 2)
    assert calls["good"] > 0 and calls["bad"] == 0
    listed = http_load.wrk_run(wrk, http_echo, sessions, 1, 2, kind="list", expect=6)
    assert listed["good"] > 0 and listed["bad"] == 0
    wrong = http_load.wrk_run(wrk, http_echo, sessions, 1, 2, kind="list", expect=5)
    assert wrong["good"] == 0 and wrong["bad"] > 0 and '"tools"' in wrong["first_bad"]


@pytest.mark.slow
def test_ab_http_proxy_refuses_a_baseline_that_is_not_a_source_tree(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, str(BENCH / "ab_http_proxy.py"), "--baseline",
                          str(tmp_path), "--rounds", "1"], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode != 0 and "is not an mcpwall source tree" in run.stderr
