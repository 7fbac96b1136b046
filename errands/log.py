"""Logging: the standard `logging` module in a library; rendered lines in errands' processes.

errands' modules log through `get_logger("errands.…")`. Imported as a library,
errands configures nothing: while structlog is not configured (the
application's choice), each event goes to the standard logger of the same name,
where the application's logging set-up decides; the `errands` logger has a
NullHandler (as the logging HOWTO asks of a library), so nothing reaches the
terminal through logging's last resort. Once structlog is configured, by the
application or by errands' own processes, events follow that configuration.

The processes errands starts (`errands run`, `api`, every command) call
`configure_logging`: JSON lines or a coloured console on stderr, each line
written in a single call so that lines of several processes never mix, and the
standard library's records (uvicorn's among them) rendered the same way. A
thread may hold its lines back for a moment (`lines_together`: a worker's lines
for one acknowledged batch of jobs) to write them in as few calls as it can,
each of whole lines and at most PIPE_BUF bytes, which still never mix.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from errands.errors import scrub

# Chatter of libraries at info: uvicorn's start and stop (errands says where it listens),
# pgserver's every initdb and pg_ctl command line (errands says which database it uses),
# httpx's every request (the bench's and chaos harness's health checks).
QUIET_LOGGERS = {"uvicorn": logging.WARNING, "pgserver": logging.WARNING, "httpx": logging.WARNING}
# The most a write of several lines carries: POSIX keeps a write of up to PIPE_BUF bytes
# (4 KiB on Linux) to a pipe whole, never mixed with another process's.
PIPE_BUF = 4096

logging.getLogger("errands").addHandler(logging.NullHandler())


def get_logger(name: str) -> Any:
    """errands' logger `name`: structlog's configuration when there is one, else `logging`."""
    return _Logger(name)


class _Logger:
    """Decides at each call, so that configuring structlog later (a command's start-up,
    an application's) takes effect on loggers made at import.

    The structlog logger is kept while the configuration stays the one it was made
    for: made anew at every call (structlog's lazy proxy, uncached), it cost about
    8 µs a line, and a draining worker writes one per job.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._made_for: tuple[object, ...] = ()
        self._bound: Any = None

    def __getattr__(self, method: str) -> Any:
        if structlog.is_configured():
            config = structlog.get_config()
            made_for = tuple(config[part] for part in _LOGGER_MAKERS)
            bound = self._bound
            if bound is None or not _same(made_for, self._made_for):
                bound = structlog.get_logger(self._name).bind()
                self._bound, self._made_for = bound, made_for
            return getattr(bound, method)
        stdlib = structlog.wrap_logger(
            logging.getLogger(self._name),
            processors=_TO_LOGGING,
            wrapper_class=structlog.stdlib.BoundLogger,
        )
        return getattr(stdlib, method)


# What a structlog logger is made of: a new configuration changes one of them (and a
# processors list changed in place, as structlog.testing.capture_logs does, reaches
# the loggers made from it already).
_LOGGER_MAKERS = ("processors", "wrapper_class", "logger_factory", "context_class")


def _same(these: tuple[object, ...], those: tuple[object, ...]) -> bool:
    return len(these) == len(those) and all(a is b for a, b in zip(these, those, strict=True))


def configure_logging(log_format: str = "console", level: str = "INFO") -> None:
    """Own the output of this process: errands' events and every standard-library record."""
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _scrub_exception,
    ]
    renderer: Processor
    if log_format == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        shared.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer(serializer=_json_dumps)
    numeric_level = logging.getLevelName(level)
    writer = LineWriter(sys.stderr)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        # Line and newline in one write(), flushed: no mid-line mixing.
        logger_factory=lambda *args: writer,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric_level)
    for name, quiet in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(max(quiet, numeric_level))


class _Output(Protocol):
    def write(self, text: str, /) -> int: ...
    def flush(self) -> None: ...


class LineWriter:
    """structlog's WriteLogger (line and newline in one write, flushed), except that the lines
    of a thread inside `lines_together` wait until it leaves, to be written together."""

    def __init__(self, file: _Output) -> None:
        self._file = file

    def msg(self, message: str) -> None:
        held: list[tuple[LineWriter, str]] | None = getattr(_held, "lines", None)
        if held is not None:
            held.append((self, message))
            return
        self.write(message + "\n")

    def write(self, text: str) -> None:
        self._file.write(text)
        self._file.flush()

    debug = info = warning = warn = error = err = critical = exception = fatal = failure = log = msg


_held = threading.local()  # .lines: this thread's lines held by lines_together


@contextmanager
def lines_together() -> Iterator[None]:
    """Hold this thread's lines (the LineWriter's, that is, once errands configured logging)
    until the block ends, then write them in as few writes as keep each whole and within
    PIPE_BUF bytes: a line per write cost a draining worker a system call per job."""
    if getattr(_held, "lines", None) is not None:  # nested: the outer block writes them
        yield
        return
    _held.lines = []
    try:
        yield
    finally:
        held, _held.lines = _held.lines, None
        _write_together(held)


def _write_together(held: list[tuple[LineWriter, str]]) -> None:
    chunk: list[str] = []
    size = 0
    writer: LineWriter | None = None
    for line_writer, message in held:
        line = message + "\n"
        length = len(line) if line.isascii() else len(line.encode())
        if chunk and (line_writer is not writer or size + length > PIPE_BUF):
            assert writer is not None
            writer.write("".join(chunk))
            chunk, size = [], 0
        chunk.append(line)
        size += length
        writer = line_writer
    if chunk and writer is not None:
        writer.write("".join(chunk))


def _json_dumps(event: EventDict, *, default: Callable[[Any], Any]) -> str:
    """json.dumps, with the encoder kept: json.dumps builds a new one at every call given an
    option, and structlog gives `default`, its fallback for objects JSON lacks (a fifth of the
    line a worker writes per finished job). The same text either way."""
    encoder = _ENCODERS.get(default)
    if encoder is None:
        encoder = _ENCODERS.setdefault(default, json.JSONEncoder(default=default))
    return encoder.encode(event)


_ENCODERS: dict[Callable[[Any], Any], json.JSONEncoder] = {}


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


# An event as one `logging` record: its text first, then its fields (logfmt).
_TO_LOGGING: list[Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.filter_by_level,
    _scrub_exception,
    structlog.processors.format_exc_info,
    structlog.processors.LogfmtRenderer(key_order=["event"], drop_missing=True),
]
