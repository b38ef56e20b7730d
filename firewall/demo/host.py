"""A simulated virtualization host: the state behind the demo server's tools.

Rules this module keeps:

1. Nothing here touches the real machine: no subprocess, no file or network
   I/O. Sandbox "execution" is canned text; disk and screenshot paths are
   names in an in-memory registry, never files.
2. Every action returns a result dict or raises :class:`HostError` with a
   sentence meant for the caller; :meth:`Host.call` turns both into a
   :class:`ToolResult`, so an action never escapes as an exception.
3. State changes only inside :meth:`Host.call`, one call at a time, in the
   order calls arrive. A failed action changes nothing.
4. Invariants: VM names are unique and their ``state`` is one of
   ``running``, ``stopped``, ``paused``; a disk is attached to at most one VM
   and only through a controller that VM has; an adapter on a host-only
   network names a network that exists; the memory of running and paused VMs
   never exceeds the host's.

Example::

    host = Host(catalog.load())
    host.call("vm_management", {"action": "start", "vm_name": "db-01"}).data["state"]
    # -> "running"
"""

from __future__ import annotations

import ipaddress
import re
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from firewall.demo.catalog import ArgumentError, Catalog

RUNNING: Final = "running"
STOPPED: Final = "stopped"
PAUSED: Final = "paused"

HOST_NAME: Final = "demo-host"
HOST_CPUS: Final = 16
HOST_MEMORY_MB: Final = 65536
VBOX_VERSION: Final = "7.1.4r165100"
ADAPTER_SLOTS: Final = 4
NETWORK_TYPES: Final = ("nat", "bridged", "hostonly", "internal", "generic", "natnetwork")
MAX_FILE_BYTES: Final = 1 << 20

_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}")
_OS_FAMILIES: Final = {"Windows": "Windows", "MacOS": "MacOS", "Other": "Other"}
_PROXMOX_OPERATIONS: Final = (
    "list_vms", "start_vm", "stop_vm", "shutdown_vm", "status", "create_snapshot",
    "list_snapshots", "delete_snapshot", "node_status", "cluster_resources",
)
_SANDBOX_IMAGES: Final = {"python": "python:3.13-slim", "javascript": "node:22-slim",
                          "bash": "bash:5"}


class HostError(Exception):
    """An action the host refuses; the message is shown to the caller as a tool error."""


@dataclass(frozen=True, slots=True)
class ToolResult:
    """The outcome of one tool call.

    ``data`` is the structured result when the call succeeded, ``error`` the
    message when it did not. ``steps`` names the stages of a long-ish action
    (progress notifications); ``event`` is a snake_case fact for the log
    (``vm_started``); ``inventory_changed`` says the set of VMs changed.
    """

    data: dict[str, Any] | None = None
    error: str | None = None
    steps: tuple[str, ...] = ()
    event: str | None = None
    inventory_changed: bool = False

    @property
    def is_error(self) -> bool:
        return self.error is not None


@dataclass(slots=True)
class Snapshot:
    name: str
    description: str
    taken_at: str
    state: str
    memory_mb: int
    cpus: int

    def view(self, current: bool) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "taken_at": self.taken_at,
                "vm_state": self.state, "current": current}


@dataclass(slots=True)
class Adapter:
    slot: int
    mac: str
    network_type: str = "none"
    network_name: str | None = None

    def view(self) -> dict[str, Any]:
        return {"slot": self.slot, "enabled": self.network_type != "none", "mac": self.mac,
                "network_type": self.network_type, "network_name": self.network_name}


@dataclass(slots=True)
class Disk:
    path: str
    name: str
    size_gb: int
    vm: str | None = None
    controller: str | None = None

    def view(self) -> dict[str, Any]:
        return {"path": self.path, "name": self.name, "size_gb": self.size_gb,
                "attached_to": self.vm, "controller": self.controller}


@dataclass(slots=True)
class Network:
    name: str
    ip_address: str
    netmask: str

    def view(self) -> dict[str, Any]:
        return {"name": self.name, "ip_address": self.ip_address, "netmask": self.netmask,
                "dhcp": False, "status": "up"}


@dataclass(slots=True)
class VM:
    name: str
    uuid: str
    vmid: int
    os_type: str
    memory_mb: int
    cpus: int
    created_at: str
    state: str = STOPPED
    state_since: str = ""
    adapters: list[Adapter] = field(default_factory=list)
    controllers: dict[str, str] = field(default_factory=dict)
    snapshots: dict[str, Snapshot] = field(default_factory=dict)
    current_snapshot: str | None = None


@dataclass(slots=True)
class Sandbox:
    sandbox_id: str
    name: str
    image: str
    created_at: str
    files: dict[str, str] = field(default_factory=dict)
    commands_run: int = 0


Args = dict[str, Any]


class Host:
    """The in-memory inventory: VMs, snapshots, networks, disks, sandboxes."""

    def __init__(self, catalog: Catalog, now: Callable[[], datetime] | None = None) -> None:
        self.catalog = catalog
        self._now = now or (lambda: datetime.now(UTC))
        self.vms: dict[str, VM] = {}
        self.networks: dict[str, Network] = {}
        self.disks: dict[str, Disk] = {}
        self.sandboxes: dict[str, Sandbox] = {}
        self._serial = 0
        self._tools: dict[str, Callable[[Args], ToolResult]] = {
            "vm_management": self._vm_management,
            "snapshot_management": self._snapshot_management,
            "network_management": self._network_management,
            "storage_management": self._storage_management,
            "system_management": self._system_management,
            "sandbox_management": self._sandbox_management,
            "vm_agentic_workflow": self._agentic_workflow,
            "info_tools": self._info_tools,
            "proxmox_management": self._proxmox_management,
        }
        self._seed()

    # -- the one entry point ------------------------------------------------

    def call(self, tool: str, arguments: Args) -> ToolResult:
        """Run ``tool`` with ``arguments``; bad arguments and refused actions are tool errors.

        Raises :class:`KeyError` only for a tool the catalog does not list
        (a protocol error for the caller, not a tool error).
        """
        handler = self._tools.get(tool)
        if handler is None or self.catalog.tool(tool) is None:
            raise KeyError(tool)
        try:
            checked = self.catalog.check(tool, arguments)
        except ArgumentError as exc:
            return ToolResult(error=f"invalid arguments for {tool}: {exc}")
        try:
            return handler(checked)
        except HostError as exc:
            return ToolResult(error=str(exc))

    def describe(self, name: str) -> dict[str, Any] | None:
        """The full description of VM ``name`` (the ``vm://`` resource), or None."""
        vm = self.vms.get(name)
        return None if vm is None else self._info(vm)

    # -- seed state ---------------------------------------------------------

    def _seed(self) -> None:
        self.networks["vboxnet0"] = Network("vboxnet0", "192.168.56.1", "255.255.255.0")
        presets = (("web-01", "Ubuntu22_64", 4096, 2, 40, RUNNING),
                   ("db-01", "Debian_64", 8192, 4, 100, STOPPED),
                   ("build-01", "Fedora_64", 16384, 8, 200, PAUSED))
        for name, os_type, memory, cpus, disk, state in presets:
            vm = self._new_vm(name, os_type, memory, cpus, disk)
            vm.state = state
        self.vms["web-01"].adapters[1].network_type = "hostonly"
        self.vms["web-01"].adapters[1].network_name = "vboxnet0"
        self._take_snapshot(self.vms["web-01"], "baseline", "clean install, patched")

    def _stamp(self) -> str:
        return self._now().isoformat(timespec="seconds").replace("+00:00", "Z")

    def _new_vm(self, name: str, os_type: str, memory_mb: int, cpus: int, disk_gb: int) -> VM:
        self._serial += 1
        stamp = self._stamp()
        vm = VM(name=name, uuid=str(uuid.uuid5(uuid.NAMESPACE_URL, f"vm://{name}/{self._serial}")),
                vmid=99 + self._serial, os_type=os_type, memory_mb=memory_mb, cpus=cpus,
                created_at=stamp, state_since=stamp)
        vm.adapters = [Adapter(slot, _mac(name, slot)) for slot in range(ADAPTER_SLOTS)]
        vm.adapters[0].network_type = "nat"
        vm.controllers["SATA"] = "sata"
        path = f"/vms/{name}/{name}.vdi"
        self.disks[path] = Disk(path, f"{name}.vdi", disk_gb, name, "SATA")
        self.vms[name] = vm
        return vm

    # -- lookups shared by the tools ---------------------------------------

    def _vm(self, args: Args, key: str = "vm_name") -> VM:
        name = _need(args, key)
        vm = self.vms.get(name)
        if vm is None:
            known = ", ".join(self.vms) or "none"
            raise HostError(f"no VM named {name!r} (known VMs: {known})")
        return vm

    def _set_state(self, vm: VM, state: str) -> None:
        vm.state = state
        vm.state_since = self._stamp()

    def _info(self, vm: VM) -> dict[str, Any]:
        return {
            "name": vm.name, "uuid": vm.uuid, "vmid": vm.vmid, "state": vm.state,
            "state_since": vm.state_since, "os_type": vm.os_type, "memory_mb": vm.memory_mb,
            "cpus": vm.cpus, "created_at": vm.created_at,
            "disks": [d.view() for d in self.disks.values() if d.vm == vm.name],
            "controllers": [{"name": n, "type": t} for n, t in vm.controllers.items()],
            "adapters": [a.view() for a in vm.adapters],
            "snapshots": len(vm.snapshots), "current_snapshot": vm.current_snapshot,
        }

    def _summary(self, vm: VM) -> dict[str, Any]:
        return {"name": vm.name, "uuid": vm.uuid, "state": vm.state, "os_type": vm.os_type,
                "memory_mb": vm.memory_mb, "cpus": vm.cpus}

    def _committed_memory(self) -> int:
        return sum(vm.memory_mb for vm in self.vms.values() if vm.state != STOPPED)

    # -- vm_management ------------------------------------------------------

    def _vm_management(self, args: Args) -> ToolResult:
        action = args["action"]
        if action == "list":
            vms = [self._summary(vm) for vm in self.vms.values()]
            return _ok(action, **_page(vms, args, "vms"))
        if action == "create":
            return self._create_vm(args)
        if action == "clone":
            return self._clone_vm(args)
        vm = self._vm(args)
        if action == "info":
            return _ok(action, vm=self._info(vm))
        if action == "delete":
            return self._delete_vm(vm)
        moves = {"start": ((STOPPED,), RUNNING), "stop": ((RUNNING, PAUSED), STOPPED),
                 "pause": ((RUNNING,), PAUSED), "resume": ((PAUSED,), RUNNING),
                 "reset": ((RUNNING,), RUNNING)}
        allowed, target = moves[action]
        if vm.state not in allowed:
            raise HostError(f"cannot {action} VM {vm.name!r}: it is {vm.state}"
                            + _hint(action, vm.state))
        if action == "start" and self._committed_memory() + vm.memory_mb > HOST_MEMORY_MB:
            raise HostError(f"cannot start VM {vm.name!r}: not enough free host memory "
                            f"({HOST_MEMORY_MB - self._committed_memory()} MB free, "
                            f"{vm.memory_mb} MB needed)")
        previous = vm.state
        self._set_state(vm, target)
        past = {"stop": "stopped", "reset": "reset"}.get(action, f"{action}ed")
        return _ok(action, event=f"vm_{past}", vm_name=vm.name, previous_state=previous,
                   state=vm.state, message=f"VM {vm.name!r} {past}")

    def _create_vm(self, args: Args) -> ToolResult:
        name = _valid_name(_need(args, "vm_name"), "VM")
        os_type, memory, disk = (_need(args, k) for k in ("os_type", "memory_mb", "disk_size_gb"))
        if name in self.vms:
            raise HostError(f"a VM named {name!r} already exists")
        if not 4 <= memory <= HOST_MEMORY_MB:
            raise HostError(f"memory_mb must be between 4 and {HOST_MEMORY_MB}, got {memory}")
        if not 1 <= disk <= 2048:
            raise HostError(f"disk_size_gb must be between 1 and 2048, got {disk}")
        vm = self._new_vm(name, os_type, memory, 2 if memory < 8192 else 4, disk)
        return _ok("create", event="vm_created", inventory=True,
                   steps=("registering VM", f"allocating {disk} GB disk", "configuring hardware"),
                   vm=self._info(vm), message=f"VM {name!r} created (stopped)")

    def _clone_vm(self, args: Args) -> ToolResult:
        source = self._vm(args, "source_vm")
        name = _valid_name(_need(args, "new_vm_name"), "VM")
        if name in self.vms:
            raise HostError(f"a VM named {name!r} already exists")
        size = sum(d.size_gb for d in self.disks.values() if d.vm == source.name)
        vm = self._new_vm(name, source.os_type, source.memory_mb, source.cpus, size or 1)
        for theirs, mine in zip(source.adapters, vm.adapters, strict=True):
            mine.network_type, mine.network_name = theirs.network_type, theirs.network_name
        return _ok("clone", event="vm_cloned", inventory=True,
                   steps=(f"locking {source.name}", f"copying {size} GB of disks",
                          "registering clone"),
                   source_vm=source.name, vm=self._info(vm),
                   message=f"VM {source.name!r} cloned to {name!r} (stopped)")

    def _delete_vm(self, vm: VM) -> ToolResult:
        if vm.state != STOPPED:
            raise HostError(f"cannot delete VM {vm.name!r}: it is {vm.state}; stop it first")
        del self.vms[vm.name]
        removed = [p for p, d in self.disks.items() if d.vm == vm.name]
        for path in removed:
            del self.disks[path]
        return _ok("delete", event="vm_deleted", inventory=True, vm_name=vm.name,
                   removed_disks=removed, message=f"VM {vm.name!r} deleted")

    # -- snapshot_management -----------------------------------------------

    def _take_snapshot(self, vm: VM, name: str, description: str) -> Snapshot:
        snap = Snapshot(name, description, self._stamp(), vm.state, vm.memory_mb, vm.cpus)
        vm.snapshots[name] = snap
        vm.current_snapshot = name
        return snap

    def _snapshot_management(self, args: Args) -> ToolResult:
        action = args["action"]
        vm = self._vm(args)
        if action == "list":
            snaps = [s.view(s.name == vm.current_snapshot) for s in vm.snapshots.values()]
            return _ok(action, vm_name=vm.name, **_page(snaps, args, "snapshots"))
        name = _need(args, "snapshot_name")
        if action == "create":
            _valid_name(name, "snapshot")
            if name in vm.snapshots:
                raise HostError(f"VM {vm.name!r} already has a snapshot named {name!r}")
            taken = self._take_snapshot(vm, name, args.get("description") or "")
            return _ok(action, event="snapshot_created", vm_name=vm.name,
                       snapshot=taken.view(True))
        snap = vm.snapshots.get(name)
        if snap is None:
            known = ", ".join(vm.snapshots) or "none"
            raise HostError(f"VM {vm.name!r} has no snapshot {name!r} (snapshots: {known})")
        if action == "restore":
            if vm.state == RUNNING:
                raise HostError(f"cannot restore VM {vm.name!r} while it is running; stop it first")
            vm.memory_mb, vm.cpus, vm.current_snapshot = snap.memory_mb, snap.cpus, name
            self._set_state(vm, STOPPED)
            return _ok(action, event="snapshot_restored", vm_name=vm.name, snapshot=name,
                       state=vm.state)
        del vm.snapshots[name]
        if vm.current_snapshot == name:
            vm.current_snapshot = next(reversed(vm.snapshots), None)
        return _ok(action, event="snapshot_deleted", vm_name=vm.name, snapshot=name)

    # -- network_management ------------------------------------------------

    def _network_management(self, args: Args) -> ToolResult:
        action = args["action"]
        if action == "list_networks":
            nets = [n.view() for n in self.networks.values()]
            return _ok(action, **_page(nets, args, "networks"))
        if action == "create_network":
            return self._create_network(args)
        if action == "remove_network":
            name = _need(args, "network_name")
            if name not in self.networks:
                raise HostError(f"no host-only network named {name!r}")
            users = [f"{vm.name} adapter {a.slot}" for vm in self.vms.values()
                     for a in vm.adapters if a.network_name == name]
            if users:
                raise HostError(f"network {name!r} is in use by {', '.join(users)}")
            del self.networks[name]
            return _ok(action, event="network_removed", network_name=name)
        vm = self._vm(args)
        if action == "list_adapters":
            return _ok(action, vm_name=vm.name, adapters=[a.view() for a in vm.adapters])
        slot, kind = _need(args, "adapter_slot"), _need(args, "network_type")
        if not 0 <= slot < ADAPTER_SLOTS:
            raise HostError(f"adapter_slot must be 0-{ADAPTER_SLOTS - 1}, got {slot}")
        if kind not in NETWORK_TYPES:
            raise HostError(f"network_type must be one of: {', '.join(NETWORK_TYPES)}")
        network = args.get("network_name")
        if kind == "hostonly":
            network = _need(args, "network_name")
            if network not in self.networks:
                raise HostError(f"no host-only network named {network!r}")
        adapter = vm.adapters[slot]
        adapter.network_type, adapter.network_name = kind, network
        return _ok(action, event="adapter_configured", vm_name=vm.name, adapter=adapter.view())

    def _create_network(self, args: Args) -> ToolResult:
        name = _valid_name(_need(args, "network_name"), "network")
        if name in self.networks:
            raise HostError(f"a host-only network named {name!r} already exists")
        address = args.get("ip_address") or f"192.168.{56 + len(self.networks)}.1"
        netmask = args.get("netmask") or "255.255.255.0"
        try:
            ipaddress.IPv4Network(f"{address}/{netmask}", strict=False)
        except ValueError as exc:
            raise HostError(f"invalid ip_address/netmask: {exc}") from None
        self.networks[name] = Network(name, address, netmask)
        return _ok("create_network", event="network_created", network=self.networks[name].view())

    # -- storage_management ------------------------------------------------

    def _storage_management(self, args: Args) -> ToolResult:
        action = args["action"]
        if action == "create_disk":
            name = _valid_name(_need(args, "disk_name"), "disk")
            size = _need(args, "disk_size_gb")
            if not 1 <= size <= 2048:
                raise HostError(f"disk_size_gb must be between 1 and 2048, got {size}")
            path = f"/vms/disks/{name}" if "." in name else f"/vms/disks/{name}.vdi"
            if path in self.disks:
                raise HostError(f"a disk already exists at {path!r}")
            self.disks[path] = Disk(path, path.rsplit("/", 1)[1], size)
            return _ok(action, event="disk_created", disk=self.disks[path].view())
        vm = self._vm(args)
        if action == "list_controllers":
            return _ok(action, vm_name=vm.name, controllers=[
                {"name": n, "type": t, "disks": [d.path for d in self.disks.values()
                                                 if d.vm == vm.name and d.controller == n]}
                for n, t in vm.controllers.items()])
        if action == "list_disks":
            disks = [d.view() for d in self.disks.values() if d.vm == vm.name]
            return _ok(action, vm_name=vm.name, **_page(disks, args, "disks"))
        if action == "attach_disk":
            return self._attach_disk(vm, _need(args, "disk_path"))
        name = _need(args, "controller_name")
        if action == "create_controller":
            kind = _need(args, "controller_type")
            if name in vm.controllers:
                raise HostError(f"VM {vm.name!r} already has a controller named {name!r}")
            vm.controllers[name] = kind
            return _ok(action, event="controller_created", vm_name=vm.name,
                       controller={"name": name, "type": kind})
        if name not in vm.controllers:
            raise HostError(f"VM {vm.name!r} has no controller named {name!r}")
        if vm.state != STOPPED:
            raise HostError(f"cannot remove a controller from VM {vm.name!r} while it is "
                            f"{vm.state}; stop it first")
        detached = [d.path for d in self.disks.values() if d.vm == vm.name and d.controller == name]
        for path in detached:
            self.disks[path].vm = self.disks[path].controller = None
        del vm.controllers[name]
        return _ok(action, event="controller_removed", vm_name=vm.name, controller=name,
                   detached_disks=detached)

    def _attach_disk(self, vm: VM, path: str) -> ToolResult:
        disk = self.disks.get(path)
        if disk is None:
            raise HostError(f"no virtual disk at {path!r}; create it with action='create_disk'")
        if disk.vm is not None:
            raise HostError(f"disk {path!r} is already attached to VM {disk.vm!r}")
        if not vm.controllers:
            raise HostError(f"VM {vm.name!r} has no storage controller; create one first")
        disk.vm, disk.controller = vm.name, next(iter(vm.controllers))
        return _ok("attach_disk", event="disk_attached", vm_name=vm.name, disk=disk.view())

    # -- system_management -------------------------------------------------

    def _system_management(self, args: Args) -> ToolResult:
        action = args["action"]
        if action == "host_info":
            states = [vm.state for vm in self.vms.values()]
            return _ok(action, host={
                "hostname": HOST_NAME, "os": "Linux (simulated)", "cpus": HOST_CPUS,
                "memory_mb": HOST_MEMORY_MB,
                "memory_committed_mb": self._committed_memory(),
                "vms": {"total": len(states), RUNNING: states.count(RUNNING),
                        STOPPED: states.count(STOPPED), PAUSED: states.count(PAUSED)},
                "simulated": True})
        if action == "vbox_version":
            return _ok(action, version=VBOX_VERSION, api_version="7_1", simulated=True)
        if action == "ostypes":
            return _ok(action, ostypes=[{"id": os, "family": _family(os),
                                         "is_64bit": os.endswith("_64")}
                                        for os in self._os_types()])
        vm = self._vm(args)
        if action == "metrics":
            return _ok(action, vm_name=vm.name, metrics=_metrics(vm))
        if vm.state != RUNNING:
            raise HostError(f"cannot take a screenshot of VM {vm.name!r}: it is {vm.state}")
        width, height = args.get("width") or 1024, args.get("height") or 768
        if not (0 < width <= 7680 and 0 < height <= 4320):
            raise HostError("width and height must be positive and at most 7680x4320")
        return _ok(action, vm_name=vm.name, width=width, height=height, format="png",
                   path=args.get("output_file") or f"screenshots/{vm.name}.png",
                   simulated=True, message="demo host: no image was captured or written")

    def _os_types(self) -> list[str]:
        schema = self.catalog.tool("vm_management")
        assert schema is not None
        options = schema["inputSchema"]["properties"]["os_type"]["anyOf"]
        return next(o["enum"] for o in options if "enum" in o)

    # -- sandbox_management ------------------------------------------------

    def _sandbox_management(self, args: Args) -> ToolResult:
        action = args["action"]
        if action in ("execute_code", "execute_file"):
            source = _need(args, "code" if action == "execute_code" else "host_path")
            if not 1 <= args["timeout"] <= 600:
                raise HostError(f"timeout must be between 1 and 600 seconds, got {args['timeout']}")
            return _ok(action, event="sandbox_executed", language=args["language"],
                       image=_SANDBOX_IMAGES[args["language"]], exit_code=0, stdout="",
                       stderr="", network_enabled=args["network_enabled"],
                       input_bytes=len(source.encode()), simulated=True,
                       message="demo host: nothing was executed")
        if action == "session_create":
            self._serial += 1
            ident = f"sbx-{self._serial:04d}"
            name = args.get("sandbox_name") or ident
            self.sandboxes[ident] = Sandbox(ident, name, args["image"], self._stamp())
            return _ok(action, event="sandbox_created", sandbox=self._sandbox_view(ident))
        if action == "session_list":
            return _ok(action, sessions=[self._sandbox_view(i) for i in self.sandboxes])
        box = self.sandboxes.get(_need(args, "sandbox_id"))
        if box is None:
            raise HostError(f"no sandbox session {args['sandbox_id']!r}")
        if action == "session_destroy":
            del self.sandboxes[box.sandbox_id]
            return _ok(action, event="sandbox_destroyed", sandbox_id=box.sandbox_id)
        if action == "session_run":
            command = _need(args, "command")
            box.commands_run += 1
            return _ok(action, sandbox_id=box.sandbox_id, command=command, simulated=True,
                       **_canned_shell(box, command))
        path = _need(args, "container_path")
        if not path.startswith("/"):
            raise HostError(f"container_path must be absolute, got {path!r}")
        if action == "session_read_file":
            if path not in box.files:
                raise HostError(f"no file {path!r} in sandbox {box.sandbox_id!r}")
            return _ok(action, sandbox_id=box.sandbox_id, path=path, content=box.files[path])
        content = _need(args, "content")
        if len(content.encode()) > MAX_FILE_BYTES:
            raise HostError(f"content is larger than {MAX_FILE_BYTES} bytes")
        box.files[path] = content
        return _ok(action, sandbox_id=box.sandbox_id, path=path, bytes=len(content.encode()))

    def _sandbox_view(self, ident: str) -> dict[str, Any]:
        box = self.sandboxes[ident]
        return {"sandbox_id": ident, "name": box.name, "image": box.image,
                "created_at": box.created_at, "files": sorted(box.files),
                "commands_run": box.commands_run, "status": "running"}

    # -- vm_agentic_workflow -----------------------------------------------

    def _agentic_workflow(self, args: Args) -> ToolResult:
        action = args["action"]
        if action == "suggest_config":
            use_case = args.get("use_case") or "dev environment"
            return _ok(action, use_case=use_case, suggestion=_suggest(use_case),
                       source="defaults (the demo host does not sample an LLM)")
        goal = _need(args, "goal")
        vm_name = args.get("vm_name") or "sandbox-01"
        if action == "sandbox_workflow":
            steps = [f"vm_management create {vm_name} (Ubuntu22_64, 4096 MB, 40 GB)",
                     f"snapshot_management create {vm_name} snapshot 'pre-work'",
                     f"vm_management start {vm_name}",
                     f"do the work: {goal}",
                     f"vm_management stop {vm_name}",
                     f"snapshot_management restore {vm_name} 'pre-work' (or delete the VM)"]
        else:
            steps = ["vm_management list", "system_management host_info",
                     f"plan the VM changes needed for: {goal}",
                     "apply them one call at a time, checking vm_management info after each"]
        return _ok(action, goal=goal, plan=steps, executed=False,
                   source="defaults (the demo host does not sample an LLM)")

    # -- info_tools --------------------------------------------------------

    def _info_tools(self, args: Args) -> ToolResult:
        action = args["action"]
        if action == "help":
            return _ok(action, server=self.catalog.server_name,
                       version=self.catalog.server_version, tools=len(self.catalog.tools),
                       quick_start=["vm_management(action='list')",
                                    "system_management(action='ostypes')",
                                    "vm_management(action='create', vm_name='test-01', "
                                    "os_type='Ubuntu22_64', memory_mb=2048, disk_size_gb=20)"],
                       simulated=True)
        if action == "list_tools":
            category, search = args.get("category"), (args.get("search") or "").lower()
            tools = [self._tool_view(t) for t in self.catalog.tools
                     if (category is None or t["name"].split("_")[0] == category)
                     and (search in t["name"].lower() or search in t["description"].lower())]
            return _ok(action, tools=tools, total=len(tools))
        name = _need(args, "tool_name")
        tool = self.catalog.tool(name)
        if tool is None:
            raise HostError(f"no tool named {name!r}; tools: {', '.join(self.catalog.names)}")
        if action == "tool_info":
            return _ok(action, tool={**self._tool_view(tool), "description": tool["description"]})
        return _ok(action, tool_name=name, input_schema=tool["inputSchema"])

    def _tool_view(self, tool: dict[str, Any]) -> dict[str, Any]:
        props = tool["inputSchema"]["properties"]
        ops = props.get("action", {}).get("enum") or list(_PROXMOX_OPERATIONS)
        return {"name": tool["name"], "type": "portmanteau",
                "category": tool["name"].split("_")[0], "operations": ops}

    # -- proxmox_management ------------------------------------------------

    def _proxmox_management(self, args: Args) -> ToolResult:
        op = args["operation"]
        if op not in _PROXMOX_OPERATIONS:
            raise HostError(f"unknown operation {op!r}; expected one of: "
                            f"{', '.join(_PROXMOX_OPERATIONS)}")
        if op in ("list_vms", "cluster_resources"):
            vms = [{"vmid": vm.vmid, "name": vm.name, "status": vm.state, "type": "qemu",
                    "node": HOST_NAME} for vm in self.vms.values()]
            return _proxmox(f"{len(vms)} VMs", vms=vms)
        if op == "node_status":
            return _proxmox("node status", node=HOST_NAME, cpus=HOST_CPUS,
                            memory_mb=HOST_MEMORY_MB, memory_used_mb=self._committed_memory())
        vmid = _need(args, "vmid")
        vm = next((vm for vm in self.vms.values() if str(vm.vmid) == vmid), None)
        if vm is None:
            raise HostError(f"no VM with vmid {vmid!r}")
        if op == "status":
            return _proxmox(f"VM {vm.vmid} is {vm.state}", **self._info(vm))
        if op in ("start_vm", "stop_vm", "shutdown_vm"):
            action = "start" if op == "start_vm" else "stop"
            inner = self._vm_management({"action": action, "vm_name": vm.name})
            return _proxmox(f"VM {vm.vmid} is {vm.state}", event=inner.event, vmid=vm.vmid,
                            status=vm.state)
        inner = self._snapshot_management({
            "action": op.split("_")[0], "vm_name": vm.name, "limit": 100, "offset": 0,
            "snapshot_name": args.get("snapshot_name"), "description": args["description"]})
        data = dict(inner.data or {})
        data.pop("action", None)
        return _proxmox(f"{op} done for VM {vm.vmid}", event=inner.event, vmid=vm.vmid, **data)


# -- small pure pieces --------------------------------------------------------


def _ok(action: str, *, event: str | None = None, steps: tuple[str, ...] = (),
        inventory: bool = False, **data: Any) -> ToolResult:
    return ToolResult(data={"success": True, "action": action, **data}, steps=steps,
                      event=event, inventory_changed=inventory)


def _proxmox(message: str, *, event: str | None = None, **data: Any) -> ToolResult:
    return ToolResult(data={"success": True, "message": message, "data": data}, event=event)


def _need(args: Args, key: str) -> Any:
    value = args.get(key)
    if value is None or value == "":
        raise HostError(f"action {args.get('action', args.get('operation'))!r} "
                        f"requires argument {key!r}")
    return value


def _valid_name(name: str, what: str) -> str:
    if not _NAME.fullmatch(name):
        raise HostError(f"invalid {what} name {name!r}: use 1-64 letters, digits, spaces, "
                        "'.', '_' or '-', starting with a letter or digit")
    return name


def _page(items: list[dict[str, Any]], args: Args, key: str) -> dict[str, Any]:
    limit, offset = args.get("limit", 100), args.get("offset", 0)
    if limit < 1 or offset < 0:
        raise HostError("limit must be at least 1 and offset at least 0")
    return {key: items[offset:offset + limit], "total": len(items), "limit": limit,
            "offset": offset}


def _hint(action: str, state: str) -> str:
    if state == PAUSED and action in ("start", "reset"):
        return "; resume it first"
    if state == STOPPED and action in ("pause", "reset", "resume"):
        return "; start it first"
    return ""


def _mac(name: str, slot: int) -> str:
    digest = zlib.crc32(f"{name}/{slot}".encode()).to_bytes(4, "big")
    return "08:00:27:" + ":".join(f"{b:02x}" for b in digest[1:])


def _family(os_type: str) -> str:
    prefix = os_type.split("_")[0].rstrip("0123456789")
    return _OS_FAMILIES.get(prefix, "Linux")


def _metrics(vm: VM) -> dict[str, Any]:
    seed = zlib.crc32(vm.name.encode())
    if vm.state != RUNNING:
        return {"state": vm.state, "cpu_percent": 0.0, "memory_used_mb": 0,
                "disk_read_kbps": 0, "disk_write_kbps": 0, "net_rx_kbps": 0, "net_tx_kbps": 0}
    return {"state": vm.state, "cpu_percent": round(5 + seed % 600 / 10, 1),
            "memory_used_mb": vm.memory_mb * (40 + seed % 50) // 100,
            "disk_read_kbps": seed % 900, "disk_write_kbps": seed % 400,
            "net_rx_kbps": seed % 1200, "net_tx_kbps": seed % 300}


def _suggest(use_case: str) -> dict[str, Any]:
    text = use_case.lower()
    if "malware" in text or "sandbox" in text:
        return {"os_type": "Ubuntu22_64", "memory_mb": 4096, "cpus": 2, "disk_size_gb": 40,
                "network": "internal (no route to the host or internet)",
                "snapshots": "take one before every run; restore after"}
    if "ci" in text.split() or "build" in text or "runner" in text:
        return {"os_type": "Ubuntu22_64", "memory_mb": 8192, "cpus": 4, "disk_size_gb": 100,
                "network": "nat", "snapshots": "golden image, clone per job"}
    return {"os_type": "Ubuntu22_64", "memory_mb": 4096, "cpus": 2, "disk_size_gb": 60,
            "network": "nat + hostonly vboxnet0", "snapshots": "before upgrades"}


def _canned_shell(box: Sandbox, command: str) -> dict[str, Any]:
    """A handful of harmless commands answered from the session's in-memory files."""
    word, _, rest = command.strip().partition(" ")
    if word == "echo":
        return {"exit_code": 0, "stdout": rest + "\n", "stderr": ""}
    if word == "pwd":
        return {"exit_code": 0, "stdout": "/workspace\n", "stderr": ""}
    if word == "ls":
        return {"exit_code": 0, "stdout": "".join(f"{p}\n" for p in sorted(box.files)),
                "stderr": ""}
    if word == "cat":
        path = rest.strip()
        if path in box.files:
            return {"exit_code": 0, "stdout": box.files[path], "stderr": ""}
        return {"exit_code": 1, "stdout": "", "stderr": f"cat: {path}: No such file\n"}
    return {"exit_code": 0, "stdout": "", "stderr": "",
            "message": "demo host: the command was not executed"}
