"""``scripts/fuzz``: run one of :mod:`tests.fuzz_targets` under atheris.

Prints the number of inputs tried and the crashes found. libFuzzer keeps the
corpus in ``fuzz-corpus/TARGET`` (seeded from the target's fixed corpus) and
writes each crashing input to ``fuzz-crashes/TARGET/``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("target", help="jsonrpc, mcp, sse, lines, http, framing or bounds")
    parser.add_argument("--runs", type=int, default=-1, help="inputs to try (default: no cap)")
    parser.add_argument("--seconds", type=int, default=60, help="time budget (default 60)")
    parser.add_argument("--max-len", type=int, default=8192, help="longest input")
    parser.add_argument("libfuzzer", nargs="*", help="extra libFuzzer flags, after --")
    args = parser.parse_args(argv)

    try:
        import atheris
    except ImportError:
        print("fuzz: atheris is not installed; install it with: pip install -e '.[fuzz]'",
              file=sys.stderr)
        return 2

    with atheris.instrument_imports(include=["firewall", "msgspec", "tests.fuzz_targets"]):
        from tests import fuzz_targets

        if args.target == "http":  # imported lazily by its target: instrument it too
            from firewall.gateway.http import http11  # noqa: F401

    if args.target not in fuzz_targets.TARGETS:
        parser.error(f"unknown target {args.target!r}; one of {', '.join(fuzz_targets.TARGETS)}")
    target = fuzz_targets.TARGETS[args.target]
    corpus = Path("fuzz-corpus") / args.target
    crashes = Path("fuzz-crashes") / args.target
    corpus.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    for n, seed in enumerate(fuzz_targets.SEEDS[args.target]):
        (corpus / f"seed-{n}").write_bytes(seed)

    dictionary = crashes.parent / f"{args.target}.dict"
    dictionary.write_text("".join(
        '"' + "".join(f"\\x{b:02x}" for b in token) + '"\n'
        for token in fuzz_targets.DICTIONARIES[args.target]))

    def one(data: bytes) -> None:
        target(data)

    flags = [sys.argv[0], str(corpus), f"-max_total_time={args.seconds}",
             f"-runs={args.runs}", f"-max_len={args.max_len}",
             f"-artifact_prefix={crashes}/", f"-dict={dictionary}", "-print_final_stats=1",
             *args.libfuzzer]
    atheris.Setup(flags, one)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
