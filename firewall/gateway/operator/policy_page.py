"""The console's policy page: every tool of every server, its state, and edits.

Rules this module keeps (the pure part is :mod:`firewall.policy.editing`):

1. The tools shown for a server are those its policy names exactly, those
   the audit trail has seen called on it, and those it offered in a
   ``tools/list`` answer that passed through this process
   (:class:`ToolCatalog`). Each has the state the table in force gives it.
2. One file per server takes the edits: the server's own policy file when it
   has exactly one, else the fleet-wide file when there is exactly one (an
   edit there applies to every server that reads it, and the page says so).
   The file must be JSON or YAML in mcpwall's format or PolicyLayer's hosted
   one (an edit writes only keys both have: ``action``, ``reason``, ``hide``);
   otherwise (TOML, Intercept's YAML) the server is shown read-only with the
   reason.
3. An edit is made only against the version of the file the operator saw
   (its SHA-256; another version is 409), one at a time, and only if the
   whole policy (every file, the edited one replaced) loads and compiles.
   Then the file is copied to a timestamped backup beside it (the newest
   :data:`BACKUPS_KEPT` are kept), replaced atomically, and reloaded the way
   ``POST /api/policy/reload`` does. A ``policy_edit`` lifecycle event names
   the operator, the tool, both states, the file, its digests and the backup.
4. File work runs in a worker thread; nothing here blocks the event loop.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import msgspec
import trio
import yaml

from firewall.audit.events import AuditPoint, append_lifecycle
from firewall.audit.query import Sources
from firewall.audit.store import StoreError
from firewall.config import Config
from firewall.policy.compiler import compile_policies
from firewall.policy.editing import (
    HIDE_ALL,
    SETTABLE,
    EditError,
    hidden_names,
    set_state,
    tool_state,
)
from firewall.policy.engine import PolicySet
from firewall.policy.foreign import detect, literal_name
from firewall.policy.schema import PolicyError, load_policy, read_document

BACKUPS_KEPT: Final = 20
EDITABLE_SUFFIXES: Final = (".json", ".yaml", ".yml")
TOOLS_PER_SERVER: Final = 2000  # seen tools remembered per server
# What follows the file's name in a backup's: ".20250101T120000Z-0123abcd.bak".
_BACKUP: Final = re.compile(r"\.\d{8}T\d{6}Z-[0-9a-f]{8}\.bak")


class PageError(Exception):
    """An edit refused: ``status`` is the HTTP status, the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ToolCatalog:
    """The tools each server offered in tools/list answers seen by this process."""

    def __init__(self) -> None:
        self._tools: dict[str, set[str]] = {}

    def offered(self, server: str, names: list[str]) -> None:
        known = self._tools.setdefault(server, set())
        if len(known) < TOOLS_PER_SERVER:
            known.update(names[: TOOLS_PER_SERVER - len(known)])

    def tools(self, server: str) -> set[str]:
        return set(self._tools.get(server, ()))


class EditBody(msgspec.Struct, forbid_unknown_fields=True):
    """``POST /api/policy/tools``: set one tool of one server to a state."""

    server: str
    tool: str
    state: str
    sha256: str | None = None       # the version of the file the operator saw
    replace_custom: bool = False


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _parse(path: Path, raw: bytes) -> dict[str, Any]:
    """The file's data, read as strictly as the policy loader reads it (a
    duplicate key is an error, never "the last one wins")."""
    try:
        return read_document(raw, path.name)
    except PolicyError as exc:
        raise EditError(str(exc)) from None


def _is_backup(path: Path, name: str) -> bool:
    """Whether ``path`` is a backup this page made of file ``name``."""
    return (path.name.startswith(name)
            and _BACKUP.fullmatch(path.name[len(name):]) is not None)


def _dump(path: Path, data: dict[str, Any]) -> bytes:
    if path.suffix == ".json":
        return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode()
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).encode()


class PolicyPage:
    """Reads the states the page shows and makes its edits."""

    def __init__(self, config: Config, policy: object, audit: AuditPoint | None,
                 reload: Callable[..., Any], catalog: ToolCatalog | None = None) -> None:
        self.config = config
        self.policy = policy
        self.audit = audit
        self.reload = reload
        self.catalog = catalog or ToolCatalog()
        self._lock = trio.Lock()

    # -- which file -----------------------------------------------------
    def files(self, server: str) -> list[Path]:
        own = self.config.servers[server].policy if server in self.config.servers else []
        return [Path(p) for p in [*self.config.policy.files, *own]]

    def editable(self, server: str) -> tuple[Path | None, str]:
        """The file an edit of ``server`` goes to, or None and why not (rule 2)."""
        if not isinstance(self.policy, PolicySet):
            return None, "no policy files are configured ([policy] files)"
        own = [Path(p) for p in self.config.servers[server].policy] \
            if server in self.config.servers else []
        fleet = [Path(p) for p in self.config.policy.files]
        if own:
            if len(own) != 1:
                return None, f"server {server!r} has {len(own)} policy files: edit them by hand"
            path = own[0]
        elif len(fleet) == 1:
            path = fleet[0]
        else:
            return None, (f"{len(fleet)} fleet-wide policy files and none of the server's own: "
                          "edit them by hand")
        if path.suffix not in EDITABLE_SUFFIXES:
            return None, f"{path.name}: only JSON and YAML policy files are edited here"
        try:
            written = detect(_parse(path, path.read_bytes()))
        except (OSError, ValueError, EditError, yaml.YAMLError):
            written = "mcpwall"  # unreadable now: the edit itself will say why
        if written == "intercept":
            return None, (f"{path.name} is an Intercept policy: edit it in its own format "
                          "(or `mcpwall convert` it to mcpwall's)")
        return path, "fleet" if not own else "server"

    # -- view -----------------------------------------------------------
    def _seen(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        try:
            with Sources.open([Path(self.config.audit.path)]) as src:
                sql = "SELECT DISTINCT server, tool FROM calls WHERE tool IS NOT NULL"
                for rows in src.each(sql, [], older=(sql, [])):
                    for r in rows:
                        out.setdefault(str(r["server"]), set()).add(str(r["tool"]))
        except (StoreError, OSError, Exception):  # no trail yet, or an unreadable one
            return out
        return out

    def _view(self) -> dict[str, Any]:
        seen = self._seen()
        servers = []
        for name in sorted(self.config.servers):
            path, why = self.editable(name)
            entry: dict[str, Any] = {"name": name, "file": str(path) if path else None,
                                     "applies_to": why if path else None,
                                     "read_only": None if path else why, "sha256": None,
                                     "tools": []}
            hidden: set[str] = set()
            for f in self.files(name):
                try:
                    hidden |= hidden_names(_parse(f, f.read_bytes()))
                except (OSError, ValueError, EditError, yaml.YAMLError):
                    continue
            if path is not None:
                try:
                    entry["sha256"] = _sha256(path.read_bytes())
                except OSError as exc:
                    entry["read_only"] = f"cannot read {path.name}: {exc.strerror}"
                    entry["file"] = None
            if isinstance(self.policy, PolicySet):
                table = self.policy.engine.compiled.table(name)
                named = {n for e in table.tools.entries
                         if e.rule != "hide" and (n := literal_name(e.pattern)) is not None}
                offered = self.catalog.tools(name) | seen.get(name, set())
                for tool in sorted(named | offered | (hidden - {HIDE_ALL})):
                    hide = tool in hidden or HIDE_ALL in hidden
                    state = tool_state(table, name, tool, hide, tool in offered)
                    entry["tools"].append(msgspec.structs.asdict(state))
            servers.append(entry)
        return {"servers": servers, "states": list(SETTABLE)}

    async def view(self) -> dict[str, Any]:
        """Every server with its tools and their states (rule 1)."""
        return await trio.to_thread.run_sync(self._view)

    # -- edit -----------------------------------------------------------
    def _write(self, body: EditBody, by: str) -> dict[str, Any]:
        """Check, back up and replace the file (rules 2, 3); no reload."""
        assert isinstance(self.policy, PolicySet)
        path, why = self.editable(body.server)
        if path is None:
            raise PageError(409, f"server {body.server!r} cannot be edited here: {why}")
        raw = path.read_bytes()
        before = _sha256(raw)
        if body.sha256 is not None and body.sha256 != before:
            raise PageError(409, f"{path.name} changed since the page was loaded: reload it")
        try:
            data = _parse(path, raw)
        except EditError as exc:
            raise PageError(422, f"the file as it is now does not load: {exc}") from None
        table = self.policy.engine.compiled.table(body.server)
        hidden = hidden_names(data)
        was = tool_state(table, body.server, body.tool,
                         body.tool in hidden or HIDE_ALL in hidden).state
        try:
            new = set_state(data, body.tool, body.state, by=by,
                            replace_custom=body.replace_custom)
        except EditError as exc:
            raise PageError(400, str(exc)) from None
        text = _dump(path, new)
        tmp = path.with_name(f".{path.name}.edit-{os.getpid()}")
        tmp.write_bytes(text)
        try:
            try:
                edited = load_policy(tmp)
                loaded = {p: edited if p == path else load_policy(p)
                          for p in {*self.policy.fleet,
                                    *(q for qs in self.policy.servers.values() for q in qs)}}
                compile_policies([loaded[p] for p in self.policy.fleet],
                                 {n: [loaded[p] for p in ps]
                                  for n, ps in self.policy.servers.items()})
            except PolicyError as exc:
                raise PageError(422, f"the edited policy would not load: "
                                     f"{str(exc).replace(tmp.name, path.name)}") from None
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            backup = path.with_name(f"{path.name}.{stamp}-{before[:8]}.bak")
            backup.write_bytes(raw)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        made = sorted(p for p in path.parent.iterdir() if _is_backup(p, path.name))
        for old in made[:-BACKUPS_KEPT]:
            old.unlink(missing_ok=True)
        return {"server": body.server, "tool": body.tool, "from": was, "to": body.state,
                "file": str(path), "applies_to": why, "sha256_before": before,
                "sha256_after": _sha256(text), "backup": str(backup), "by": by}

    async def edit(self, body: EditBody, by: str) -> dict[str, Any]:
        """Set one tool's state in its file, then reload (rule 3)."""
        if body.server not in self.config.servers:
            raise PageError(404, f"no server {body.server!r} in the config")
        if not isinstance(self.policy, PolicySet):
            raise PageError(409, "no policy files are configured: nothing to edit")
        async with self._lock:
            change = await trio.to_thread.run_sync(self._write, body, by)
            await append_lifecycle(self.audit, "policy_edit", detail=change)
            result = await self.reload(self.policy, self.audit, "console", by=by)
        change["reload"] = msgspec.structs.asdict(result) if result is not None else None
        return change


__all__ = ["BACKUPS_KEPT", "EditBody", "PageError", "PolicyPage", "ToolCatalog"]
