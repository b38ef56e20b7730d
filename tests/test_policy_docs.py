"""Every ```json block in docs/policy.md is a policy that compiles."""

from __future__ import annotations

import re

import pytest
from conftest import ROOT

from firewall.policy.compiler import compile_policy
from firewall.policy.schema import parse_policy

DOC = ROOT / "docs" / "policy.md"
BLOCKS = re.findall(r"```json\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)


def test_the_doc_has_examples() -> None:
    assert len(BLOCKS) >= 6


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_doc_example_compiles(block: str) -> None:
    compiled = compile_policy(parse_policy(block, "docs/policy.md"))
    assert len(compiled.fleet.tools) + len(compiled.fleet.methods) > 0
