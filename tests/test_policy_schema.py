"""Policy files: formats, strictness, error paths, JSON Schema; argument conditions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from firewall.policy.arguments import compile_conditions, normalise_path
from firewall.policy.compiler import compile_policy
from firewall.policy.schema import (
    Condition,
    PolicyError,
    json_schema,
    load_policy,
    parse_policy,
)

SEED = ('{"version":"1","default":"deny","tools":{"vm_management":{"limits":[{"counter":'
        '"vm_management_rate","window":"minute","max":10,"scope":"grant"}]}}}')


def test_seed_loads_verbatim() -> None:
    policy = parse_policy(SEED)
    limit = policy.tools["vm_management"].limits[0]
    assert (limit.counter, limit.window, limit.max, limit.scope) == (
        "vm_management_rate", "minute", 10, "grant")


@pytest.mark.parametrize(("text", "where"), [
    ('{"tools":{"vm":{"limits":[{"max":1,"windw":"minute"}]}}}', "tools.vm.limits[0]"),
    ('{"tools":{"a.b":{"rules":[{"when":{"x":{"pattren":"a"}}}]}}}',
     'tools["a.b"].rules[0].when.x'),
    ('{"defualt":"deny"}', "(top level)"),
    ('{"default":"allw"}', "default"),
    ('{"tools":{"vm":{"limits":[{"max":0}]}}}', "tools.vm.limits[0].max"),
    ('{"tools":{"vm":{"limits":[{"max":1,"window":"week"}]}}}', "tools.vm.limits[0].window"),
    ('{"tools":{"vm":{"limits":[{"max":1,"scope":"user"}]}}}', "tools.vm.limits[0].scope"),
    ('{"tools":{"vm":{"action":"allow","action":"deny"}}}', "duplicate key 'action'"),
    ('{"version":"2"}', "version"),
    ("[1]", "expected an object"),
    ("{", "not valid JSON"),
])
def test_errors_name_file_and_key_path(text: str, where: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.json")
    assert str(info.value).startswith("p.json: ")
    assert where in str(info.value)


@pytest.mark.parametrize(("doc", "where"), [
    ({"tools": {"t": {"require": {"x": {"pattern": "("}}}}}, "tools.t.require.x.pattern"),
    ({"tools": {"t": {"require": {"x": {"path_under": "relative"}}}}},
     "tools.t.require.x.path_under"),
    ({"tools": {"t": {"require": {"x": {"min": 3, "max": 1}}}}}, "tools.t.require.x"),
    ({"tools": {"t": {"require": {"x": {"in": []}}}}}, "tools.t.require.x.in"),
    ({"tools": {"t": {"rules": [{"when": {"a[": {}}}]}}}, "tools.t.rules[0].when.a["),
])
def test_semantic_errors_name_the_key_path(doc: dict[str, Any], where: str) -> None:
    with pytest.raises(PolicyError, match=r"^p\.json: " + where.replace("[", r"\[")
                       .replace(".", r"\.")):
        compile_policy(parse_policy(json.dumps(doc)), source="p.json")


def test_toml_and_yaml_and_duplicate_yaml_keys(tmp_path: Path) -> None:
    toml = tmp_path / "p.toml"
    toml.write_text('version = "1"\ndefault = "deny"\n[tools.vm_management]\n'
                    'limits = [{counter = "c", window = "minute", max = 10}]\n')
    yml = tmp_path / "p.yaml"
    yml.write_text("version: '1'\ndefault: deny\ntools:\n  vm_management:\n"
                   "    limits: [{counter: c, window: minute, max: 10}]\n")
    assert load_policy(toml).policy == load_policy(yml).policy
    assert len(load_policy(toml).sha256) == 64
    bad = tmp_path / "bad.yaml"
    bad.write_text("tools: {}\ntools: {}\n")
    with pytest.raises(PolicyError, match="duplicate key 'tools'"):
        load_policy(bad)
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "missing.json")


def test_json_schema_describes_the_format() -> None:
    schema = json_schema()
    defs = schema["$defs"]
    assert schema["$ref"] == "#/$defs/Policy"
    for name in ("Policy", "ToolEntry", "ArgumentRule", "Condition", "Limit", "TargetEntry"):
        assert defs[name]["additionalProperties"] is False, name
    assert "$schema" in defs["Policy"]["properties"]
    assert {"in", "path_under", "optional", "nullable"} <= set(defs["Condition"]["properties"])


def _check(cond: dict[str, Any], args: dict[str, Any]) -> list[str]:
    checks = compile_conditions({"x": msgspec.convert(cond, Condition)}, "t")
    return [c.condition for c in checks if not c.test(args)]


@pytest.mark.parametrize(("cond", "value", "failed"), [
    ({"in": ["a", "b"]}, "a", []),
    ({"in": ["a", "b"]}, "c", ["in"]),
    ({"in": [1, "a"]}, True, ["in"]),
    ({"in": [1]}, 1.0, []),
    ({"const": True}, 1, ["const"]),
    ({"const": None}, None, []),
    ({"pattern": "[a-z]+"}, "abc", []),
    ({"pattern": "[a-z]+"}, "abc1", ["pattern"]),
    ({"pattern": "[a-z]+"}, 5, ["pattern"]),
    ({"not_pattern": "-.*"}, "--output", ["not_pattern"]),
    ({"not_pattern": "-.*"}, "main", []),
    ({"prefix": "/srv"}, "/srv/x", []),
    ({"min": 1, "max": 10}, 0, ["min"]),
    ({"min": 1, "max": 10}, 11, ["max"]),
    ({"min": 1, "max": 10}, True, ["min", "max"]),
    ({"max_length": 2}, "abc", ["max_length"]),
    ({"max_length": 2}, [1, 2], []),
    ({"min_length": 1}, "", ["min_length"]),
    ({"type": "integer"}, 2.0, []),
    ({"type": "integer"}, True, ["type"]),
    ({"type": "number"}, False, ["type"]),
    ({"type": "object"}, {}, []),
    ({"path_under": "/srv/data"}, "/srv/data", []),
    ({"path_under": "/srv/data"}, "/srv/database", ["path_under"]),
    ({"path_under": "/srv/data"}, "/srv/data/../secrets", ["path_under"]),
    ({"path_under": "/srv/data"}, "//srv/data/./a", []),
    ({"path_under": "/srv/data"}, "srv/data/a", ["path_under"]),
    ({"path_under": "/srv/data"}, "/srv/data/a\x00", ["path_under"]),
    ({"path_under": "C:\\Data"}, "c:\\data\\x\\..\\y", []),
    ({"path_under": "C:\\Data"}, "C:\\Data\\..\\Windows", ["path_under"]),
    ({}, "anything", []),
])
def test_conditions(cond: dict[str, Any], value: Any, failed: list[str]) -> None:
    assert _check(cond, {"x": value}) == failed


def test_missing_optional_nullable() -> None:
    assert _check({"in": ["a"]}, {}) == ["in"]
    assert _check({}, {}) == ["present"]
    assert _check({"in": ["a"], "optional": True}, {}) == []
    assert _check({"in": ["a"], "optional": True}, {"x": None}) == ["in"]
    assert _check({"in": ["a"], "nullable": True}, {"x": None}) == []


def test_arrays_and_nested_paths() -> None:
    checks = compile_conditions({"files[*]": Condition(not_pattern="-.*"),
                                 "opts.mode": Condition(in_=["r"])}, "t")

    def failed(args: dict[str, Any]) -> list[str]:
        return [c.argument for c in checks if not c.test(args)]

    assert failed({"files": ["a", "b"], "opts": {"mode": "r"}}) == []
    assert failed({"files": [], "opts": {"mode": "r"}}) == []
    assert failed({"files": ["a", "-A"], "opts": {"mode": "w"}}) == ["files[*]", "opts.mode"]
    assert failed({"files": "a", "opts": "r"}) == ["files[*]", "opts.mode"]
    assert failed({}) == ["files[*]", "opts.mode"]
    msg = checks[0].message
    assert "files[*]" in msg and "(not_pattern)" in msg


@given(st.lists(st.sampled_from(["a", "b", "..", ".", "", "data", "srv"]), max_size=8))
def test_path_under_never_escapes(segments: list[str]) -> None:
    path = "/srv/data/" + "/".join(segments)
    norm = normalise_path(path)
    assert norm is not None and ".." not in norm.split("/")
    (check,) = compile_conditions({"p": Condition(path_under="/srv/data")}, "t")
    # Resolve by hand: a stack of segments.
    stack: list[str] = []
    for seg in path.split("/"):
        if seg == "..":
            if stack:
                stack.pop()
        elif seg not in ("", "."):
            stack.append(seg)
    assert check.test({"p": path}) == (stack[:2] == ["srv", "data"])
