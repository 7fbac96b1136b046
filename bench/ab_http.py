"""The cost of one POST /jobs in the API process, beside the floor of a bare web application.

What measured the HTTP changes of issue 30. wrk POSTs one job per request on 16
keep-alive connections (as `errands bench`'s http-single) for SECONDS; the script
prints the rate and the CPU per request of the serving process and of PostgreSQL,
read from /proc. CPU per request moves far less than the rate on a shared machine;
compare two versions in alternating runs, each from a directory outside the
checkouts (so that PYTHONPATH, not the current directory, decides which errands
is imported):

    cd /tmp && PYTHONPATH=/path/to/other/checkout /path/to/.venv/bin/python \\
        /path/to/bench/ab_http.py URL api 10

URL is a local PostgreSQL server with the errands schema (`errands migrate`). WHAT
is `api` (`errands api`, defaults, JSON logs to a file), `floor-insert` (a bare
Starlette application under uvicorn with uvloop and httptools: it parses the
body and runs one INSERT of two columns on a thread of 8 with pooled connections,
answering 201 with a small JSON body) or `floor-enqueue` (the same application
storing the job with errands' `enqueue`: the statement and its Python around it,
none of the API's layers).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from errands.harness.process import ProcStat, free_port, tree_cpu_seconds

NOOP = "bench.noop"
FLOOR_TABLE = (
    "create table if not exists ab_http_floor (id bigserial primary key, task text, payload jsonb)"
)


def serve_floor(url: str, what: str, port: int) -> None:
    """The bare application of `floor-insert` or `floor-enqueue`, until terminated."""
    import asyncio  # noqa: PLC0415

    import uvicorn  # noqa: PLC0415
    from starlette.applications import Starlette  # noqa: PLC0415
    from starlette.requests import Request  # noqa: PLC0415
    from starlette.responses import Response  # noqa: PLC0415
    from starlette.routing import Route  # noqa: PLC0415

    from errands.queue.requests import JobRequest  # noqa: PLC0415
    from errands.queue.submit import enqueue  # noqa: PLC0415

    threads = ThreadPoolExecutor(8)
    pool = ConnectionPool(url, min_size=8, max_size=8, kwargs={"autocommit": True}, open=False)

    def store(task: str) -> int:
        with pool.connection() as conn:
            if what == "floor-enqueue":
                return enqueue(conn, JobRequest(task=task)).job.id
            row = conn.execute(
                "insert into ab_http_floor (task, payload) values (%s, '{}') returning id", (task,)
            ).fetchone()
            assert row is not None
            return int(row[0])

    async def jobs(request: Request) -> Response:
        task = json.loads(await request.body())["task"]
        job_id = await asyncio.get_running_loop().run_in_executor(threads, store, task)
        return Response(
            json.dumps({"id": job_id, "task": task}), 201, media_type="application/json"
        )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        pool.open()
        yield
        pool.close()

    routes = [Route("/jobs", jobs, methods=["POST"]), Route("/health", lambda r: Response("ok"))]
    app = Starlette(routes=routes, lifespan=lifespan)
    uvicorn.run(
        app, host="127.0.0.1", port=port, loop="uvloop", http="httptools", log_level="warning"
    )


def wrk(base: str, seconds: int, script: Path) -> int:
    """Requests wrk completed in `seconds` on 16 connections; each must be a 2xx."""
    out = subprocess.run(
        ["wrk", "-t", "2", "-c", "16", "-d", f"{seconds}s", "-s", str(script), f"{base}/jobs"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "Non-2xx" not in out, out
    match = re.search(r"(\d+) requests in", out)
    assert match, out
    return int(match.group(1))


def main(url: str, what: str, seconds: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(FLOOR_TABLE)
        stat = ProcStat.read(conn.info.backend_pid)
        assert stat is not None, "PostgreSQL must run on this machine"
    port = free_port()
    env = {**os.environ, "ERRANDS_DATABASE_URL": url, "ERRANDS_LOG_FORMAT": "json"}
    command = (
        [sys.executable, "-m", "errands", "api", "--host", "127.0.0.1", "--port", str(port)]
        if what == "api"
        else [sys.executable, __file__, url, f"serve-{what}", str(port)]
    )
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "post.lua"
        body = json.dumps({"task": NOOP})
        script.write_text(
            f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
        with (Path(tmp) / "server.log").open("w") as log:
            server = subprocess.Popen(command, env=env, stdout=log, stderr=log)
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(300):
                try:
                    urllib.request.urlopen(f"{base}/health", timeout=1)
                    break
                except OSError:
                    time.sleep(0.1)
            wrk(base, 2, script)  # warm: connections, prepared statements
            before = ProcStat.read(server.pid)
            postgres = tree_cpu_seconds(stat.ppid)
            requests = wrk(base, seconds, script)
            after = ProcStat.read(server.pid)
            postgres = tree_cpu_seconds(stat.ppid) - postgres
        finally:
            server.terminate()
            server.wait()
    assert before is not None and after is not None
    per = 1e6 / requests
    print(
        f"{what}: {requests / seconds:,.0f} requests/s, CPU per request: server"
        f" {(after.cpu_seconds - before.cpu_seconds) * per:.0f} us,"
        f" PostgreSQL {postgres * per:.0f} us; load {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    if sys.argv[2].startswith("serve-"):
        serve_floor(sys.argv[1], sys.argv[2].removeprefix("serve-"), int(sys.argv[3]))
    else:
        main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
