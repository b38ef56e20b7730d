"""structlog, configured once for the whole process.

Logs go to stderr (stdout may be a protocol channel in ``wrap`` mode). JSON
lines when stderr is not a TTY, a console renderer when it is. Event names are
snake_case facts (``call_denied``); data goes in key-values.

Example::

    configure("info", "auto")
    log = get_logger(server="vm", session=sid)
    log.info("upstream_started", pid=1234)

An object made per request that seldom logs takes a :class:`LazyLogger`
instead: binding a structlog logger costs more than most requests' handling.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}
_configured = False
_current = ("info", "auto")  # the level and format last configured


def configure(level: str = "info", fmt: str = "auto", stream: Any = None) -> None:
    """Set up structlog; later calls only change the level and format."""
    global _configured, _current
    _current = (level, fmt)
    out = stream if stream is not None else sys.stderr
    use_console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=out.isatty())
        if use_console
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    _configured = True


def current() -> tuple[str, str]:
    """The level and format last configured (a child process logs the same way)."""
    return _current


def get_logger(**bound: Any) -> Any:
    """A logger bound with ``bound`` key-values (configures defaults on first use)."""
    if not _configured:
        configure()
    return structlog.get_logger("mcpwall").bind(**bound)


class LazyLogger:
    """``get_logger(**bound)``, bound when first used: the same methods
    (``info``, ``warning``, ``bind``...), the configuration in force then."""

    __slots__ = ("_bound", "_logger")

    def __init__(self, **bound: Any) -> None:
        self._bound = bound
        self._logger: Any = None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # copy and pickle ask before the slots are set:
            raise AttributeError(name)  # never a logger's, nor a recursion
        logger = self._logger
        if logger is None:
            logger = self._logger = get_logger(**self._bound)
        return getattr(logger, name)
