"""Audit trail benchmarks: durable group-commit throughput, added latency, query, verify.

Run:  .venv/bin/python benchmarks/bench_audit.py [--rows 10000000] [--events 50000]

1. Durable events/s with group commit, against the baseline of one fsync'ed
   commit per event measured in the same run. Each trio producer does what
   the gateway does for a call: append the decision, await ``committed()``,
   append the outcome without waiting (gateway-like session and call ids);
   the clock stops when every event is committed, and the rows stored are
   counted against the events counted. Also in the run: the earlier loop (one
   decision, awaited), and the gateway-side ceiling (the writer process
   replaced by ``audit_null_child.py``, which stores nothing). ``--prefill``
   starts the runs from a file that already holds rows, and adds the writer
   alone on gateway-like keys (the schema before the derived tables against
   this one, catch-up steps included).
   ``before`` (in ``--only``): the same runs on a copy of the file turned into
   the schema of the writer before the derived tables (the session, principal
   and outcome call_id indexes on events, maintained in every commit), which
   this writer keeps appending to as that writer did: the baseline of this
   change, measured in the same run and interleaved with it.
   The default writer is a child process (``writer = "process"``); the same
   run measures the writer thread (``writer = "thread"``, the design before
   it) at the largest producer count, and prints the ratio.
   Also: the writer alone (``Trail.append_batch`` on events built beforehand,
   1000 and 5000 per transaction), and per group-commit run the writer's own
   rate (events over the seconds it was busy), the mean batch, and the CPU per
   event split between the writer (the child process, or the writer thread)
   and the rest (the trio producers and the hand-over): end-to-end figures
   include the producers, which share the machine's cores (and, with the
   writer thread, one GIL).
   The derived tables (full-text index, ix_session, ix_principal, ix_outcome)
   are filled off the commit path, in catch-up steps of 16,384 rows after a
   commit under load (or when idle): a run of many more events than that
   measures the sustained rate with indexing included, and the writer's CPU
   per event includes the steps. The same run also measures the writer with
   ``fts_max_lag = 0`` (indexing in every commit).
   The goal check: 50,000 durable events/s.
2. Latency that append + committed() adds per call: p50 and p99.
3. ``audit query`` by principal and time range over --rows rows (generated in
   bulk into --db and reused if it already holds enough rows), against the same
   query with the indexes ignored (a full scan) when --rows is small enough.
4. ``audit verify`` rows per second.

Figures are medians over --repeat runs. The machine is noisy: compare ratios.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sqlite3
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import msgspec
import trio

from firewall.audit.events import DecisionEvent, Event, OutcomeEvent
from firewall.audit.query import Filters, Sources, calls
from firewall.audit.trail import Trail
from firewall.audit.verify import verify_paths
from firewall.audit.writer import open_audit
from firewall.settings.audit import AuditSettings

T0 = 1_750_000_000_000_000_000
PRINCIPALS = [f"agent-{i}" for i in range(200)]
TOOLS = ["list_vms", "get_vm", "stop_vm", "start_vm", "delete_vm", "snapshot_vm"]


def decision(i: int, ts: int, who: int | None = None) -> DecisionEvent:
    return DecisionEvent(
        ts_ns=ts, call_id=f"c{i}", session=f"s{i % 5000}",
        principal=PRINCIPALS[(i if who is None else who) % 200],
        grant="ops", server="virtualization", method="tools/call", tool=TOOLS[i % 6],
        request_id=str(i), arguments={"name": f"vm-{i % 997}", "zone": "eu-west-1"},
        decision="deny" if i % 17 == 0 else "allow", rule="r1")


def _settings(path: Path, **kw: object) -> AuditSettings:
    return AuditSettings(path=str(path), anchor_log=False, **kw)  # type: ignore[arg-type]


def bench_single_commit(tmp: Path, n: int) -> float:
    """Baseline: one transaction (one fsync) per event."""
    with Trail(_settings(tmp / "single.db"), "bench") as trail:
        t = time.perf_counter()
        for i in range(n):
            trail.append_batch([decision(i, time.time_ns())])
        return n / (time.perf_counter() - t)


class GroupRun:
    """One group-commit run: end-to-end rate, writer-side rate, latencies."""

    def __init__(self, rate: float, latencies: list[float], writer_rate: float | None,
                 batch: float | None, cpu_us: float, writer_cpu_us: float) -> None:
        self.rate = rate
        self.latencies = latencies
        self.writer_rate = writer_rate  # events / seconds the writer thread was busy
        self.batch = batch              # mean events per transaction
        self.cpu_us = cpu_us            # process CPU per event, both threads
        self.writer_cpu_us = writer_cpu_us  # the writer thread's CPU per event
        self.events = 0                 # events counted (and found in the database)


def bench_group_commit(tmp: Path, name: str, n: int, producers: int, *,
                       no_store: bool = False, call_model: bool = True,
                       prefill: Path | None = None, older: bool = False,
                       **settings: object) -> GroupRun:
    """Durable writer, ``producers`` trio tasks, ``n`` events in all.

    ``call_model`` (the default): each producer does what the gateway does for
    one call (see ``firewall.gateway.mediator``): append the decision, await
    ``committed()`` (the call is forwarded only then), append the outcome
    without waiting. Two events per call; each producer is one session (a
    random hex id, as the gateway's) and call ids are ``<session>.<n>``, so
    the indexes take keys in the order a gateway gives them. Else each
    producer appends a decision and awaits it (the loop of earlier runs).

    The clock stops when every event is committed (``flush``); afterwards the
    database is counted: every event counted must be in it.

    ``older``: on the schema before the derived tables (see :func:`older_schema`).

    ``no_store``: the writer process is replaced by a child that acknowledges
    each batch without storing it (``audit_null_child.py``): what the gateway
    side (producers, encoding, hand-over, wake-ups) costs on its own, the
    ceiling that storage cannot raise.
    """
    latencies: list[float] = []
    if no_store:
        settings["writer"] = "process"
    before = 0
    if prefill is not None and not no_store:  # start from a file that already holds rows
        shutil.copyfile(prefill, tmp / f"{name}.db")
        before = _count(tmp / f"{name}.db")
    if older:
        if prefill is None:  # an empty file of the older schema
            Trail(_settings(tmp / f"{name}.db"), "bench").close()
        older_schema(tmp / f"{name}.db")

    async def main() -> GroupRun:
        from firewall.audit.process import ProcessWriter
        if not no_store:
            return await _group_run(tmp / f"{name}.db", n, producers, call_model, settings,
                                    latencies)
        saved = ProcessWriter.child_args
        ProcessWriter.child_args = (str(Path(__file__).with_name("audit_null_child.py")),)
        try:
            return await _group_run(tmp / f"{name}.db", n, producers, call_model, settings,
                                    latencies)
        finally:
            ProcessWriter.child_args = saved

    run = trio.run(main)
    if not no_store:
        stored = _count(tmp / f"{name}.db") - before
        assert stored == run.events, f"{stored} rows stored, {run.events} events counted"
    return run


def _count(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    finally:
        conn.close()


async def _group_run(db: Path, n: int, producers: int, call_model: bool,
                     settings: dict[str, object], latencies: list[float]) -> GroupRun:
    async with open_audit(_settings(db, **settings), instance_id="bench") as audit:
        per = n // producers // (2 if call_model else 1)

        async def producer(k: int) -> None:
            session = uuid.uuid4().hex if call_model else f"s{k}"
            for i in range(per):
                j = k * per + i
                t = time.perf_counter()
                event = decision(j, time.time_ns())
                if call_model:
                    event = msgspec.structs.replace(event, session=session,
                                                    call_id=f"{session}.{i}")
                receipt = await audit.append(event)
                await receipt.committed()
                latencies.append(time.perf_counter() - t)
                if call_model:
                    await audit.append(OutcomeEvent(
                        ts_ns=time.time_ns(), call_id=event.call_id, session=session,
                        server="virtualization", status="ok",
                        latency_ns=int((time.perf_counter() - t) * 1e9), response_bytes=120))

        t, cpu = time.perf_counter(), time.process_time()
        async with trio.open_nursery() as nursery:
            for k in range(producers):
                nursery.start_soon(producer, k)
        await audit.flush()  # the outcomes nobody waited for: durable too
        elapsed, cpu = time.perf_counter() - t, time.process_time() - cpu
        stats = audit.stats()
        total = per * producers * (2 if call_model else 1)
        writer_cpu = stats.cpu_seconds
        if getattr(audit, "pid", None) is not None:
            cpu += writer_cpu  # a writer process: its CPU is not in process_time()
        run = GroupRun(
            total / elapsed, latencies,
            stats.events / stats.busy_seconds if stats.busy_seconds else None,
            stats.events / stats.batches if stats.batches else None,
            cpu / total * 1e6, writer_cpu / total * 1e6)
        run.events = total
        return run


def bench_writer_only(tmp: Path, name: str, n: int, batch: int, *,
                      events: list[Event] | None = None, prefill: Path | None = None,
                      older: bool = False, **settings: object) -> tuple[float, float]:
    """The writer alone: Trail.append_batch, durable, ``batch`` events per transaction
    (events built beforehand), so neither trio nor the producers share the GIL,
    each commit followed by the catch-up step the writer runs under load, and
    every row indexed before the clock stops (the derived tables' whole cost
    is in). Returns events/s and CPU us per event. ``prefill``: a file to
    start from (copied); ``older``: on the schema before the derived tables."""
    if events is None:
        events = [decision(i, time.time_ns()) for i in range(n)]
    db = tmp / f"{name}.db"
    if prefill is not None:
        shutil.copyfile(prefill, db)
    if older:
        if prefill is None:
            Trail(_settings(db), "bench").close()
        older_schema(db)
    with Trail(_settings(db, **settings), "bench") as trail:
        t, cpu = time.perf_counter(), time.thread_time()
        for k in range(0, len(events), batch):
            trail.append_batch(events[k:k + batch])
            trail.catch_up()
        trail.index_pending()
        return len(events) / (time.perf_counter() - t), (time.thread_time() - cpu) / n * 1e6


def older_schema(db: Path) -> None:
    """Turn ``db`` into the schema of the writer before the derived tables: the
    session, principal and outcome call_id indexes on events (maintained in
    every commit), the ``calls`` view joining on call_id, no ``ix_*`` tables.
    The writer keeps appending to such a file as that writer did (only the
    full-text index deferred). Builds the indexes over the rows already there;
    a file already of that schema is left as it is."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'ix_outcome'").fetchone():
            return
        conn.execute("BEGIN")
        for table in ("ix_session", "ix_principal", "ix_outcome"):
            conn.execute(f"DROP TABLE {table}")
        conn.execute("CREATE INDEX idx_events_session_ts_ns ON events (session, ts_ns)")
        conn.execute("CREATE INDEX idx_events_outcome_call_id ON events (call_id) "
                     "WHERE kind = 'outcome'")
        conn.execute("CREATE INDEX idx_events_principal_ts_ns ON events (principal, ts_ns) "
                     "WHERE principal IS NOT NULL")
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'calls'").fetchone()[0]
        conn.execute("DROP VIEW calls")
        conn.execute(sql.partition("FROM events d")[0] + "FROM events d LEFT JOIN events o "
                     "ON o.call_id = d.call_id AND o.kind = 'outcome' WHERE d.kind = 'decision'")
        conn.execute("COMMIT")
    finally:
        conn.close()


def gateway_calls(n: int, clients: int = 2048) -> list[Event]:
    """``n`` events as a gateway with ``clients`` busy sessions writes them: a
    decision and its outcome per call, random hex session ids, call ids
    ``<session>.<n>``, calls of all sessions interleaved."""
    sessions = [uuid.uuid4().hex for _ in range(clients)]
    out: list[Event] = []
    for i in range(n // 2):
        s = sessions[i % clients]
        d = msgspec.structs.replace(decision(i, time.time_ns()), session=s,
                                    call_id=f"{s}.{i // clients}")
        out.append(d)
        out.append(OutcomeEvent(ts_ns=time.time_ns(), call_id=d.call_id, session=s,
                                server="virtualization", status="ok", latency_ns=1_000_000,
                                response_bytes=120))
    return out


def writer_keys(tmp: Path, args: argparse.Namespace, prefill: Path,
                older_prefill: Path | None) -> None:
    """The writer alone on gateway-like keys, from a prefilled file: the schema
    before the derived tables against this one (catch-up steps included)."""
    events = gateway_calls(args.events)
    cases: list[tuple[str, Path | None]] = [
        ("before: indexes on events", older_prefill),
        ("derived tables (catch-up incl.)", None),
    ]
    print(f"   writer alone, gateway-like keys, from a file of {args.prefill:,} rows, "
          "1000-event transactions:")
    results: dict[str, list[tuple[float, float]]] = {c[0]: [] for c in cases}
    for r in range(args.repeat):  # interleaved: the machine's load drifts
        for label, older in cases:
            results[label].append(bench_writer_only(
                tmp, f"k{r}-{older is None}", args.events, 1000, events=events,
                prefill=older or prefill, older=older is not None))
    first_rate = statistics.median(x[0] for x in results[cases[0][0]])
    first = statistics.median(x[1] for x in results[cases[0][0]])
    for label, _ in cases:
        w = statistics.median(x[0] for x in results[label])
        wcpu = statistics.median(x[1] for x in results[label])
        print(f"     {label:<34}{w:>9,.0f}/s  ({w / first_rate:.2f}x)  cpu {wcpu:.1f} "
              f"us/event ({wcpu / first:.2f}x)")


def generate(db: Path, rows: int) -> None:
    """Bulk path: one Trail, 50k-event transactions, fast mode, 1 ms apart per event."""
    have = 0
    if db.exists():
        conn = sqlite3.connect(db)
        have = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        conn.close()
    if have >= rows:
        return
    print(f"generating {rows - have:,} rows into {db} ...", flush=True)
    t = time.perf_counter()
    with Trail(_settings(db, mode="fast", checkpoint_every_rows=1_000_000), "bench") as trail:
        i = have
        while i < rows:
            chunk = []
            for j in range(i, min(i + 50_000, rows)):
                ts = T0 + j * 1_000_000
                if j % 2:
                    chunk.append(OutcomeEvent(ts_ns=ts, call_id=f"c{j - 1}", session="s",
                                              server="virtualization", status="ok",
                                              latency_ns=1_000_000, response_bytes=100))
                else:
                    chunk.append(decision(j, ts, who=j // 2))
            trail.append_batch(chunk)
            i += len(chunk)
            if i % 1_000_000 < 50_000:
                print(f"  {i:,} rows, {i / (time.perf_counter() - t):,.0f} rows/s", flush=True)


def bench_query(db: Path, rows: int, repeat: int, *, scan: bool, window_s: int = 600,
                limit: int = 0) -> tuple[list[float], list[int]]:
    """ms per query and calls returned: one principal, a random ``window_s`` window,
    at most ``limit`` calls (0: every match). Each query opens the file afresh, as
    one ``mcpwall audit query`` does (the OS page cache stays warm)."""
    rng = random.Random(1)
    span_ns = rows * 1_000_000
    window = window_s * 1_000_000_000
    out = []
    found = []
    with Sources.open([db]) as src:
        conn0 = src.conns[0][1]
        active = [p for p in PRINCIPALS if conn0.execute(
            "SELECT 1 FROM events WHERE principal = ? LIMIT 1", (p,)).fetchone()]
    for _ in range(repeat):
        since = T0 + rng.randrange(max(span_ns - window, 1))
        f = Filters(principal=rng.choice(active), since_ns=since, until_ns=since + window,
                    limit=limit)
        t = time.perf_counter()
        with Sources.open([db]) as src:
            if scan:  # the baseline: "+col" makes the planner ignore the indexes
                sql = ("SELECT * FROM calls WHERE +principal = ? AND +ts_ns >= ? "
                       "AND +ts_ns < ? ORDER BY ts_ns")
                n = len(src.conns[0][1].execute(sql, (f.principal, f.since_ns,
                                                      f.until_ns)).fetchall())
            else:
                n = sum(1 for _ in calls(src, f))
        out.append((time.perf_counter() - t) * 1000)
        found.append(n)
    return out, found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=10_000_000, help="rows for query/verify")
    ap.add_argument("--events", type=int, default=50_000, help="events per throughput run")
    ap.add_argument("--producers", type=int, nargs="+", default=[1, 64, 512, 2048])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--db", type=Path, default=None, help="reuse/keep the generated database")
    ap.add_argument("--skip-throughput", action="store_true", help="only query and verify")
    ap.add_argument("--skip-writer-alone", action="store_true",
                    help="skip the writer-alone rows of part 1")
    ap.add_argument("--skip-query", action="store_true", help="only parts 1 and 2")
    ap.add_argument("--prefill", type=int, default=0,
                    help="group-commit runs start from a file holding this many rows "
                         "(the indexes' cost grows with the file)")
    ap.add_argument("--only", nargs="+", default=None,
                    choices=["main", "before", "thread", "each-commit", "decision-only",
                             "ceiling"],
                    help="group-commit rows to run (default: all)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        if not args.skip_throughput:
            throughput(tmp, args)
        if not args.skip_query:
            query_and_verify(tmp, args)


GOAL = 50_000  # durable events/s with group commit
_BEFORE = ", schema before the derived tables"


def throughput(tmp: Path, args: argparse.Namespace) -> None:
    """Parts 1 and 2."""
    base = statistics.median(bench_single_commit(tmp, 2000) for _ in range(args.repeat))
    print(f"\n1. durable throughput (events/s, median of {args.repeat})")
    print(f"   baseline, one fsync'ed commit per event: {base:>9,.0f}/s  (1.00x)")
    cases: list[tuple[int, int, str, bool]] = [
        (size, lag, label, False) for size in (1000, 5000)
        for lag, label in ((0, "indexing in each commit"), (40_000, "indexing deferred"))]
    cases.append((1000, 40_000, "before: indexes on events", True))
    alone: dict[int, list[tuple[float, float]]] = {i: [] for i in range(len(cases))}
    for r in range(0 if args.skip_writer_alone else args.repeat):  # interleaved
        for i, (size, lag, _, older) in enumerate(cases):
            alone[i].append(bench_writer_only(tmp, f"w{size}-{lag}-{older}-{r}", args.events,
                                              size, fts_max_lag=lag, older=older))
    for i, (size, _, case, _) in enumerate([] if args.skip_writer_alone else cases):
        w = statistics.median(x[0] for x in alone[i])
        wcpu = statistics.median(x[1] for x in alone[i])
        print(f"   writer alone, {size:>4}-event transactions, {case:<26}"
              f"{w:>9,.0f}/s  ({w / base:.2f}x)  cpu {wcpu:.1f} us/event")
    lat_report = []
    best = 0.0
    rates: dict[str, float] = {}
    top = max(args.producers)
    prefill: Path | None = None
    older_prefill: Path | None = None
    if args.prefill:
        prefill = tmp / "prefill.db"
        generate(prefill, args.prefill)
        older_prefill = tmp / "prefill-older.db"  # converted once, copied per run
        shutil.copyfile(prefill, older_prefill)
        older_schema(older_prefill)
        if not args.skip_writer_alone:
            writer_keys(tmp, args, prefill, older_prefill)
    only = set(args.only or ["main", "before", "thread", "each-commit", "decision-only",
                             "ceiling"])
    runs_for: list[tuple[str, int, dict[str, object]]] = []
    if "main" in only:
        runs_for += [("", p, {"prefill": prefill}) for p in args.producers]
    if "before" in only:
        runs_for.append((_BEFORE, top, {"prefill": older_prefill, "older": True}))
    if "thread" in only:
        runs_for.append((", writer thread (before)", top, {"writer": "thread", "prefill": prefill}))
    if "each-commit" in only:
        runs_for.append((", indexing in each commit", top, {"fts_max_lag": 0, "prefill": prefill}))
    if "decision-only" in only:
        runs_for.append((", decision only (the earlier loop)", top,
                         {"call_model": False, "prefill": prefill}))
    if "ceiling" in only:
        runs_for.append((", no SQLite (gateway-side ceiling)", top, {"no_store": True}))
    measured: dict[int, list[GroupRun]] = {i: [] for i in range(len(runs_for))}
    for r in range(args.repeat):  # every variant once per round: the load drifts
        for i, (_, p, extra_settings) in enumerate(runs_for):
            measured[i].append(bench_group_commit(
                tmp, f"g{p}-{i}-{r}", args.events if p > 1 else 2000, p, **extra_settings))
    for i, (label, p, _) in enumerate(runs_for):
        runs = measured[i]
        rate = statistics.median(r.rate for r in runs)
        if not label or "each commit" in label:
            best = max(best, rate)
        lats = sorted(x for r in runs for x in r.latencies)
        p50 = lats[len(lats) // 2] * 1e6
        p99 = lats[int(len(lats) * 0.99)] * 1e6
        lat_report.append((f"{p}{label}", p50, p99))
        cpu = statistics.median(r.cpu_us for r in runs)
        wcpu = statistics.median(r.writer_cpu_us for r in runs)
        writer = [r.writer_rate for r in runs if r.writer_rate is not None]
        batch = [r.batch for r in runs if r.batch is not None]
        extra = (f"  writer busy-time rate {statistics.median(writer):>9,.0f}/s, "
                 f"{statistics.median(batch):,.0f} events/commit" if writer and batch else "")
        print(f"   group commit, {p:>4} producers{label}: {rate:>9,.0f}/s  "
              f"({rate / base:.2f}x)  cpu {cpu:.1f} us/event (writer {wcpu:.1f}, "
              f"rest {cpu - wcpu:.1f}){extra}")
        rates[label] = rate
    print("\n2. latency added per call (append + committed), microseconds")
    for p, p50, p99 in lat_report:
        print(f"   {p:>4} producers: p50 {p50:>8,.0f}  p99 {p99:>8,.0f}")
    before = rates.get(", writer thread (before)")
    if before:
        print(f"\nwriter process vs writer thread, {top} producers: "
              f"{rates.get('', 0.0) / before:.2f}x")
    schema_before = rates.get(_BEFORE)
    if schema_before:
        print(f"derived tables vs the schema before them, {top} producers: "
              f"{rates.get('', 0.0) / schema_before:.2f}x")
    verdict = "reached" if best >= GOAL else "NOT reached"
    print(f"\ngoal {GOAL:,} durable events/s: best median {best:,.0f}/s, {verdict}")


def query_and_verify(tmp: Path, args: argparse.Namespace) -> None:
    """Parts 3 and 4."""
    db = args.db or tmp / "big.db"
    generate(db, args.rows)
    times, found = bench_query(db, args.rows, 30, scan=False)
    q = statistics.median(times)
    print(f"\n3. query by principal + 10-minute range over {args.rows:,} rows: "
          f"median {q:.1f} ms, p90 {sorted(times)[26]:.1f} ms "
          f"(median {statistics.median(found):,.0f} calls returned, all of them)")
    times, found = bench_query(db, args.rows, 30, scan=False, window_s=3600, limit=1000)
    print(f"   1-hour range, the CLI's default --limit 1000: median "
          f"{statistics.median(times):.1f} ms, p90 {sorted(times)[26]:.1f} ms "
          f"({statistics.median(found):,.0f} calls returned)")
    if args.rows <= 2_000_000:
        s = statistics.median(bench_query(db, args.rows, 3, scan=True)[0])
        print(f"   baseline full scan: {s:.1f} ms ({s / q:.0f}x slower)")
    t = time.perf_counter()
    [report] = verify_paths([db])
    dt = time.perf_counter() - t
    assert report.ok, report.problems
    print(f"\n4. verify: {report.rows:,} rows in {dt:.1f} s = {report.rows / dt:,.0f} rows/s")


if __name__ == "__main__":
    main()
