"""What mcpwall relies on inside hypercorn still has the shape it relies on.

:mod:`firewall.gateway.http.hypercorn_internals` owns every use of hypercorn beyond
its public API and lists each private name it or its users rely on
(``RELIED_ON``). These tests check every line against the installed hypercorn:
the signatures of the callables and the fields of the events, and the
instance attributes on live objects (a request handled through hypercorn's h11
protocol and through its ASGI ``HTTPStream``). A hypercorn release that moves
any of them fails here, naming it, instead of in a gateway at run time.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import subprocess
import sys
import tomllib
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import wrap_app

from firewall.gateway.http import hypercorn_internals as hi

ROOT = Path(__file__).resolve().parent.parent
# The only hypercorn modules other modules of the package may import.
PUBLIC = {"hypercorn.config", "hypercorn.trio"}


def resolve(dotted: str) -> Any:
    """The object at ``dotted`` (a module path, then attributes)."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for name in parts[split:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


def shape(obj: Any) -> tuple[str, ...]:
    """A dataclass's fields, or a callable's parameters (``*args``, ``**kwargs`` marked)."""
    if inspect.isclass(obj) and dataclasses.is_dataclass(obj):
        return tuple(f.name for f in dataclasses.fields(obj))
    marks = {inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.VAR_KEYWORD: "**"}
    return tuple(marks.get(p.kind, "") + p.name
                 for p in inspect.signature(obj).parameters.values())


def test_the_installed_hypercorn_is_the_pinned_one() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = [d for d in pyproject["project"]["dependencies"] if d.startswith("hypercorn")]
    assert pins == [f"hypercorn=={hi.HYPERCORN_VERSION}"]
    assert version("hypercorn") == hi.HYPERCORN_VERSION


@pytest.mark.parametrize("name", [n for n in hi.RELIED_ON if not n.startswith("attrs:")])
def test_signatures_and_event_fields(name: str) -> None:
    assert shape(resolve(name)) == hi.RELIED_ON[name], name


@pytest.mark.slow
def test_other_versions_are_refused_at_import_with_a_clear_error() -> None:
    code = ("import importlib.metadata as m\n"
            "m.version = lambda name: '0.19.0'\n"
            "import firewall.gateway.http.hypercorn_internals\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=60, check=False)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert "HypercornVersionError" in last.split(":")[0]
    assert f"hypercorn {hi.HYPERCORN_VERSION}" in last and "hypercorn 0.19.0 is installed" in last


def test_only_the_internals_module_imports_hypercorn_beyond_its_public_api() -> None:
    offenders = []
    for path in sorted((ROOT / "firewall").rglob("*.py")):
        if path.name == "hypercorn_internals.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names
                          if n.split(".")[0] == "hypercorn" and n not in PUBLIC]
    assert offenders == []


# -- instance attributes, on live objects -------------------------------------


async def _app(scope: dict[str, Any], receive: Callable[..., Any],
               send: Callable[..., Any]) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


def _attrs_checked() -> set[str]:
    return {n for n in hi.RELIED_ON if n.startswith("attrs:")}


async def test_instance_attributes_on_live_objects() -> None:
    """Builds each object whose attributes are relied on, and handles one request
    through hypercorn's h11 protocol and one through an ``HTTPStream``."""
    config = Config()
    context = WorkerContext(None)
    app = wrap_app(_app, config.wsgi_max_body_size, "asgi")
    sent: list[hi.Event] = []
    answered = trio.Event()

    async def send(event: hi.Event) -> None:
        sent.append(event)
        if isinstance(event, hi.RawData) and event.data.endswith(b"abcd"):
            answered.set()

    checked: dict[str, object] = {"hypercorn.config.Config": config,
                                  "hypercorn.trio.worker_context.WorkerContext": context}
    error = hi.H2ProtocolAssumedError(b"PRI")
    checked["hypercorn.protocol.h11.H2ProtocolAssumedError"] = error
    assert error.data == b"PRI"
    async with hi.TaskGroup() as task_group:
        # hypercorn's h11 path: what http_server reads of it.
        wrapper = hi.ProtocolWrapper(app, config, context, task_group, ConnectionState({}),
                                     False, ("127.0.0.1", 1), ("127.0.0.1", 2), send,
                                     alpn_protocol="http/1.1")
        checked["hypercorn.protocol.ProtocolWrapper"] = wrapper
        await wrapper.initiate()
        protocol = hi.current_protocol(wrapper)
        checked["hypercorn.protocol.h11.H11Protocol"] = protocol
        assert isinstance(protocol.connection, h11.Connection)
        assert hi.h11_pending(protocol) == (False, False)
        await wrapper.handle(hi.RawData(b"POST / HTTP/1.1\r\nhost: x\r\n"
                                        b"content-length: 4\r\n\r\nab"))
        assert hi.h11_pending(protocol) == (True, False)  # two body bytes owed
        assert hi.h11_response_started(protocol) is False
        await wrapper.handle(hi.RawData(b"cd"))
        with trio.fail_after(5):
            await answered.wait()
        assert hi.h11_pending(protocol) is not None

        # The ASGI stream, as http11 drives it.
        events: list[hi.Event] = []
        ended = trio.Event()

        async def stream_send(event: hi.Event) -> None:
            events.append(event)
            if isinstance(event, hi.StreamClosed):
                ended.set()

        stream = hi.HTTPStream(app, config, context, task_group, False, ("127.0.0.1", 1),
                               ("127.0.0.1", 2), stream_send, 1)
        checked["hypercorn.protocol.http_stream.HTTPStream"] = stream
        assert stream.closed is False
        await stream.handle(hi.Request(stream_id=1, headers=[(b"host", b"x")],
                                       http_version="1.1", method="POST", raw_path=b"/",
                                       state=ConnectionState({})))
        await stream.app_put({"type": "http.request", "body": b"xyz", "more_body": False})
        with trio.fail_after(5):
            await ended.wait()
        assert [type(e) for e in events][:4] == [hi.Response, hi.Body, hi.EndBody,
                                                 hi.StreamClosed]
        assert isinstance(events[1], hi.Body) and events[1].data == b"xyz"
        await stream.handle(hi.StreamClosed(stream_id=1))
        assert stream.closed is True
        await wrapper.handle(hi.Closed())

    assert {f"attrs:{name}" for name in checked} == _attrs_checked()
    for name, obj in checked.items():
        missing = [a for a in hi.RELIED_ON[f"attrs:{name}"] if not hasattr(obj, a)]
        assert missing == [], name
