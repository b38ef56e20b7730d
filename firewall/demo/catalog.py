"""The demo server's tool catalog: the real Virtualization MCP tool surface.

``tools.json`` is a verbatim tools/list capture of the Virtualization MCP
server (serverInfo, protocolVersion and nine portmanteau tools). The demo
serves those definitions unchanged, so policy packs written for the real
server apply to the demo as they are.

Argument checking covers the shapes those schemas use (``type``, ``enum``,
``anyOf``, ``required``, ``additionalProperties: false``, ``default``); it is
deliberately small instead of a full JSON Schema validator, which would add a
runtime dependency for nine fixed schemas.

Example::

    catalog = load()
    args = catalog.check("vm_management", {"action": "list"})
    assert args["limit"] == 100   # defaults filled in
"""

from __future__ import annotations

import importlib.resources
import json
from dataclasses import dataclass
from typing import Any, Final

# Wire names of the Tool fields; the capture stores ``_meta`` as ``meta``.
_RENAMED: Final = {"meta": "_meta"}

_JSON_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
    "object": (dict,),
    "array": (list,),
}


class ArgumentError(ValueError):
    """Arguments that do not fit a tool's inputSchema; the text says why."""


@dataclass(frozen=True, slots=True)
class Catalog:
    """Server identity and tool definitions, as loaded from a tools/list capture."""

    server_name: str
    server_version: str
    tools: tuple[dict[str, Any], ...]

    def tool(self, name: str) -> dict[str, Any] | None:
        """The wire definition of tool ``name``, or None when there is none."""
        for tool in self.tools:
            if tool["name"] == name:
                return tool
        return None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(tool["name"] for tool in self.tools)

    def check(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """Validate ``arguments`` for tool ``name``; return them with defaults filled.

        Raises :class:`ArgumentError` (unknown argument, missing required one,
        wrong type, value outside an enum) and :class:`KeyError` for an unknown tool.
        """
        tool = self.tool(name)
        if tool is None:
            raise KeyError(name)
        return check_object(tool["inputSchema"], arguments)


def check_object(schema: dict[str, Any], arguments: dict[str, Any]) -> dict[str, Any]:
    """Check an object against an object schema; return it with defaults filled."""
    properties: dict[str, Any] = schema.get("properties", {})
    if schema.get("additionalProperties") is False:
        unknown = sorted(set(arguments) - set(properties))
        if unknown:
            raise ArgumentError(
                f"unknown argument {unknown[0]!r}; expected one of: {', '.join(properties)}"
            )
    for name in schema.get("required", ()):
        if name not in arguments:
            raise ArgumentError(f"missing required argument {name!r}")
    filled: dict[str, Any] = {}
    for name, prop in properties.items():
        if name in arguments:
            problem = _mismatch(prop, arguments[name])
            if problem is not None:
                raise ArgumentError(f"argument {name!r}: {problem}")
            filled[name] = arguments[name]
        elif "default" in prop:
            filled[name] = prop["default"]
    return filled


def _mismatch(schema: dict[str, Any], value: Any) -> str | None:
    """Why ``value`` does not fit ``schema``, or None when it does."""
    if "anyOf" in schema:
        problems = [_mismatch(option, value) for option in schema["anyOf"]]
        if all(problems):
            return " or ".join(p for p in problems if p)
        return None
    expected = schema.get("type")
    if expected is not None and not _is_type(value, expected):
        return f"expected {expected}, got {_json_type(value)}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{value!r} is not one of: {', '.join(map(str, schema['enum']))}"
    return None


def _is_type(value: Any, expected: str) -> bool:
    if isinstance(value, bool) and expected in ("integer", "number"):
        return False
    return isinstance(value, _JSON_TYPES.get(expected, (object,)))


def _json_type(value: Any) -> str:
    for name in _JSON_TYPES:
        if _is_type(value, name):
            return name
    return type(value).__name__


def from_capture(capture: dict[str, Any]) -> Catalog:
    """Build a catalog from a tools/list capture (``serverInfo``, ``tools``)."""
    info = capture["serverInfo"]
    tools = tuple(
        {_RENAMED.get(key, key): value for key, value in tool.items() if value is not None}
        for tool in capture["tools"]
    )
    return Catalog(server_name=info["name"], server_version=info["version"], tools=tools)


def load() -> Catalog:
    """The catalog shipped with the package (``firewall/demo/tools.json``)."""
    text = importlib.resources.files("firewall.demo").joinpath("tools.json").read_text("utf-8")
    return from_capture(json.loads(text))
