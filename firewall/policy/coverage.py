"""How well policies fit a server: what it offers that no entry names, and what
the entries name that it does not offer.

Pure: policies already loaded and the server's ``tools/list`` and
``prompts/list`` items in; a :class:`Coverage` out. ``mcpwall scan --against``
does the I/O.

- ``uncovered``: a tool (or prompt) of the server that no entry matches, by
  exact name or glob: its calls get the policy default.
- ``missing``: an exact entry naming a tool (or prompt) the server does not
  list, or a glob that matches none of them: it decides nothing for this server.
- ``findings``: :func:`firewall.policy.lint.lint` with the tools list (conditions
  on arguments a tool does not take, values outside an enum, shadowed rules).

A policy fits when ``uncovered`` and ``missing`` are both empty.

Example::

    report = coverage([load_policy(Path("rules/git.json"))], tools)
    [gap.name for gap in report.uncovered]
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import msgspec

from firewall.policy.compiler import RANK, is_glob
from firewall.policy.lint import Finding, lint
from firewall.policy.schema import LoadedPolicy, join_key

Table = Literal["tools", "prompts"]


class Gap(msgspec.Struct, frozen=True):
    """One name on one side only; ``where`` is the policy key path for ``missing``."""

    table: Table
    name: str
    detail: str
    where: str | None = None


class Coverage(msgspec.Struct, frozen=True):
    """The gaps between policies and a server, and lint's findings with its tools."""

    default: str
    uncovered: list[Gap]
    missing: list[Gap]
    findings: list[Finding]

    @property
    def fits(self) -> bool:
        """True when every offered name has an entry and every entry a name."""
        return not self.uncovered and not self.missing


def _names(items: Sequence[Mapping[str, Any]]) -> list[str]:
    return sorted({str(i["name"]) for i in items if isinstance(i.get("name"), str)})


def coverage(policies: Sequence[LoadedPolicy], tools: Sequence[Mapping[str, Any]],
             prompts: Sequence[Mapping[str, Any]] = ()) -> Coverage:
    """Compare ``policies`` (applying together) with what a server lists."""
    defaults = [p.policy.default for p in policies if p.policy.default is not None]
    default = max(defaults, key=lambda a: RANK[a]) if defaults else "deny"
    uncovered: list[Gap] = []
    missing: list[Gap] = []
    offered: dict[Table, list[str]] = {"tools": _names(tools), "prompts": _names(prompts)}
    for table, names in offered.items():
        keys = [(loaded, key) for loaded in policies
                for key in getattr(loaded.policy, table)]
        for name in names:
            if not any(fnmatch.fnmatchcase(name, key) for _, key in keys):
                uncovered.append(Gap(table, name, f"no entry: the default ({default}) applies"))
        for loaded, key in keys:
            where = f"{loaded.source}: {join_key(table, key)}"
            singular = table[:-1]
            if is_glob(key):
                if not any(fnmatch.fnmatchcase(n, key) for n in names):
                    missing.append(Gap(table, key, f"the glob matches no {singular} of the "
                                                   f"server", where))
            elif key not in names:
                missing.append(Gap(table, key, f"the server has no {singular} {key!r}", where))
    told = {gap.where for gap in missing}
    findings = [f for f in lint(policies, [dict(t) for t in tools])
                if f.level != "info" and f.where not in told]
    return Coverage(default, uncovered, missing, findings)


__all__ = ["Coverage", "Gap", "coverage"]
