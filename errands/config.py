"""Settings from the environment (docs/reference/configuration.md); flags override them."""

from __future__ import annotations

import math
import os
import re
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from errands.backoff import Backoff
from errands.errors import ConfigurationError

T = TypeVar("T")

LOG_FORMATS = ("json", "console")


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    data_dir: str | None = None
    workers: int = 2
    lease_seconds: float = 30.0
    poll_seconds: float = 1.0
    reaper_seconds: float = 5.0
    backoff_base_seconds: float = 2.0
    backoff_max_seconds: float = 600.0
    grace_seconds: float = 20.0
    tasks: tuple[str, ...] = ()
    api_tokens: tuple[str, ...] = field(default=(), repr=False)
    http_addr: str = "0.0.0.0:3000"
    log_format: str = "console"
    log_level: str = "INFO"
    ui: bool = True  # the dashboard at /ui on the API's port
    # The database URL goes through a transaction-pooling PgBouncer: no LISTEN, no
    # server-side prepared statements (docs/guides/pgbouncer.md).
    pgbouncer: bool = False
    hostname: str = field(default_factory=socket.gethostname)  # in every worker id
    # Signs dashboard sessions; None: a random key kept in the database (docs/guides/security.md).
    secret_key: str | None = field(default=None, repr=False)
    # Addresses whose X-Forwarded-For and -Proto the API believes; None: nobody's. Named as
    # uvicorn names it.
    forwarded_allow_ips: str | None = None

    @property
    def backoff(self) -> Backoff:
        return Backoff(base=self.backoff_base_seconds, cap=self.backoff_max_seconds)

    @property
    def http_host_port(self) -> tuple[str, int]:
        host, _, port = self.http_addr.rpartition(":")
        return host.strip("[]") or "0.0.0.0", int(port)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        default = cls()

        def get(name: str, parse: Callable[[str], T], fallback: T) -> T:
            raw = env.get(name, "").strip()
            if not raw:
                return fallback
            try:
                return parse(raw)
            except ValueError as exc:
                raise ConfigurationError(f"{name}={raw!r} is invalid: {exc}") from None

        return cls(
            database_url=env.get("ERRANDS_DATABASE_URL") or env.get("DATABASE_URL") or None,
            data_dir=env.get("ERRANDS_DATA_DIR") or None,
            workers=get("ERRANDS_WORKERS", _positive_int, os.cpu_count() or default.workers),
            lease_seconds=get("ERRANDS_LEASE_SECONDS", _positive_float, default.lease_seconds),
            poll_seconds=get("ERRANDS_POLL_SECONDS", _positive_float, default.poll_seconds),
            reaper_seconds=get("ERRANDS_REAPER_SECONDS", _positive_float, default.reaper_seconds),
            backoff_base_seconds=get(
                "ERRANDS_BACKOFF_BASE_SECONDS", _non_negative_float, default.backoff_base_seconds
            ),
            backoff_max_seconds=get(
                "ERRANDS_BACKOFF_MAX_SECONDS", _non_negative_float, default.backoff_max_seconds
            ),
            grace_seconds=get("ERRANDS_GRACE_SECONDS", _non_negative_float, default.grace_seconds),
            tasks=get("ERRANDS_TASKS", _comma_list, default.tasks),
            api_tokens=get("ERRANDS_API_TOKENS", _comma_list, default.api_tokens),
            http_addr=get("ERRANDS_HTTP_ADDR", _http_addr, default.http_addr),
            log_format=get(
                "ERRANDS_LOG_FORMAT",
                _choice(LOG_FORMATS),
                "console" if sys.stderr.isatty() else "json",
            ),
            log_level=get("ERRANDS_LOG_LEVEL", _log_level, default.log_level),
            ui=get("ERRANDS_UI", _boolean, default.ui),
            pgbouncer=get("ERRANDS_PGBOUNCER", _boolean, default.pgbouncer),
            hostname=get("ERRANDS_HOSTNAME", _hostname, default.hostname),
            secret_key=_secret(env.get("ERRANDS_SECRET_KEY", "").strip() or None),
            forwarded_allow_ips=env.get("FORWARDED_ALLOW_IPS", "").strip() or None,
        )


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError("must be a whole number of at least 1")
    return value


def _non_negative_float(raw: str) -> float:
    value = float(raw)
    if not math.isfinite(value) or value < 0:
        raise ValueError("must be a number of seconds >= 0")
    return value


def _positive_float(raw: str) -> float:
    value = _non_negative_float(raw)
    if value == 0:
        raise ValueError("must be a number of seconds > 0")
    return value


def _comma_list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _http_addr(raw: str) -> str:
    _, sep, port = raw.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("must be HOST:PORT, e.g. 0.0.0.0:3000")
    return raw


def _boolean(raw: str) -> bool:
    value = raw.lower()
    if value not in ("0", "1", "true", "false", "yes", "no", "on", "off"):
        raise ValueError("must be 1 or 0 (true/false, yes/no, on/off)")
    return value in ("1", "true", "yes", "on")


def _choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw.lower() not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return raw.lower()

    return parse


def _hostname(raw: str) -> str:
    # Worker ids are host:pid:token, so a colon would make them ambiguous.
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", raw):
        raise ValueError("must be 1 to 100 letters, digits, '.', '-' or '_'")
    return raw


def _secret(raw: str | None) -> str | None:
    """Checked apart from the other settings: its value must never appear in a message."""
    if raw is not None and len(raw) < 32:
        raise ConfigurationError(
            "ERRANDS_SECRET_KEY is invalid: give at least 32 characters (openssl rand -hex 32)"
        )
    return raw


def _log_level(raw: str) -> str:
    level = raw.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return level
