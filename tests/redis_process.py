"""A real redis-server for tests: a free 127.0.0.1 port, no persistence, stopped after.

The Debian package ``redis-server`` (installed by scripts/setup) provides the
binary; without it the tests that need one are skipped with a clear message.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures import conformance_harness as harness


class TlsFiles:
    """A private CA (trustme) and what it signed for a TLS redis-server test:
    the server's certificate for 127.0.0.1 and localhost, and a client's."""

    def __init__(self, workdir: Path) -> None:
        import trustme

        self.ca_obj = trustme.CA()
        self.ca = workdir / "ca.pem"
        self.server_cert, self.server_key = workdir / "server.pem", workdir / "server.key"
        self.client_cert, self.client_key = workdir / "client.pem", workdir / "client.key"
        self.ca_obj.cert_pem.write_to_path(str(self.ca))
        server = self.ca_obj.issue_cert("127.0.0.1", "localhost")
        server.cert_chain_pems[0].write_to_path(str(self.server_cert))
        server.private_key_pem.write_to_path(str(self.server_key))
        client = self.ca_obj.issue_cert("mcpwall-client")
        client.cert_chain_pems[0].write_to_path(str(self.client_cert))
        client.private_key_pem.write_to_path(str(self.client_key))

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context


class RedisProcess:
    """One redis-server child; :meth:`stop` and :meth:`start` keep its port.

    With ``tls`` it listens with TLS only (``--tls-port``), signed by that CA;
    ``clients_need_certs`` makes it ask clients for a certificate."""

    def __init__(self, workdir: Path, *extra: str, tls: TlsFiles | None = None,
                 clients_need_certs: bool = False) -> None:
        self.workdir = workdir
        self.tls = tls
        if tls is not None:
            extra = (*extra, "--tls-cert-file", str(tls.server_cert), "--tls-key-file",
                     str(tls.server_key), "--tls-ca-cert-file", str(tls.ca),
                     "--tls-auth-clients", "yes" if clients_need_certs else "no")
        self.extra = extra
        # redis-cli needs the password when the server was given one
        self.password = extra[extra.index("--requirepass") + 1] \
            if "--requirepass" in extra else None
        self.port = harness.free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed (scripts/setup installs the Debian "
                        "package redis-server)")
        ports = ["--port", str(self.port)] if self.tls is None else \
            ["--port", "0", "--tls-port", str(self.port)]
        self.proc = subprocess.Popen(
            [binary, *ports, "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir), *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30  # a guard, not a timing claim
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"redis-server exited {self.proc.returncode} on port {self.port}")
            with contextlib.suppress(OSError), \
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw:
                s = raw if self.tls is None else self.tls.client_context().wrap_socket(
                    raw, server_hostname="127.0.0.1")
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
        if self.tls is not None:
            auth += ["--tls", "--cacert", str(self.tls.ca), "--cert", str(self.tls.client_cert),
                     "--key", str(self.tls.client_key)]
        done = subprocess.run([cli, "-p", str(self.port), *auth, *args], capture_output=True,
                              text=True, timeout=10, check=True)
        return done.stdout.strip()


@contextlib.contextmanager
def redis_server(workdir: Path, *extra: str, tls: TlsFiles | None = None,
                 clients_need_certs: bool = False) -> Iterator[RedisProcess]:
    """A started redis-server, killed on the way out."""
    server = RedisProcess(workdir, *extra, tls=tls, clients_need_certs=clients_need_certs)
    server.start()
    try:
        yield server
    finally:
        server.stop()
