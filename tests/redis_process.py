"""A real redis-server for tests: a free 127.0.0.1 port, no persistence, stopped after.

The Debian package ``redis-server`` (installed by scripts/setup) provides the
binary; without it the tests that need one are skipped with a clear message.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures import conformance_harness as harness


class RedisProcess:
    """One redis-server child; :meth:`stop` and :meth:`start` keep its port."""

    def __init__(self, workdir: Path, *extra: str) -> None:
        self.workdir = workdir
        self.extra = extra
        # redis-cli needs the password when the server was given one
        self.password = extra[extra.index("--requirepass") + 1] \
            if "--requirepass" in extra else None
        self.port = harness.free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed (scripts/setup installs the Debian "
                        "package redis-server)")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir), *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30  # a guard, not a timing claim
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"redis-server exited {self.proc.returncode} on port {self.port}")
            with contextlib.suppress(OSError), \
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(64):
                    return
            time.sleep(0.02)
        pytest.fail(f"redis-server did not answer on port {self.port} within 30 s")

    def stop(self) -> None:
        """SIGKILL: the store vanishes as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def command(self, *args: str) -> str:
        """redis-cli against this server; its output."""
        cli = shutil.which("redis-cli") or "redis-cli"
        auth = ["--no-auth-warning", "-a", self.password] if self.password else []
        done = subprocess.run([cli, "-p", str(self.port), *auth, *args], capture_output=True,
                              text=True, timeout=10, check=True)
        return done.stdout.strip()


@contextlib.contextmanager
def redis_server(workdir: Path, *extra: str) -> Iterator[RedisProcess]:
    """A started redis-server, killed on the way out."""
    server = RedisProcess(workdir, *extra)
    server.start()
    try:
        yield server
    finally:
        server.stop()
