"""HTTP upstream client: mcpwall's pooled client (llhttp parser) against httpx, same run.

    python benchmarks/bench_upstream_client.py [--workers 16] [--seconds 2] [--rounds 5]

Starts each upstream in its own process (so client and server do not share a
core's event loop): a raw trio + h11 HTTP/1.1 server (fast, so the client is
what is measured) and a hypercorn (trio worker) ASGI app. Both answer a
JSON-RPC ``tools/call`` POST with a JSON result echoing the id. Then, for
each upstream, N concurrent workers send calls for T seconds through:

* ``pool``      -- firewall.gateway.upstream.http.HttpUpstream (responses parsed by
                   llhttp through httptools)
* ``httpx``     -- httpx.AsyncClient (trio backend), same connection limit
* ``bare h11``  -- one pre-opened h11 connection per worker, no pool: the cost
                   of h11's own state machine and parser, as a reference

Every answer is checked (status 200 and the id of its own request); any
mismatch aborts the run. Prints requests/s medians over the rounds (clients
take turns within each round) and the ratio pool / httpx. ``--json``
prints the figures as JSON instead.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import h11
import httpx
import msgspec
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from firewall.gateway.upstream.http import HttpUpstream  # noqa: E402

HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


class _Call(msgspec.Struct):
    id: int


class _Answer(msgspec.Struct):
    id: int


_call_decoder = msgspec.json.Decoder(_Call)
_answer_decoder = msgspec.json.Decoder(_Answer)


def call_body(ident: int) -> bytes:
    return (
        b'{"jsonrpc":"2.0","id":%d,"method":"tools/call",'
        b'"params":{"name":"echo","arguments":{"text":"hello"}}}' % ident
    )


def answer_body(request: bytes) -> bytes:
    ident = _call_decoder.decode(request).id
    return (
        b'{"jsonrpc":"2.0","id":%d,"result":{"content":[{"type":"text","text":"hello"}]}}' % ident
    )


# --- upstreams (run in a child process) ---------------------------------------------


async def serve_raw(port: int) -> None:
    """A minimal HTTP/1.1 keep-alive server on trio streams and h11."""

    async def handle(stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        body = bytearray()
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    conn.receive_data(data)
                    if not data:
                        return
                elif type(event) is h11.Data:
                    body += event.data
                elif type(event) is h11.EndOfMessage:
                    answer = answer_body(bytes(body))
                    body.clear()
                    head = h11.Response(
                        status_code=200,
                        headers=[
                            (b"content-type", b"application/json"),
                            (b"content-length", b"%d" % len(answer)),
                        ],
                    )
                    await stream.send_all(
                        conn.send(head)
                        + conn.send(h11.Data(data=answer))
                        + conn.send(h11.EndOfMessage())
                    )
                    if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                        return
                    conn.start_next_cycle()
                elif type(event) is h11.ConnectionClosed:
                    return
        except (trio.BrokenResourceError, h11.ProtocolError):
            return

    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    print(listeners[0].socket.getsockname()[1], flush=True)
    await trio.serve_listeners(handle, listeners)


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    answer = answer_body(body)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(answer))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


async def serve_hypercorn(port: int) -> None:
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.errorlog = None

    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            lambda task_status: serve(cast(Any, asgi_app), config, task_status=task_status)
        )
        print(binds[0].rsplit(":", 1)[1], flush=True)


def start_upstream(kind: str) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen([sys.executable, __file__, "--serve", kind], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    return proc, f"http://127.0.0.1:{port}/mcp"


# --- clients --------------------------------------------------------------------------

Worker = Callable[[int], Awaitable[None]]


class WrongAnswer(Exception):
    pass


def check(status: int, ident: int, body: bytes) -> None:
    if status != 200 or _answer_decoder.decode(body).id != ident:
        raise WrongAnswer(f"request {ident}: status {status}, body {body[:200]!r}")


class Sample(msgspec.Struct):
    rps: float  # completed requests per wall-clock second
    cpu_us: float  # client process CPU time per request, microseconds


async def drive(
    make_worker: Callable[[], Awaitable[Worker]], workers: int, seconds: float
) -> Sample:
    """Run ``workers`` loops for ``seconds``; return throughput and client CPU cost."""
    done = 0
    counter = 0

    async def loop(call: Worker) -> None:
        nonlocal done, counter
        while True:
            counter += 1
            await call(counter)
            done += 1

    calls = [await make_worker() for _ in range(workers)]
    start, cpu_start = trio.current_time(), time.process_time()
    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            for call in calls:
                nursery.start_soon(loop, call)
    elapsed, cpu = trio.current_time() - start, time.process_time() - cpu_start
    return Sample(rps=done / elapsed, cpu_us=cpu / max(done, 1) * 1e6)


async def run_pool(url: str, workers: int, seconds: float) -> Sample:
    async with HttpUpstream(url, max_connections=workers) as upstream:

        async def make() -> Worker:
            async def call(ident: int) -> None:
                async with upstream.request("POST", HEADERS, call_body(ident)) as resp:
                    check(resp.status, ident, await resp.read())

            return call

        return await drive(make, workers, seconds)


async def run_httpx(url: str, workers: int, seconds: float) -> Sample:
    limits = httpx.Limits(max_connections=workers, max_keepalive_connections=workers)
    async with httpx.AsyncClient(limits=limits, timeout=30.0) as client:

        async def make() -> Worker:
            async def call(ident: int) -> None:
                resp = await client.post(url, content=call_body(ident), headers=HEADERS)
                check(resp.status_code, ident, resp.content)

            return call

        return await drive(make, workers, seconds)


async def run_bare_h11(url: str, workers: int, seconds: float) -> Sample:
    host_port = url.removeprefix("http://").split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    streams: list[trio.SocketStream] = []

    async def make() -> Worker:
        stream = await trio.open_tcp_stream(host, int(port))
        streams.append(stream)
        conn = h11.Connection(h11.CLIENT)

        async def call(ident: int) -> None:
            body = call_body(ident)
            headers = [
                (b"host", host_port.encode()),
                (b"content-length", b"%d" % len(body)),
                *((k.encode(), v.encode()) for k, v in HEADERS.items()),
            ]
            wire = conn.send(h11.Request(method=b"POST", target=b"/mcp", headers=headers))
            wire += conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
            await stream.send_all(wire)
            status, parts = 0, []
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif type(event) is h11.Response:
                    status = event.status_code
                elif type(event) is h11.Data:
                    parts.append(bytes(event.data))
                elif type(event) is h11.EndOfMessage:
                    break
            conn.start_next_cycle()
            check(status, ident, b"".join(parts))

        return call

    try:
        return await drive(make, workers, seconds)
    finally:
        for stream in streams:
            await stream.aclose()


CLIENTS: dict[str, Callable[[str, int, float], Awaitable[Sample]]] = {
    "pool": run_pool,
    "httpx": run_httpx,
    "bare h11": run_bare_h11,
}


# --- main -------------------------------------------------------------------------------


def bench(kind: str, opts: argparse.Namespace) -> dict[str, Any]:
    proc, url = start_upstream(kind)
    try:
        samples: dict[str, list[Sample]] = {name: [] for name in CLIENTS}
        names = list(CLIENTS)
        for name in names:  # warm-up: connections, caches, JIT-free but page-warm
            trio.run(CLIENTS[name], url, opts.workers, 0.3)
        for round_no in range(opts.rounds):
            # Rotate who goes first so a slow spell of the machine is shared.
            order = names[round_no % len(names) :] + names[: round_no % len(names)]
            for name in order:
                samples[name].append(trio.run(CLIENTS[name], url, opts.workers, opts.seconds))
        medians = {name: statistics.median(s.rps for s in v) for name, v in samples.items()}
        cpu = {name: statistics.median(s.cpu_us for s in v) for name, v in samples.items()}
        return {
            "upstream": kind,
            "workers": opts.workers,
            "seconds": opts.seconds,
            "rounds": opts.rounds,
            "median_rps": medians,
            "median_client_cpu_us_per_request": cpu,
            "samples_rps": {name: [s.rps for s in v] for name, v in samples.items()},
            "ratio_pool_to_httpx": medians["pool"] / medians["httpx"],
            "ratio_pool_to_bare_h11": medians["pool"] / medians["bare h11"],
            "cpu_ratio_httpx_to_pool": cpu["httpx"] / cpu["pool"],
        }
    finally:
        proc.terminate()
        proc.wait()


def print_table(results: list[dict[str, Any]]) -> None:
    print(
        f"{'upstream':<10} {'client':<9} {'req/s median':>13} {'min':>8} {'max':>8} "
        f"{'client CPU us/req':>18}"
    )
    for result in results:
        for name, median in result["median_rps"].items():
            values = result["samples_rps"][name]
            cpu = result["median_client_cpu_us_per_request"][name]
            print(
                f"{result['upstream']:<10} {name:<9} {median:>13,.0f} {min(values):>8,.0f} "
                f"{max(values):>8,.0f} {cpu:>18,.0f}"
            )
        print(
            f"{result['upstream']:<10} pool / httpx = "
            f"{result['ratio_pool_to_httpx']:.2f}x req/s "
            f"({result['cpu_ratio_httpx_to_pool']:.2f}x less CPU a request); "
            f"pool / bare h11 = {result['ratio_pool_to_bare_h11']:.2f}x req/s"
        )
    first = results[0]
    print(
        f"({first['workers']} workers, {first['rounds']} rounds of {first['seconds']:g} s; "
        "every answer checked)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--upstream", choices=["raw", "hypercorn", "both"], default="both")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--serve", choices=["raw", "hypercorn"], help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.serve == "raw":
        trio.run(serve_raw, 0)
        return
    if opts.serve == "hypercorn":
        trio.run(serve_hypercorn, 0)
        return
    kinds = ["raw", "hypercorn"] if opts.upstream == "both" else [opts.upstream]
    results = [bench(kind, opts) for kind in kinds]
    if opts.json:
        print(json.dumps(results, indent=2))
    else:
        print_table(results)


if __name__ == "__main__":
    main()
