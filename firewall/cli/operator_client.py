"""The command line's side of the operator API: one JSON request at a time.

:class:`AdminClient` is stdlib only; :func:`admin_options` and :func:`call_api`
are what ``mcpwall approvals`` and ``mcpwall kill-switch`` share.

Example::

    client = AdminClient("http://127.0.0.1:8766", token)
    client.call("POST", "/api/kill-switch", {"scope": "server", "name": "vm"})
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, Final, TypeVar

import click

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


F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_URL = "http://127.0.0.1:8766"


def admin_options(fn: F) -> F:
    """``--admin-url`` and ``--admin-token`` (both also from the environment).

    The rule every operator command follows (see :func:`api_url`): through the
    operator API when given a URL or a token, else on the local file.
    """
    fn = click.option("--admin-token", envvar=ENV_TOKEN, default=None,
                      help=f"Operator token (default: ${ENV_TOKEN}).")(fn)
    return click.option(
        "--admin-url", envvar=ENV_URL, default=None,
        help=f"Go through this operator listener (default: ${ENV_URL}; {DEFAULT_URL} when "
             "only a token is given). Without URL or token: the local file "
             "(--db, or the one of --config).")(fn)


def api_url(admin_url: str | None, admin_token: str | None) -> str | None:
    """The operator listener to call, or None to work on the local file."""
    if admin_url:
        return admin_url
    return DEFAULT_URL if admin_token else None


def call_api(url: str, token: str | None, method: str, path: str,
             body: dict[str, Any] | None = None) -> Any:
    """One API call for a command: exit 1 on a refusal on the merits, 2 on the rest."""
    try:
        return AdminClient(url, token).call(method, path, body)
    except AdminUnreachable as exc:
        raise click.UsageError(f"cannot reach the operator listener: {exc}") from None
    except AdminRefused as exc:
        if exc.status in (404, 409):
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)
        raise click.UsageError(f"the operator listener refused ({exc.status}): {exc}") from None


__all__ = ["DEFAULT_URL", "ENV_TOKEN", "ENV_URL", "AdminClient", "AdminRefused",
           "AdminUnreachable", "admin_options", "api_url", "call_api"]
