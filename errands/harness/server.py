"""What a benchmark ran on: the PostgreSQL server, how it was reached, the settings that move
its figures.

pgbench's `-N` (the drain's yardstick) commits one transaction per round trip of five
statements, so its rate follows the disk's flush latency and the cost of a round trip;
a drain commits dozens of jobs at once, and follows CPU. A ratio between the two
therefore moves with the server's settings, its socket and its disk: the bench prints
them beside every run so that two runs can be told apart (docs/explanation/benchmarks.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg

from errands.database import open_connection

# The settings that change a commit's cost or a backend's CPU per statement.
SETTINGS = (
    "shared_buffers",
    "fsync",
    "synchronous_commit",
    "wal_sync_method",
    "full_page_writes",
    "wal_level",
    "commit_delay",
    "max_wal_size",
    "jit",
    "track_io_timing",
    "shared_preload_libraries",
)


def describe(url: str) -> dict[str, Any]:
    """The server behind `url`: version and build, socket, settings and, when it runs on this
    machine and the role may read it, its data directory's file system."""
    with open_connection(url, autocommit=True) as conn:
        version = _one(conn, "show server_version")
        build = _one(conn, "select version()")
        settings = dict(
            conn.execute(
                "select name, setting || coalesce(unit, '') from pg_settings where name = any(%s)",
                (list(SETTINGS),),
            ).fetchall()
        )
        # Readable by superusers and pg_read_all_settings only: no row otherwise.
        data_directory = conn.execute(
            "select setting from pg_settings where name = 'data_directory'"
        ).fetchone()
        host = conn.info.host
        socket = f"unix socket {host}" if host.startswith("/") else f"TCP {host}:{conn.info.port}"
    directory = data_directory[0] if data_directory else None
    return {
        "version": version,
        "build": build,
        "socket": socket,
        "settings": {name: settings.get(name) for name in SETTINGS},
        "data_directory": directory,
        "file_system": _file_system(directory) if directory else None,
    }


def summary(server: dict[str, Any]) -> list[str]:
    """The description in a few lines, for the bench's output."""
    settings = ", ".join(f"{name}={value}" for name, value in server["settings"].items())
    where = server["data_directory"] or "data directory not readable by this role"
    if server["file_system"]:
        where += f" ({server['file_system']})"
    return [
        f"PostgreSQL {server['version']} over {server['socket']}",
        f"  {server['build']}",
        f"  {settings}",
        f"  {where}",
    ]


def _one(conn: psycopg.Connection[Any], sql: str) -> str:
    row = conn.execute(sql).fetchone()
    assert row is not None
    return str(row[0])


def _file_system(directory: str) -> str | None:
    """The type of the file system `directory` is on, by the longest mount point above it in
    /proc/mounts; None when it is not on this machine (or not Linux)."""
    if not (Path(directory) / "PG_VERSION").exists():  # another machine's server
        return None
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    best: tuple[int, str] | None = None
    for line in mounts:
        _device, mount_point, kind, *_ = line.split()
        inside = directory == mount_point or directory.startswith(mount_point.rstrip("/") + "/")
        if inside and (best is None or len(mount_point) > best[0]):
            best = (len(mount_point), kind)
    return best[1] if best else None
