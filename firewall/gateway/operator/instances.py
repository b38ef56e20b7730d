"""The registry of running instances: one small JSON file per ``serve`` or ``wrap``.

``mcpwall status`` reads it to find what runs on this machine and where each
instance keeps its audit trail. Rules this module keeps:

1. One file per process, ``PID.json``, in the registry directory:
   ``$MCPWALL_REGISTRY`` if set, else ``$XDG_RUNTIME_DIR/mcpwall``, else
   ``mcpwall-UID`` in the temporary directory. A directory we create is
   ``0700``; one that is not a directory of ours (a symlink, another user's,
   one others can write to) is refused, so nobody else can plant entries. An
   entry is read as data: a pid no process can have is a stale entry.
2. A file is written whole (a temporary file renamed over it) and removed when
   the process ends; a reader never sees half an entry.
3. An entry whose process is gone (its pid is dead, or reused by a process
   that started at another time: ``/proc/PID/stat`` field 22) is stale: it is
   ignored and its file removed by whoever reads it. So is a file that does
   not parse and whose pid is dead.
4. The registry is a convenience, never a condition: a registry that cannot
   be written is logged and the instance runs on.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final, Literal

import msgspec

from firewall.log import get_logger

ENV: Final = "MCPWALL_REGISTRY"


class RegistryError(Exception):
    """The registry directory cannot be used (the message says why)."""


class Instance(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=False):
    """What one running instance says about itself."""

    pid: int
    kind: Literal["serve", "wrap"]
    started: str  # ISO 8601, UTC
    started_ns: int
    instance: str  # its id in the audit trail (host:pid)
    command: list[str] = msgspec.field(default_factory=list)
    config: str | None = None
    audit: str | None = None  # its audit database, absolute; None: no audit trail
    listen: list[str] = msgspec.field(default_factory=list)  # serve: the front's URLs
    operator: list[str] = msgspec.field(default_factory=list)  # serve: the operator API
    servers: list[str] = msgspec.field(default_factory=list)
    upstream: str | None = None  # wrap: the server's URL or command
    session: str | None = None  # wrap: its one session
    boot: int | None = None  # start time in clock ticks since boot (Linux), tells a reused pid


_decoder: Final = msgspec.json.Decoder(Instance)
_encoder: Final = msgspec.json.Encoder()


def registry_dir(override: str | Path | None = None) -> Path:
    """Where the registry lives (rule 1), created if missing; RegistryError if unusable."""
    if override is not None:
        path = Path(override)
    elif os.environ.get(ENV):
        path = Path(os.environ[ENV])
    elif os.environ.get("XDG_RUNTIME_DIR") and Path(os.environ["XDG_RUNTIME_DIR"]).is_dir():
        path = Path(os.environ["XDG_RUNTIME_DIR"]) / "mcpwall"
    else:
        path = Path(tempfile.gettempdir()) / f"mcpwall-{os.getuid()}"
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.lstat()
    except OSError as exc:
        raise RegistryError(f"{path}: {exc.strerror or exc}") from None
    if not path.is_dir() or path.is_symlink():
        raise RegistryError(f"{path}: not a directory")
    if st.st_uid != os.getuid():
        raise RegistryError(f"{path}: owned by another user")
    if st.st_mode & 0o022:
        raise RegistryError(f"{path}: others can write to it (mode "
                            f"{st.st_mode & 0o7777:o}); make it 0700")
    return path


def boot_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), or None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after it.
    fields = stat[stat.rfind(")") + 2:].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _exists(pid: int) -> bool | None:
    """Whether a process ``pid`` exists: None when it does under another user.
    A pid no process can have (0 or less names a process group, a huge one is
    no pid at all) is False."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return None
    return True


def alive(entry: Instance) -> bool:
    """Whether the process the entry names still runs (and is the same process)."""
    if _exists(entry.pid) is False:
        return False
    if entry.boot is not None:
        now = boot_ticks(entry.pid)
        if now is not None and now != entry.boot:
            return False  # the pid was reused
    return True


def describe(kind: Literal["serve", "wrap"], instance: str, **fields: object) -> Instance:
    """The entry of this process: pid, start time and command filled in, and the
    ``audit`` and ``config`` paths made absolute."""
    now = time.time_ns()
    for key in ("audit", "config"):
        value = fields.get(key)
        if isinstance(value, str):
            fields[key] = os.path.abspath(value)
    return msgspec.convert({
        "pid": os.getpid(), "kind": kind, "instance": instance, "started_ns": now,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now / 1e9)),
        "command": list(sys.argv), "boot": boot_ticks(os.getpid()),
        **{k: v for k, v in fields.items() if v is not None}}, Instance)


def write(entry: Instance, directory: Path) -> Path:
    """Write ``entry`` whole as ``PID.json`` (rule 2); returns its path."""
    path = directory / f"{entry.pid}.json"
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{entry.pid}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(_encoder.encode(entry))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def running(directory: Path) -> list[Instance]:
    """The live instances, oldest first; stale entries are removed (rule 3)."""
    found: list[Instance] = []
    for path in sorted(directory.glob("*.json")):
        try:
            entry: Instance | None = _decoder.decode(path.read_bytes())
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            entry = None
        if entry is not None and alive(entry):
            found.append(entry)
            continue
        if entry is None and not _dead_name(path):
            continue  # unreadable, but its process may be writing it: left alone
        with contextlib.suppress(OSError):
            path.unlink()
    found.sort(key=lambda e: (e.started_ns, e.pid))
    return found


def _dead_name(path: Path) -> bool:
    """True when the file is named after a pid that no longer runs."""
    try:
        pid = int(path.stem)
    except ValueError:
        return False
    return _exists(pid) is False


@contextlib.contextmanager
def registered(entry: Instance, directory: Path | None = None) -> Iterator[Path | None]:
    """Keep ``entry`` in the registry while the block runs; None if it could not
    be written (rule 4)."""
    log = get_logger(component="registry")
    try:
        path: Path | None = write(entry, directory or registry_dir())
    except (OSError, RegistryError) as exc:
        log.warning("registry_unavailable", error=str(exc))
        path = None
    try:
        yield path
    finally:
        if path is not None:
            with contextlib.suppress(OSError):
                path.unlink()


__all__ = ["ENV", "Instance", "RegistryError", "alive", "describe", "registered",
           "registry_dir", "running", "write"]
