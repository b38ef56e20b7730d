"""Who is measured in the comparison benchmark, and how each one is started.

Every contender stands in front of the same upstream (``echo_server.py`` on
stdio, or ``http_echo_server.py`` over HTTP). Peers are installed from their
registries at pinned versions, each in its own folder under
``benchmarks/.peers/`` (a virtualenv per PyPI package, an npm folder for
supergateway), once; a second run only checks.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEERS = HERE / ".peers"
PY = sys.executable
ECHO = [PY, str(HERE / "echo_server.py")]

PYPI_PEERS = {"mcp-firewall": "0.1.0", "mcp-proxy": "0.13.0", "mcp-policy-gateway": "0.1.0"}
NPM_PEERS = {"supergateway": "4.0.0"}
TOKEN = "bench-token-0123456789"


@dataclass
class Contender:
    """One thing to measure: a stdio command, or an HTTP server and its URL."""

    name: str
    family: str  # direct | mcpwall | peer
    argv: list[str]
    url: str = ""  # set for HTTP fronts
    headers: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    tools_expected: int | None = None  # tools/list length through this contender
    # The MCP era its clients speak: "2025" (a session each) or "modern" (the
    # stateless 2026-07-28 revision: no session, version and headers per request).
    era: str = "2025"

    @property
    def http(self) -> bool:
        return bool(self.url)


def install_peers(log: Path) -> dict[str, str]:
    """Install each pinned peer once; return name -> version (or the install error)."""
    PEERS.mkdir(exist_ok=True)
    found: dict[str, str] = {}
    with log.open("a") as sink:
        for name, version in PYPI_PEERS.items():
            venv = PEERS / name
            stamp = venv / f".installed-{version}"
            if not stamp.exists():
                print(f"installing {name}=={version} into {venv.relative_to(ROOT)}",
                      file=sys.stderr)
                done = subprocess.run([PY, "-m", "venv", "--clear", str(venv)], stdout=sink,
                                      stderr=sink).returncode == 0 and subprocess.run(
                    [str(venv / "bin" / "pip"), "install", "-q", f"{name}=={version}"],
                    stdout=sink, stderr=sink).returncode == 0
                if done:
                    stamp.touch()
            found[name] = version if stamp.exists() else f"install failed (see {log.name})"
        for name, version in NPM_PEERS.items():
            folder = PEERS / name
            binary = folder / "node_modules" / ".bin" / name
            stamp = folder / f".installed-{version}"
            if not stamp.exists() and shutil.which("npm"):
                print(f"installing {name}@{version} into {folder.relative_to(ROOT)}",
                      file=sys.stderr)
                folder.mkdir(exist_ok=True)
                if subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix",
                                   str(folder), f"{name}@{version}"], stdout=sink,
                                  stderr=sink).returncode == 0 and binary.exists():
                    stamp.touch()
            found[name] = version if stamp.exists() else "install failed (npm)"
    return found


def _peer(name: str, command: str) -> str:
    return str(PEERS / name / "bin" / command)


def write_policy(work: Path, rules: Path = ROOT / "rules" / "virtualization.json") -> Path:
    """rules/virtualization.json plus an ``echo`` tool in the same style: a
    pattern on an argument, a rule on another and a rate limit far above the load."""
    policy = json.loads(rules.read_text())
    policy["tools"]["echo"] = {
        "require": {"text": {"pattern": "[a-z]{1,32}", "optional": True}},
        "rules": [{"name": "echo", "when": {"n": {"min": 0}},
                   "limits": [{"counter": "echo_rate", "window": "second",
                               "max": 100_000_000, "scope": "grant"}]}],
    }
    path = work / "policy.json"
    path.write_text(json.dumps(policy))
    return path


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def mcpwall_config(work: Path, name: str, port: int, upstream: list[str] | str,
                   audit: str, policy: Path | None) -> Path:
    """A gateway config for ``mcpwall serve``: one server, ``bench``."""
    if isinstance(upstream, str):
        server = f'transport = "http"\nurl = "{upstream}"\nmax_connections = 256\n'
    else:
        server = (f'transport = "stdio"\ncommand = {json.dumps(upstream[0])}\n'
                  f"args = {_toml_list(upstream[1:])}\nmax_children = 2048\n")
    policy_table = f"[policy]\nfiles = {_toml_list([str(policy)])}\n" if policy else ""
    path = work / f"{name}.toml"
    path.write_text(
        f'[listen]\nport = {port}\nmax_sessions = 4096\n[log]\nlevel = "warning"\n'
        f'[audit]\npath = "{work / (name + ".db")}"\nmode = "{audit}"\n'
        f"{policy_table}[servers.bench]\n{server}")
    return path


BASELINE_MARK = " [baseline]"
MODERN_MARK = "2026-07-28"  # in the names of contenders driven in the stateless revision


def modern_name(name: str) -> str:
    """``direct`` -> ``direct (2026-07-28)``; ``mcpwall serve, allow-all (http
    upstream) [baseline]`` -> ``mcpwall serve, allow-all (http upstream,
    2026-07-28) [baseline]``."""
    mark = BASELINE_MARK if name.endswith(BASELINE_MARK) else ""
    name = name.removesuffix(BASELINE_MARK)
    name = name[:-1] + f", {MODERN_MARK})" if name.endswith(")") else f"{name} ({MODERN_MARK})"
    return name + mark


def modern(c: Contender) -> Contender:
    """The same contender driven with stateless requests of the 2026-07-28 revision."""
    return Contender(modern_name(c.name), c.family, c.argv, c.url, c.headers, c.env,
                     c.tools_expected, era="modern")


def _tree(tree: Path | None) -> tuple[str, dict[str, str]]:
    """The name suffix and environment of a contender run from another source tree
    (``--baseline DIR``: the same command, with DIR's ``firewall`` imported first)."""
    if tree is None:
        return "", {}
    return BASELINE_MARK, {"PYTHONPATH": str(tree)}


def mcpwall_wrap(work: Path, upstream: list[str], policy: Path | None,
                 tree: Path | None = None) -> Contender:
    """``mcpwall wrap``: allow-all without audit, or the policy with durable audit.
    ``tree``: run the ``firewall`` package of that source tree instead of this one."""
    wrap = [PY, "-m", "firewall", "wrap"]
    mark, env = _tree(tree)
    if policy is None:
        return Contender(f"mcpwall wrap, allow-all{mark}", "mcpwall", [*wrap, "--", *upstream],
                         env=env)
    db = work / f"wrap-durable{'-baseline' if tree else ''}.db"
    config = work / f"wrap-durable{'-baseline' if tree else ''}.toml"
    config.write_text(f'[audit]\npath = "{db}"\nmode = "durable"\n'
                      '[log]\nlevel = "warning"\n')
    return Contender(f"mcpwall wrap, policy + durable audit{mark}", "mcpwall",
                     [*wrap, "--config", str(config), "--policy", str(policy), "--", *upstream],
                     tools_expected=1, env=env)


def mcpwall_serve(work: Path, port: int, upstream: list[str] | str,
                  policy: Path | None, tree: Path | None = None) -> Contender:
    """``mcpwall serve``: allow-all with no audit trail (the proxy path alone, as in
    bench_http_proxy.py), or the policy with the durable audit trail.
    ``tree``: run the ``firewall`` package of that source tree instead of this one."""
    url = f"http://127.0.0.1:{port}/servers/bench/mcp"
    kind = "http upstream" if isinstance(upstream, str) else "stdio upstream"
    mark, env = _tree(tree)
    if policy is None:
        from bench_http_proxy import GATEWAY_NO_AUDIT

        script = work / "gateway_allow_all.py"
        script.write_text(GATEWAY_NO_AUDIT)
        config = mcpwall_config(work, f"serve-allow-{port}", port, upstream, "fast", None)
        return Contender(f"mcpwall serve, allow-all ({kind}){mark}", "mcpwall",
                         [PY, str(script), str(config)], url,
                         env=env or {"PYTHONPATH": str(ROOT)})
    config = mcpwall_config(work, f"serve-durable-{port}", port, upstream, "durable", policy)
    return Contender(f"mcpwall serve, policy + durable audit ({kind}){mark}", "mcpwall",
                     [PY, "-m", "firewall", "serve", str(config)], url, tools_expected=1,
                     env=env)


def mcp_firewall_wrap(work: Path, upstream: list[str]) -> Contender:
    """mcp-firewall 0.1.0 ``wrap``: default action allow, its global rate limit
    (200 calls/min by default) raised out of the way."""
    config = work / "mcp-firewall.yaml"
    config.write_text("version: 1\ndefaultAction: allow\nglobalRateLimit:\n"
                      "  maxCalls: 100000000\n  windowSeconds: 60\n")
    return Contender(f"mcp-firewall {PYPI_PEERS['mcp-firewall']} wrap", "peer",
                     [_peer("mcp-firewall", "mcp-firewall"), "wrap", "--config", str(config),
                      "--", *upstream])


def policy_gateway(work: Path, upstream: list[str] | str, port: int | None) -> Contender:
    """mcp-policy-gateway 0.1.0, allow-all policy, audit to a file; stdio front
    (``port`` None) or HTTP front with a bearer token."""
    if isinstance(upstream, str):
        up = {"transport": "http", "url": upstream}
    else:
        up = {"transport": "stdio", "command": upstream[0], "args": upstream[1:]}
    config = {"version": 1, "audit": {"path": str(work / f"policy-gateway-{port}.jsonl")},
              "upstreams": {"bench": up},
              "policies": {"open": {"default": "allow"}},
              "tokens": [{"name": "bench", "policy": "open", "env": "BENCH_GATEWAY_TOKEN"}]}
    path = work / f"policy-gateway-{port}.json"  # JSON is YAML
    path.write_text(json.dumps(config))
    cli = [_peer("mcp-policy-gateway", "mcp-policy-gateway"), "run", "-c", str(path)]
    name = f"mcp-policy-gateway {PYPI_PEERS['mcp-policy-gateway']}"
    env = {"BENCH_GATEWAY_TOKEN": TOKEN}
    if port is None:
        return Contender(f"{name} (stdio)", "peer",
                         [*cli, "--transport", "stdio", "--policy", "open"], env=env)
    return Contender(name, "peer", [*cli, "--transport", "http", "--port", str(port)],
                     f"http://127.0.0.1:{port}/mcp", {"authorization": f"Bearer {TOKEN}"},
                     env=env)


def mcp_proxy(upstream: list[str], port: int) -> Contender:
    """mcp-proxy 0.13: a stdio server behind its Streamable HTTP endpoint (/mcp)."""
    return Contender(f"mcp-proxy {PYPI_PEERS['mcp-proxy']}", "peer",
                     [_peer("mcp-proxy", "mcp-proxy"), "--host", "127.0.0.1", "--port",
                      str(port), "--log-level", "WARNING", "--", *upstream],
                     f"http://127.0.0.1:{port}/mcp")


def supergateway(upstream: list[str], port: int) -> Contender:
    """supergateway 4: stdio -> Streamable HTTP, stateful (one child per session)."""
    binary = PEERS / "supergateway" / "node_modules" / ".bin" / "supergateway"
    return Contender(f"supergateway {NPM_PEERS['supergateway']}", "peer",
                     [str(binary), "--stdio", " ".join(upstream), "--outputTransport",
                      "streamableHttp", "--stateful", "--port", str(port),
                      "--logLevel", "none"], f"http://127.0.0.1:{port}/mcp")


HTTP_UPSTREAM_SUPPORT = {
    "mcpwall serve": "HTTP front to an HTTP upstream: measured",
    f"mcp-policy-gateway {PYPI_PEERS['mcp-policy-gateway']}":
        "HTTP front to an HTTP upstream (upstreams.*.transport: http): measured",
    f"mcp-proxy {PYPI_PEERS['mcp-proxy']}":
        "an HTTP upstream only behind a stdio front (client mode: mcp-proxy URL); "
        "no HTTP-to-HTTP mode: not in this table",
    f"supergateway {NPM_PEERS['supergateway']}":
        "an HTTP upstream only behind a stdio front (--streamableHttp URL, "
        "--outputTransport stdio): not in this table",
    f"mcp-firewall {PYPI_PEERS['mcp-firewall']}": "stdio wrap only: not in this table",
}


def environment() -> dict[str, str]:
    """The environment a contender runs in: this one, with the checkout importable."""
    return {**os.environ, "PYTHONPATH": str(ROOT)}
