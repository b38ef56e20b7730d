"""Instructions per tools/call pair through the mediator, per protocol era (callgrind).

The steady figure on a shared machine, for the mediator alone (no HTTP, no
event loop switches): each pair is run in a fresh valgrind process with
collection off; after a warm-up, collection is switched on and the counters
zeroed, ``--pairs`` more pairs run, and the counters are dumped.

* ``2025``: a tools/call of a 2025 session (``_meta`` with a progressToken
  only) through the session's one mediator, and its answer: ``from_client``
  + ``from_server``, as ``bench_mediation.py`` times it.
* ``2026``: a stateless tools/call of the 2026-07-28 revision (``_meta`` with
  the protocol version, client capabilities and clientInfo), as the HTTP
  front handles one: a sessionless mediator of its own, made by the front's
  ``FrontContext.mediator`` (sharing the server's one ``Rounds``), the
  revision's header ladder (``revision.check_modern``), the
  upstream headers made from the decided body, ``from_client``, then the
  answer (with ``resultType: "complete"``, as servers of the revision send
  it) through ``from_server`` with the front's ``on_result`` hook set.

Both run with the allow-all policy and an in-memory audit point (the
decision and outcome events are built, then dropped; ``--no-audit``: none).
What running and dumping cost is measured in the same process (a run of no
pairs) and taken off. With ``--baseline
DIR``, the source tree DIR is measured the same way and the ratios printed.

    .venv/bin/python benchmarks/callgrind_mediation.py [--pairs 2000]
        [--eras 2025,2026] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent

CALL_2025 = (b'{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"vm_management",'
             b'"arguments":{"action":"info","vm_name":"web-01","opts":{"a":[1,2,3]}},'
             b'"_meta":{"progressToken":5}}}')
ANSWER_2025 = (b'{"jsonrpc":"2.0","id":%d,"result":{"content":[{"type":"text","text":'
               b'"info of web-01"}],"isError":false}}')
CALL_2026 = (b'{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"vm_management",'
             b'"arguments":{"action":"info","vm_name":"web-01","opts":{"a":[1,2,3]}},'
             b'"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28",'
             b'"io.modelcontextprotocol/clientCapabilities":{"elicitation":{"form":{}}},'
             b'"io.modelcontextprotocol/clientInfo":{"name":"bench","version":"1"}}}}')
ANSWER_2026 = (b'{"jsonrpc":"2.0","id":%d,"result":{"content":[{"type":"text","text":'
               b'"info of web-01"}],"isError":false,"resultType":"complete"}}')
HEADERS_2026 = {"mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call",
                "mcp-name": "vm_management", "content-type": "application/json",
                "accept": "application/json, text/event-stream"}


def pair_runner(era: str, audited: bool) -> Callable[[int], Awaitable[None]]:
    """One tools/call pair of ``era`` ("2025" or "2026"), as described above,
    for request id ``rid``: the mediators, policy and audit point are made
    once (a 2025 session's mediator; for 2026, the front's context)."""
    from firewall.gateway.mediator import Mediator
    from firewall.policy.decision import AllowAll, Caller
    from firewall.protocol.inbound import client as decode_client

    class MemoryAudit:
        """An audit point that keeps nothing and commits at once."""

        async def append(self, event: object) -> MemoryAudit:
            return self

        async def committed(self) -> None:
            return None

    caller, policy = Caller("agent", "grant", ()), AllowAll()
    audit = MemoryAudit() if audited else None
    if era == "2025":
        session = Mediator(server="vm", session="s", caller=caller, policy=policy,
                           audit=audit)  # type: ignore[arg-type]

        async def pair_2025(rid: int) -> None:
            routed = await session.from_client(decode_client(CALL_2025 % rid))
            assert routed.upstream is not None
            back = await session.from_server(ANSWER_2025 % rid)
            assert back.client is not None

        return pair_2025

    # A tree from before the 2026-07-28 revision has neither (2025 only).
    from firewall.config import ListenSettings
    from firewall.gateway.front.sessions import FrontContext
    from firewall.protocol import revision

    front = FrontContext(ListenSettings(), policy, audit)  # type: ignore[arg-type]

    def seen(method: str, line: bytes, narrowed: bool) -> bytes:
        # The HTTP front's hook (rule 19): a result of a method that is not
        # cacheable goes on as it is.
        assert method not in revision.CACHEABLE
        return line

    async def pair_2026(rid: int) -> None:
        inbound = decode_client(CALL_2026 % rid)
        med = front.mediator("vm", f"stateless-{rid}", caller, sessionless=True)
        params = revision.params_of(inbound)
        assert revision.check_modern(HEADERS_2026, "tools/call", params, None) is None
        headers = revision.upstream_headers(revision.body_version(params), "tools/call",
                                            params, None)
        assert headers
        med.on_result = seen
        routed = await med.from_client(inbound)
        assert routed.upstream is not None
        back = await med.from_server(ANSWER_2026 % rid)
        assert back.client is not None

    return pair_2026


def inner(era: str, pairs: int, warmup: int, audited: bool) -> None:
    """Under valgrind: warm up, then count ``pairs`` pairs (collection toggled
    from outside the interpreter by callgrind_control)."""
    import trio

    pair = pair_runner(era, audited)

    async def run(first: int, count: int) -> None:
        for rid in range(first, first + count):
            await pair(rid)

    def control(*flags: str) -> None:
        subprocess.run(["callgrind_control", *flags, str(os.getpid())], check=True,
                       capture_output=True)

    trio.run(run, 1, warmup)
    control("-i", "on")
    control("-z")
    trio.run(run, warmup + 1, pairs)
    control("-d")  # the pairs, plus what running and dumping cost
    control("-z")
    trio.run(run, warmup + pairs + 1, 0)
    control("-d")  # what running and dumping cost alone
    control("-i", "off")


def measure(tree: Path, era: str, pairs: int, warmup: int, audited: bool) -> float:
    """Instructions per pair of ``era`` with the ``firewall`` package of ``tree``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONHASHSEED": "0"}
        subprocess.run(["valgrind", "--tool=callgrind", "--instr-atstart=no",
                        f"--callgrind-out-file={out}", sys.executable, __file__, "--inner",
                        era, "--pairs", str(pairs), "--warmup", str(warmup),
                        *([] if audited else ["--no-audit"])],
                       env=env, check=True, capture_output=True, cwd=tree)
        totals: dict[int, int] = {}  # part -> instructions, of callgrind_control's dumps
        for dump in glob.glob(f"{out}*"):
            lines = Path(dump).read_text().splitlines()
            if "desc: Trigger: dump" in lines:
                part = next(int(line.split()[1]) for line in lines if line.startswith("part:"))
                totals[part] = next(int(line.split()[1]) for line in lines
                                    if line.startswith("totals:"))
        assert len(totals) == 2, f"expected two dumps from callgrind_control: {totals}"
        with_pairs, without = (totals[k] for k in sorted(totals))
    return (with_pairs - without) / pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--eras", default="2025,2026")
    parser.add_argument("--baseline", type=Path, help="another mcpwall source tree")
    parser.add_argument("--no-audit", action="store_true",
                        help="mediators without an audit point (no events built)")
    parser.add_argument("--inner", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.inner:
        inner(opts.inner, opts.pairs, opts.warmup, not opts.no_audit)
        return
    trees = {"this tree": HERE.parent}
    if opts.baseline:
        trees["baseline"] = opts.baseline.resolve()
    print(f"instructions per tools/call pair (callgrind, {opts.pairs} pairs after "
          f"{opts.warmup} of warm-up, " + ("no audit point)" if opts.no_audit
                                           else "in-memory audit point)"))
    print(f"{'era':6} " + " ".join(f"{name:>12}" for name in trees)
          + (f" {'ratio':>8}" if opts.baseline else ""))
    for era in opts.eras.split(","):
        counts = {name: measure(tree, era, opts.pairs, opts.warmup, not opts.no_audit)
                  for name, tree in trees.items()}
        row = f"{era:6} " + " ".join(f"{c:12,.0f}" for c in counts.values())
        if opts.baseline:
            row += f" {counts['this tree'] / counts['baseline']:7.3f}x"
        print(row, flush=True)


if __name__ == "__main__":
    main()
