"""``host[:port]``, as a ``Host`` header or an ``allowed_hosts`` entry says it: sans-IO.

Host names come back lower-case, IPv6 literals in brackets, so that two
spellings of one address compare equal.

Example::

    split_host("LocalHost:8766", 80)     # ('localhost', 8766)
    allowed_host("ops.example.com")      # ('ops.example.com', None): any port
"""

from __future__ import annotations


def split_host(text: str, default_port: int | None) -> tuple[str, int | None] | None:
    """``host[:port]`` (a ``Host`` header or an ``allowed_hosts`` entry) as
    (lower-case name, port), IPv6 in brackets; None when it is not one.

    >>> split_host("LocalHost:8766", 80)
    ('localhost', 8766)
    >>> split_host("[::1]", None)
    ('[::1]', None)
    """
    text = text.strip().lower()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        name, rest = text[: end + 1], text[end + 1:]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else None
    else:
        name, sep, port_text_ = text.partition(":")
        port_text = port_text_ if sep else None
        if ":" in (port_text or ""):
            # An IPv6 literal without brackets is only a configured host, never a Host header.
            return None
    if not name or any(c in name for c in "/@?#\\ \t,"):
        return None
    if port_text is None:
        return name, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return None
    return name, int(port_text)


def allowed_host(entry: str) -> tuple[str, int | None]:
    """An ``allowed_hosts`` entry as (name, port or None for any port); ValueError if not one."""
    parsed = split_host(entry, None)
    if parsed is None:
        raise ValueError(f"expected a host name or address, optionally with :port, got {entry!r}")
    return parsed


__all__ = ["allowed_host", "split_host"]
