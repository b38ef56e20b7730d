"""docs/security.md names the test behind each guarantee: every one must exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "security.md"


def test_every_test_the_security_page_names_exists() -> None:
    text = DOC.read_text()
    named = set(re.findall(r"`(tests/test_\w+\.py)(?:::(\w+))?`", text))
    assert len(named) > 20
    for path, test in named:
        source = ROOT / path
        assert source.exists(), f"docs/security.md names {path}, which does not exist"
        if test:
            tree = ast.parse(source.read_text())
            names = {n.name for n in ast.walk(tree)
                     if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
            assert test in names, f"docs/security.md names {path}::{test}, which does not exist"
