"""The operator listener refuses DNS rebinding and throttles login guessing.

Through a real `mcpwall serve` and real HTTP (forged ``Host`` and ``Origin``
headers, clients bound to other loopback source addresses), plus the pure
name and throttle rules.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from admin_gateway import ALICE, WAIT_SECONDS, bearer, gateway

from firewall.gateway.operator.guard import ListenerNames, LoginThrottle
from firewall.protocol.hosts import split_host


def _hostport(url: str) -> str:
    return url.removeprefix("http://")


# -- through the real listener ------------------------------------------------------------

@pytest.mark.slow
async def test_dns_rebinding_cannot_reach_the_unauthenticated_listener(tmp_path: Path) -> None:
    """insecure_no_auth: every request acts as an admin, so Host is all that keeps a
    rebound page out."""
    async with (gateway(tmp_path, extra_admin='insecure_no_auth = true\n'
                                              'allowed_hosts = ["ops.example.com"]\n') as gw,
                httpx.AsyncClient(timeout=WAIT_SECONDS) as http):
        port = gw.admin.rsplit(":", 1)[1]
        rebound = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}
        on = await http.post(f"{gw.admin}/api/kill-switch", json={"scope": "global"},
                             headers=rebound)
        assert on.status_code == 421, on.text
        assert "Host" in on.json()["error"] and "allowed_hosts" in on.json()["error"]
        for path in ("/api/decisions", "/api/kill-switch", "/", "/metrics", "/api/events"):
            assert (await http.get(gw.admin + path, headers=rebound)).status_code == 421, path
        # Same without an Origin, with a bearer token, on a wrong port: Host decides alone.
        for headers in ({"Host": f"evil.example:{port}"},
                        {"Host": f"evil.example:{port}", **bearer()},
                        {"Host": "127.0.0.1:1"}, {"Host": "127.0.0.1"}):
            got = await http.get(f"{gw.admin}/api/kill-switch", headers=headers)
            assert got.status_code == 421, headers
        # The right Host with a foreign Origin: a page elsewhere cannot drive it either.
        foreign = await http.post(f"{gw.admin}/api/kill-switch", json={"scope": "global"},
                                  headers={"Origin": f"http://evil.example:{port}"})
        assert foreign.status_code == 403 and "origin" in foreign.json()["error"]
        assert (await http.get(f"{gw.admin}/api/decisions",
                               headers={"Origin": "null"})).status_code == 403
        # Probes answer any Host; readiness then hides the reasons.
        assert (await http.get(f"{gw.admin}/healthz", headers=rebound)).status_code == 200
        ready = await http.get(f"{gw.admin}/readyz", headers=rebound)
        assert not any("error" in c for c in ready.json()["checks"].values())
        # Nothing above changed anything.
        assert (await http.get(f"{gw.admin}/api/kill-switch")).json() == {"switches": []}
        # The listener's own names work, with their own Origin.
        for name in ("127.0.0.1", "localhost", "[::1]"):
            headers = {"Host": f"{name}:{port}", "Origin": f"http://{name}:{port}"}
            got = await http.get(f"{gw.admin}/api/decisions", headers=headers)
            assert got.status_code == 200, (name, got.text)
        own = {"Host": f"localhost:{port}", "Origin": f"http://localhost:{port}"}
        on = await http.post(f"{gw.admin}/api/kill-switch", json={"scope": "global"},
                             headers=own)
        assert on.status_code == 200 and on.json()["switch"]["by"] == "anonymous"
        # An allowed_hosts name (a reverse proxy's) on any port, with its https Origin.
        proxied = {"Host": "ops.example.com", "Origin": "https://ops.example.com"}
        off = await http.request("DELETE", f"{gw.admin}/api/kill-switch", headers=proxied,
                                 json={"scope": "global"})
        assert off.status_code == 200 and off.json()["state"] == "off"
    log = (tmp_path / "serve.log").read_text()
    assert "admin_host_refused" in log and "evil.example" in log


@pytest.mark.slow
async def test_login_guessing_gets_429_while_other_addresses_log_in(tmp_path: Path) -> None:
    extra = "login_failures = 3\nlogin_window_seconds = 3600\n"
    async with (gateway(tmp_path, extra_admin=extra) as gw,
                httpx.AsyncClient(timeout=WAIT_SECONDS) as attacker,
                httpx.AsyncClient(timeout=WAIT_SECONDS, transport=httpx.AsyncHTTPTransport(
                    local_address="127.0.0.2")) as operator,
                httpx.AsyncClient(timeout=WAIT_SECONDS, transport=httpx.AsyncHTTPTransport(
                    local_address="127.0.0.3")) as scripted):
        statuses = []
        for guess in range(6):
            got = await attacker.post(f"{gw.admin}/login", data={"token": f"guess-{guess}"})
            statuses.append(got.status_code)
        assert statuses == [401, 401, 401, 429, 429, 429]
        assert int(got.headers["retry-after"]) > 0 and "Too many failed logins" in got.text
        # Throttled means not checked: the right token from that address gets 429 too,
        # by the form or by the header.
        right = await attacker.post(f"{gw.admin}/login", data={"token": ALICE})
        assert right.status_code == 429 and "set-cookie" not in right.headers
        api = await attacker.get(f"{gw.admin}/api/kill-switch", headers=bearer())
        assert api.status_code == 429 and int(api.headers["retry-after"]) > 0
        assert "too many failed logins" in api.json()["error"]
        # Another address logs in with the right token, by form and by header.
        login = await operator.post(f"{gw.admin}/login", data={"token": ALICE})
        assert login.status_code == 303 and "mcpwall_console=" in login.headers["set-cookie"]
        assert (await operator.get(f"{gw.admin}/api/kill-switch", headers=bearer())
                ).status_code == 200
        # Guessing by header is counted the same way.
        guesses = [(await scripted.get(f"{gw.admin}/api/decisions",
                                       headers=bearer(f"guess-{k}"))).status_code
                   for k in range(4)]
        assert guesses == [401, 401, 401, 429]
        # Requests with no token are not guesses: they stay 401, and do not throttle.
        operator.cookies.clear()
        for _ in range(5):
            assert (await operator.get(f"{gw.admin}/api/decisions")).status_code == 401
        assert (await operator.get(f"{gw.admin}/api/decisions", headers=bearer())
                ).status_code == 200
        rows = await gw.audit_until(
            "SELECT detail FROM events WHERE kind = 'operator_login_throttled' "
            "ORDER BY seq", count=2)
        details = [json.loads(r["detail"]) for r in rows]
        assert {(d["address"], d["via"]) for d in details} >= {
            ("127.0.0.1", "console"), ("127.0.0.3", "bearer")}
        assert all(d["failures"] == 3 for d in details)
    assert "operator_login_throttled" in (tmp_path / "serve.log").read_text()


# -- the rules themselves -----------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("localhost:8766", ("localhost", 8766)), ("LOCALHOST", ("localhost", 80)),
    ("[::1]:9", ("[::1]", 9)), ("[::1]", ("[::1]", 80)), ("h:0", None), ("h:x", None),
    ("h:70000", None), ("[::1", None), ("[::1]x", None), ("a@b:1", None), (":80", None),
    ("::1", None), ("a b", None), ("", None)])
def test_split_host(text: str, expected: Any) -> None:
    assert split_host(text, 80) == expected


def test_listener_names() -> None:
    loop = ListenerNames("127.0.0.1", 8766, ["ops.example.com", "10.0.0.5:443"])
    assert loop.host_ok("127.0.0.1:8766") and loop.host_ok("localhost:8766")
    assert loop.host_ok("[::1]:8766") and loop.host_ok("ops.example.com:1")
    assert loop.host_ok("ops.example.com") and loop.host_ok("10.0.0.5:443")
    assert not loop.host_ok("10.0.0.5:8766") and not loop.host_ok("localhost:8767")
    assert not loop.host_ok("evil.example:8766") and not loop.host_ok(None)
    assert not loop.host_ok("localhost") and not loop.host_ok("127.0.0.1.evil.example:8766")
    assert loop.origin_ok("http://localhost:8766") and loop.origin_ok("https://ops.example.com")
    assert loop.origin_ok("http://localhost:8766/")
    for origin in ("null", "http://evil.example:8766", "file://", "http://localhost",
                   "ftp://localhost:8766", "http://localhost:8766/x", "http://[::1:8766",
                   "http://u@localhost:8766"):
        assert not loop.origin_ok(origin), origin
    named = ListenerNames("10.1.2.3", 9000)
    assert named.host_ok("10.1.2.3:9000") and not named.host_ok("localhost:9000")
    anywhere = ListenerNames("0.0.0.0", 9000, hostname=lambda: "Box")
    assert anywhere.host_ok("box:9000") and anywhere.host_ok("127.0.0.1:9000")
    assert not anywhere.host_ok("0.0.0.0:9000") and not anywhere.host_ok("10.1.2.3:9000")
    v6 = ListenerNames("::1", 9000)
    assert v6.host_ok("[::1]:9000") and v6.host_ok("localhost:9000")
    with pytest.raises(ValueError, match="http://x"):
        ListenerNames("127.0.0.1", 1, ["http://x"])


def test_login_throttle_refills_per_address() -> None:
    now = [0.0]
    throttle = LoginThrottle(failures=3, window=30.0, clock=lambda: now[0])
    assert [throttle.failed("a") for _ in range(3)] == [False, False, True]
    assert throttle.wait("a") == pytest.approx(10.0) and throttle.wait("b") is None
    now[0] = 10.0
    assert throttle.wait("a") is None  # one failure refilled: one more try
    assert throttle.failed("a") and throttle.wait("a") == pytest.approx(10.0)
