"""The command line's side of the operator API: one JSON request at a time (stdlib only).

Example::

    client = AdminClient("http://127.0.0.1:8766", token)
    client.call("POST", "/api/kill-switch", {"scope": "server", "name": "vm"})
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, Final

ENV_URL: Final = "MCPWALL_ADMIN_URL"
ENV_TOKEN: Final = "MCPWALL_ADMIN_TOKEN"


class AdminRefused(Exception):
    """The API answered with an error status; ``status`` and the API's message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class AdminUnreachable(Exception):
    """No answer from the operator listener (wrong URL, not running)."""


class AdminClient:
    """Calls the operator API with a bearer token."""

    def __init__(self, url: str, token: str | None, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """The decoded JSON answer; raise AdminRefused (4xx/5xx) or AdminUnreachable."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error") or exc.reason
            except (ValueError, AttributeError):
                message = str(exc.reason)
            raise AdminRefused(exc.code, str(message)) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AdminUnreachable(f"{self.url}: {reason}") from None


__all__ = ["ENV_TOKEN", "ENV_URL", "AdminClient", "AdminRefused", "AdminUnreachable"]
