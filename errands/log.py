"""structlog, configured once per process: JSON lines or a coloured console."""

from __future__ import annotations

import logging
import sys
import traceback

import structlog
from structlog.typing import EventDict, WrappedLogger

from errands.errors import scrub


def configure_logging(log_format: str = "console", level: str = "INFO") -> None:
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _scrub_exception,
    ]
    if log_format == "console":
        processors.append(structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    else:
        processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


def _scrub_exception(logger: WrappedLogger, method: str, event: EventDict) -> EventDict:
    """Render a logged exception without the row contents a database error's DETAIL quotes."""
    exc_info = event.get("exc_info")
    if exc_info is True:
        exc_info = sys.exc_info()
    exc = exc_info if isinstance(exc_info, BaseException) else None
    if isinstance(exc_info, tuple):
        exc = exc_info[1]
    if exc is not None:
        event.pop("exc_info")
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        event["exception"] = scrub(text, exc)
    return event
