"""The fuzz targets of ``scripts/fuzz`` hold on their seed corpus (no atheris needed)."""

from __future__ import annotations

import pytest
from fuzz_targets import SEEDS, TARGETS


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_target_holds_on_its_seeds(name: str) -> None:
    for seed in SEEDS[name]:
        TARGETS[name](seed)
        for cut in range(len(seed)):  # every prefix: truncated input is hostile too
            TARGETS[name](seed[:cut])


def test_deep_nesting_is_a_protocol_error_not_a_crash() -> None:
    """Deep nesting must be refused like any bad input (-32700/-32600), never escape
    as RecursionError (which the fuzz target reports as a crash)."""
    deep = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":' + b"[" * 100_000 \
        + b"]" * 100_000 + b"}"
    for name in ("jsonrpc", "mcp"):
        TARGETS[name](deep)
