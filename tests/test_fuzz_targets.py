"""The fuzz targets of ``scripts/fuzz`` hold on their seed corpus (no atheris needed)."""

from __future__ import annotations

import pytest
from fuzz_targets import SEEDS, TARGETS

from firewall.protocol import bounds, framing


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


def test_every_target_has_seeds() -> None:
    assert set(SEEDS) == set(TARGETS) and all(SEEDS.values())


def test_deep_seeds_reach_both_sides_of_the_bound() -> None:
    """The jsonrpc and mcp seeds nest just under and just over MAX_DEPTH, so coverage
    starts on both sides of the depth check (and the bracket skeleton's string path)."""
    for name in ("jsonrpc", "mcp"):
        depths = {bounds.depth(seed) for seed in SEEDS[name]}
        assert bounds.MAX_DEPTH in depths and bounds.MAX_DEPTH + 4 in depths, depths
    assert any(bounds.too_deep(s) for s in SEEDS["bounds"])
    assert any(not bounds.too_deep(s) and s.count(b"[") > bounds.MAX_DEPTH
               for s in SEEDS["jsonrpc"])  # brackets in strings do not count


@pytest.mark.parametrize("name", ["framing", "bounds"])
def test_new_targets_catch_a_broken_invariant(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The targets can fail: a canonical form that keeps a CR, or a depth check off by
    one, is reported on the seeds."""
    if name == "framing":
        monkeypatch.setattr(framing, "canonical", lambda data: bytes(data))
    else:
        real = bounds.too_deep
        monkeypatch.setattr(bounds, "too_deep", lambda data, limit=bounds.MAX_DEPTH:
                            real(data, limit + 1))
    with pytest.raises(AssertionError):
        for seed in SEEDS[name]:
            TARGETS[name](seed)
