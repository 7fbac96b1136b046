"""Logs: quiet as a library, one whole line per event in errands' processes, true to the job."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import structlog
from structlog.testing import capture_logs

from errands import Client, embedded
from errands.harness.process import DaemonProcess, free_port
from errands.harness.waiting import answers, wait_for
from errands.log import PIPE_BUF, LineWriter, get_logger, lines_together
from errands.queue.lease import claim
from errands.workers.acks import Acknowledgements, ClaimRequest
from errands.workers.execution import Failed
from errands.workers.running import Entry
from tests.conftest import ServeApi

EMBEDDED_WARNING = "using the embedded development PostgreSQL"
Conn = psycopg.Connection[Any]


def python(code: str, env: dict[str, str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        **kwargs,
    )


@pytest.fixture
def fresh_data_dir() -> Iterator[Path]:
    """A data directory no embedded PostgreSQL has used yet; its server is stopped afterwards."""
    with tempfile.TemporaryDirectory(prefix="errands-logs-") as tmp:
        Path(tmp).chmod(0o755)  # pgserver, as root, runs PostgreSQL as another user
        pgdata = Path(tmp) / "pgdata"
        try:
            yield pgdata
        finally:
            if (pgdata / "postmaster.pid").exists():
                embedded.stop(pgdata)


def embedded_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("DATABASE_URL")}
    return {**env, "ERRANDS_DATA_DIR": str(data_dir), "ERRANDS_LOG_FORMAT": "json"}


@pytest.mark.slow
def test_imported_as_a_library_errands_configures_nothing_and_logs_through_logging(
    fresh_data_dir: Path,
) -> None:
    embedded.start(fresh_data_dir)  # as `errands run` does; the Client only joins it
    result = python(
        """
        import json, logging, structlog
        records = []
        class Keep(logging.Handler):
            def emit(self, record):
                records.append([record.name, record.levelname, record.getMessage()])
        root = logging.getLogger()
        root.addHandler(Keep())
        root.setLevel(logging.DEBUG)
        before = (list(root.handlers), root.level)
        import errands
        assert not structlog.is_configured(), "import errands configured structlog"
        assert (list(root.handlers), root.level) == before, "import errands changed logging"
        with errands.Client() as client:
            try:
                client.stats()
            except errands.ErrandsError as refused:  # a Client never migrates
                records.append(["refused", "", str(refused)])
        print(json.dumps(records))
        """,
        embedded_env(fresh_data_dir),
    )
    records = json.loads(result.stdout)  # nothing else on stdout
    assert result.stderr == ""
    assert records[-1][:2] == ["refused", ""] and "errands migrate" in records[-1][2]
    joined = [r for r in records if r[0] == "errands.database" and EMBEDDED_WARNING in r[2]]
    assert [r[1] for r in joined] == ["DEBUG"]  # it joined a server `errands run` started


@pytest.mark.slow
def test_without_a_url_only_errands_run_starts_the_embedded_database(
    fresh_data_dir: Path, tmp_path: Path
) -> None:
    env = embedded_env(fresh_data_dir)

    def errands(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "errands", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, check=False)

    refused = errands("stats")
    assert refused.returncode == 2
    assert refused.stderr.startswith("errands: ") and refused.stderr.count("\n") == 1
    assert "ERRANDS_DATABASE_URL" in refused.stderr
    client = python(
        """
        import asyncio, errands
        def sync_stats(): errands.Client().stats()
        def async_stats(): asyncio.run(errands.AsyncClient().stats())
        for stats in (sync_stats, async_stats):
            try:
                stats()
            except errands.ConfigurationError as exc:
                print(exc)
        """,
        env,
    )
    refusals = client.stdout.splitlines()
    assert len(refusals) == 2 and all("ERRANDS_DATABASE_URL" in line for line in refusals)
    assert not fresh_data_dir.exists()  # no second server, not even its directory

    daemon = DaemonProcess(["run", "--workers", "1", "--no-http"], env, tmp_path / "run.log")
    daemon.start()
    try:
        wait_for(lambda: errands("stats").returncode == 0, what="the embedded database")
        warned = [e for e in daemon.log_events() if e.get("event", "").startswith(EMBEDDED_WARNING)]
        assert [e["level"] for e in warned] == ["warning"]  # the one process that started it
    finally:
        assert daemon.stop() == 0
    assert errands("stats").returncode == 0  # it keeps running after errands run exits


def test_lines_written_by_several_processes_at_once_never_mix() -> None:
    # Four processes, one pipe: a write of up to PIPE_BUF bytes (4 KiB) is atomic, so a whole
    # line written in one call never mixes with another (a line and its newline written apart do).
    result = python(
        """
        import os, structlog
        from errands.log import configure_logging
        configure_logging("json", "INFO")
        for _ in range(2):
            os.fork()
        log = structlog.get_logger("errands.test")
        for n in range(200):
            log.info("line", n=n, pid=os.getpid(), filler="x" * 3000)
        """,
        dict(os.environ),
    )
    lines = result.stderr.splitlines()
    assert len(lines) >= 200  # the first process's at least; the others may outlive it
    for line in lines:
        assert json.loads(line)["event"] == "line"


def test_a_commands_output_leaves_out_the_request_lines_of_its_http_client() -> None:
    # httpx logs every request at info; the bench's and chaos harness's health checks made it
    # print one line per check between their figures.
    result = python(
        """
        import logging
        from errands.log import configure_logging, get_logger
        configure_logging("json", "INFO")
        logging.getLogger("httpx").info('HTTP Request: GET http://127.0.0.1:1/health "200 OK"')
        logging.getLogger("httpx").warning("kept: a warning")
        get_logger("errands.test").info("kept: errands' own line")
        """,
        dict(os.environ),
    )
    events = [json.loads(line)["event"] for line in result.stderr.splitlines()]
    assert events == ["kept: a warning", "kept: errands' own line"]


def test_a_json_line_writes_what_json_lacks_as_its_repr_and_the_rest_as_json_dumps_does() -> None:
    result = python(
        """
        import datetime
        from errands.log import configure_logging, get_logger
        configure_logging("json", "INFO")
        for _ in range(2):  # the second line reuses the first one's encoder
            get_logger("errands.test").info("job completed", job_id=7, on=datetime.date(2026, 1, 2),
                                            tags={"a"}, text="é\u2028")
        """,
        dict(os.environ),
    )
    lines = result.stderr.splitlines()
    assert len(lines) == 2
    for line in lines:
        assert line.startswith('{"job_id": 7, "on": "datetime.date(2026, 1, 2)", ')
        assert '"tags": "{\'a\'}", "text": "\\u00e9\\u2028", "event": "job completed"' in line


def test_the_json_log_of_the_api_carries_uvicorns_own_lines_as_json(db_url: str) -> None:
    port = free_port()
    env = {
        **os.environ,
        "ERRANDS_DATABASE_URL": db_url,
        "ERRANDS_LOG_FORMAT": "json",
        "ERRANDS_HTTP_ADDR": f"127.0.0.1:{port}",
    }
    command = [sys.executable, "-m", "errands", "api"]
    with subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) as api:
        try:
            wait_for(lambda: answers(f"http://127.0.0.1:{port}/health"), what="the API")
            with socket.create_connection(("127.0.0.1", port)) as raw:
                raw.sendall(b"NOT HTTP AT ALL\r\n\r\n")
                raw.recv(4096)
        finally:
            api.terminate()
        _, stderr = api.communicate(timeout=30)
    lines = stderr.splitlines()
    events = [json.loads(line) for line in lines]  # every line is JSON, none is blank
    assert any(e["event"] == "Invalid HTTP request received." for e in events)


def request_lines(logs: list[dict[str, Any]], path: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "request" and e["path"] == path]


def test_probes_and_scrapes_are_logged_at_debug_other_requests_at_info(
    serve_api: ServeApi,
) -> None:
    http = serve_api()
    with capture_logs() as logs:
        for path in ("/health", "/ready", "/metrics", "/stats"):
            http.get(path)
    for path in ("/health", "/ready", "/metrics"):
        assert {e["log_level"] for e in request_lines(logs, path)} <= {"debug"}
    assert [e["log_level"] for e in request_lines(logs, "/stats")] == ["info"]


def test_a_failed_jobs_log_line_says_where_it_was_raised(client: Client, conn: Conn) -> None:
    client.enqueue("t")
    (job,) = claim(conn, "w1", ["default"], 1, 30)
    acks = Acknowledgements(
        worker_id="w1", mode="batched", retry_delay=lambda job: 1.0, on_lost=lambda entry: None
    )
    acks.add(Entry(job), Failed("ValueError: bad thing", "Traceback …", 0.1, "m.py:3 in f"))
    with capture_logs() as logs:
        acks.write(conn, ClaimRequest(["default"], 0, 30))
    (failed,) = [e for e in logs if e["event"] == "job failed"]
    assert (failed["error"], failed["where"]) == ("ValueError: bad thing", "m.py:3 in f")


class RecordingFile:
    """A file that keeps each write apart, as the system calls a flushed write makes."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_lines_held_together_are_written_whole_in_writes_of_at_most_pipe_buf_bytes() -> None:
    file = RecordingFile()
    writer = LineWriter(file)
    lines = [f'{{"n": {n}, "filler": "{"é" * (n % 7) + "x" * (50 * n)}"}}' for n in range(120)]
    with lines_together():
        for line in lines:
            writer.msg(line)
        assert file.writes == []  # held until the block ends
    assert "".join(file.writes) == "".join(line + "\n" for line in lines)  # every line, in order
    assert len(file.writes) < len(lines)
    for text in file.writes:
        assert text.endswith("\n")
        assert len(text.encode()) <= PIPE_BUF or text.count("\n") == 1  # a long line goes alone


def test_a_line_outside_lines_together_is_written_at_once() -> None:
    file = RecordingFile()
    LineWriter(file).info("one")
    assert file.writes == ["one\n"]


def test_a_logger_follows_a_configuration_made_after_its_first_line() -> None:
    before = structlog.get_config()
    first, second = RecordingFile(), RecordingFile()
    logger = get_logger("errands.test")
    try:
        for file, renderer in ((first, "first"), (second, "second")):
            structlog.configure(
                processors=[lambda _logger, _name, event, label=renderer: f"{label} {event}"],
                logger_factory=lambda *_args, file=file: LineWriter(file),
            )
            logger.info("hello")
    finally:
        structlog.configure(**before)
    assert first.writes == ["first {'event': 'hello'}\n"]
    assert second.writes == ["second {'event': 'hello'}\n"]
