"""What an operator meets on day one: orphans, grace, a taken port, readiness, start-up lines.

Each test runs the real `errands run` (or `errands api`) as a process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from errands import Client
from errands.harness.process import alive, free_port
from errands.harness.waiting import answers
from tests.daemon import FAST, TESTS, Daemon, wait_for
from tests.test_deployment import run_healthcheck

StartDaemon = Callable[..., Daemon]
pytestmark = pytest.mark.slow


def daemon_env(db_url: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "ERRANDS_DATABASE_URL": db_url,
        "ERRANDS_TASKS": "daemon_tasks",
        "ERRANDS_LOG_FORMAT": "json",
        "PYTHONPATH": str(TESTS),
        **FAST,
        **extra,
    }


def port_is_free(port: int) -> bool:
    """Whether a server could listen there now (connections in TIME_WAIT do not count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def sockets_on(port: int) -> str:
    """The TCP sockets on `port` and their processes, as `ss` lists them (for a failure)."""
    command = ["ss", "-Htanp", f"sport = :{port}"]
    try:
        listed = subprocess.run(command, check=False, capture_output=True, text=True)
    except FileNotFoundError:
        return "(ss is not installed)"
    return listed.stdout or listed.stderr or "none listed"


def test_every_child_exits_when_the_supervisors_output_pipe_is_closed(
    db_url: str, client: Client
) -> None:
    # `errands run 2>&1 | head`: the reader goes away, the next write raises, the supervisor
    # dies. Its children must exit although they cannot write a line either.
    port = free_port()
    command = [sys.executable, "-m", "errands", "run", "--workers", "2", "--port", str(port)]
    process = subprocess.Popen(
        command,
        env=daemon_env(db_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    assert process.stdout is not None
    children: dict[str, int] = {}
    workers_started = 0
    try:
        while not {"worker-1", "worker-2", "http-1"} <= children.keys() or workers_started < 2:
            line = json.loads(process.stdout.readline())
            if line["event"] == "child started":
                children[line["child"]] = line["pid"]
            workers_started += line["event"] == "worker started"
        health = f"http://127.0.0.1:{port}/health"
        wait_for(lambda: answers(health), what="the API to serve")
        process.stdout.close()  # the reader is gone; the pipe is closed
        # Every finished job logs a line: the next write is the one that fails.
        wait_for(
            lambda: process.poll() is not None or client.enqueue("record") is None,
            timeout=30,
            what="the supervisor to die on its closed output",
            interval=0.2,
        )
        wait_for(
            lambda: not any(alive(pid) for pid in children.values()),
            timeout=5,
            what=f"the children {children} to exit",
        )
        # Bounded like the children's exit: a clean-clone run once found the port still
        # bound the moment the children it knew had gone; a failure names the holder.
        try:
            wait_for(lambda: port_is_free(port), timeout=5, what=f"port {port} to be free")
        except TimeoutError:
            pytest.fail(f"port {port} is still taken:\n{sockets_on(port)}")
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_the_end_of_the_grace_is_logged_once(start_daemon: StartDaemon, client: Client) -> None:
    daemon = start_daemon("--workers", "1", "--grace", "0.5")
    job = client.enqueue("hold_every_time", {"seconds": 30})
    wait_for(
        lambda: daemon.query("select 1 from test_executions where job_id = %s", (job.id,)),
        what="the job to start",
    )
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    ends = [e for e in daemon.log_events() if e["event"].startswith("grace period over")]
    assert len(ends) == 1


@pytest.mark.parametrize("command", [["run", "--workers", "1"], ["api"]])
def test_a_port_in_use_stops_start_up_with_one_clear_message(
    db_url: str, command: list[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "errands", *command],
            env=daemon_env(db_url, ERRANDS_HTTP_ADDR=f"127.0.0.1:{port}"),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 2
    message = f"port {port} is in use (set ERRANDS_HTTP_ADDR)"
    assert result.stderr.count(message) == 1
    assert "child started" not in result.stderr


@pytest.mark.parametrize("command", [["run", "--workers", "1"], ["api"]])
def test_a_port_in_use_given_by_port_is_named_so(db_url: str, command: list[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "errands", *command, "--host", "127.0.0.1", "--port", str(port)],
            env=daemon_env(db_url),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 2
    assert result.stderr.count(f"port {port} is in use (set --port)") == 1
    assert "ERRANDS_HTTP_ADDR" not in result.stderr


def test_a_supervisor_started_right_after_a_killed_one_takes_its_port_over(
    start_daemon: StartDaemon,
) -> None:
    # The killed supervisor's HTTP child still holds the port for a moment, until it notices.
    port = free_port()
    first = start_daemon("--workers", "1", "--port", str(port))
    first.wait_for_workers(1)
    first.signal(signal.SIGKILL)
    first.wait()
    second = start_daemon("--workers", "1", "--port", str(port))
    wait_for(lambda: answers(f"http://127.0.0.1:{port}/health"), what="the second supervisor")
    assert second.running()


def ready(port: int) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5)


def test_ready_answers_503_while_no_worker_runs(start_daemon: StartDaemon) -> None:
    port = free_port()
    daemon = start_daemon("--workers", "2", "--port", str(port), ERRANDS_TASKS="broken_tasks")
    wait_for(
        lambda: [e for e in daemon.log_events() if e["event"] == "child exited; restarting"],
        what="a worker to fail",
    )
    response = ready(port)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "not_ready"
    assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
    assert run_healthcheck(f"0.0.0.0:{port}") != 0  # the image's and compose's: unhealthy


def test_ready_answers_200_once_the_workers_run(start_daemon: StartDaemon) -> None:
    port = free_port()
    daemon = start_daemon("--workers", "1", "--port", str(port))
    daemon.wait_for_workers(1)
    assert wait_for(lambda: ready(port).status_code == 200, what="/ready to answer 200")


def test_start_up_says_where_the_api_listens(start_daemon: StartDaemon) -> None:
    port = free_port()
    daemon = start_daemon("--workers", "1", "--port", str(port))
    daemon.wait_for_workers(1)
    events = [e["event"] for e in daemon.log_events()]
    assert f"HTTP API on http://0.0.0.0:{port}" in events


MY_TASKS = """
import errands

@errands.task
def greet(name: str = "") -> str:
    return f"hello {name}"
"""


def started_worker_tasks(db_url: str, cwd: Path, env: dict[str, str]) -> list[str]:
    """The tasks the first worker of `errands run --tasks mytasks` says it registered."""
    # The console script, as people run it: unlike `python -m`, it puts no directory of
    # the caller's on the import path by itself.
    script = str(Path(sys.executable).parent / "errands")
    command = [script, "run", "--no-http", "--workers", "1"]
    with subprocess.Popen(
        [*command, "--tasks", "mytasks"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    ) as process:
        assert process.stdout is not None
        try:
            for line in process.stdout:
                event = json.loads(line)
                if event["event"] == "worker started":
                    return list(event["tasks"])
                assert event["event"] != "child exited; restarting", event
            raise AssertionError("errands run exited before a worker started")
        finally:
            os.killpg(process.pid, signal.SIGKILL)


def test_a_worker_registers_only_the_tasks_of_its_modules(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "mytasks.py").write_text(MY_TASKS)
    env = daemon_env(db_url, PYTHONPATH=str(tmp_path))
    assert started_worker_tasks(db_url, TESTS, env) == ["greet"]


def test_task_modules_are_found_in_the_current_directory(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "mytasks.py").write_text(MY_TASKS)
    env = daemon_env(db_url)
    del env["PYTHONPATH"]
    assert started_worker_tasks(db_url, tmp_path, env) == ["greet"]
