"""Make the documentation's screenshots of every dashboard page (docs/images/*.png).

    .venv/bin/python docs/screenshots.py

Starts everything it needs and stops it after: an embedded PostgreSQL in a temporary
directory, `errands run` with the demo tasks and two periodic schedules on a free
port, with a token so that the login page shows too. It submits jobs (some complete,
some fail for good), limits and pauses a queue, stores a workflow, then photographs
each page at 1,280 pixels wide in the browser tests' headless Chromium
(tests/browser.py: Debian's chromium and chromium-driver).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psycopg
from psycopg.conninfo import make_conninfo

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # the repository: its browser set-up is the tests'

from errands import embedded  # noqa: E402
from errands.harness.process import free_port  # noqa: E402
from errands.harness.waiting import answers, wait_for  # noqa: E402
from tests.browser import headless_chromium  # noqa: E402

IMAGES = HERE / "images"
TOKEN = "screenshot-token-0123456789abcdef"
TASKS = """
import errands
from errands.demo import *  # noqa: F403 - the demo tasks, beside the schedules below


@errands.periodic("0 7 * * 1-5", tz="Europe/Berlin")
@errands.task(queue="mail")
def morning_digest() -> dict:
    return {"sent": 120}


@errands.periodic(every=2, payload={"table": "sessions"}, catch_up=False)
@errands.task
def purge_expired(table: str) -> str:
    return f"purged {table}"
"""


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="errands-screenshots-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # pgserver, as root, runs PostgreSQL as another user
        server = embedded.start(work / "pgdata")
        try:
            with psycopg.connect(server, autocommit=True) as conn:
                conn.execute("create database screenshots")
            shoot(work, make_conninfo(server, dbname="screenshots"))
        finally:
            embedded.stop(work / "pgdata")


def shoot(work: Path, url: str) -> None:
    (work / "screenshot_tasks.py").write_text(TASKS)
    port = free_port()
    env = {
        **os.environ,
        "ERRANDS_DATABASE_URL": url,
        "ERRANDS_HTTP_ADDR": f"127.0.0.1:{port}",
        "ERRANDS_API_TOKENS": TOKEN,
        "ERRANDS_WORKERS": "2",
        "ERRANDS_LOG_FORMAT": "json",
    }
    base = f"http://127.0.0.1:{port}"
    subprocess.run(["errands", "migrate"], env=env, check=True, capture_output=True)
    daemon = subprocess.Popen(
        ["errands", "run", "--tasks", "screenshot_tasks"],
        cwd=work,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: answers(f"{base}/health"), what="errands run")
        dead = submit(base)
        photograph(base, dead, submit_workflow(base))
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)


def submit(base: str) -> int:
    """A realistic mix: completed reports and emails, dead failures, a paused queue's backlog."""
    api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    jobs = [
        *({"task": "send_email", "payload": {"to": f"user{n}@example.com"}} for n in range(40)),
        *({"task": "generate_report", "payload": {"rows": 1000 * n}} for n in range(1, 15)),
        *({"task": "flaky", "payload": {"fail_rate": 0.3}, "max_attempts": 3} for _ in range(20)),
        *({"task": "sleep", "payload": {"seconds": 30}, "queue": "slow"} for _ in range(3)),
        {"task": "fail", "payload": {"message": "partner answered 503"}, "max_attempts": 1},
    ]
    api.post("/jobs/batch", json={"jobs": jobs}).raise_for_status()
    api.patch("/queues/slow", json={"concurrency": 2}).raise_for_status()
    api.post("/queues/bulk/pause").raise_for_status()
    bulk = [{"task": "generate_report", "payload": {"rows": n}, "queue": "bulk"} for n in range(25)]
    api.post("/jobs/batch", json={"jobs": bulk}).raise_for_status()

    def dead_job() -> int | None:
        found = api.get("/jobs", params={"state": "dead", "task": "fail"}).json()["jobs"]
        return found[0]["id"] if found else None

    dead = wait_for(dead_job, what="the failing job to end dead")

    def drained() -> bool:
        waiting = api.get("/jobs", params={"state": "pending", "queue": "default"}).json()
        return not waiting["jobs"]

    wait_for(drained, what="the default queue to drain")
    time.sleep(3)  # a few ticks of the two-second schedule, and the live part's refresh
    return dead


def submit_workflow(base: str) -> int:
    """Two reports, a merge after both, and an email after the merge, still running."""
    api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    jobs = [
        {"ref": "north", "task": "generate_report", "payload": {"rows": 5000}},
        {"ref": "south", "task": "generate_report", "payload": {"rows": 7000}},
        {"ref": "merge", "task": "sleep", "payload": {"seconds": 60}, "after": ["north", "south"]},
        {
            "ref": "mail",
            "task": "send_email",
            "payload": {"to": "ops@example.com"},
            "after": ["merge"],
        },
    ]
    answer = api.post("/workflows", json={"jobs": jobs})
    answer.raise_for_status()
    workflow: int = answer.json()["id"]

    def merging() -> bool:
        states = [job["state"] for job in api.get(f"/workflows/{workflow}").json()["jobs"]]
        return states[2] == "in_progress"

    wait_for(merging, what="the workflow's merge to run")
    return workflow


def photograph(base: str, dead: int, workflow: int) -> None:
    IMAGES.mkdir(exist_ok=True)
    with headless_chromium("--hide-scrollbars") as driver:
        driver.set_window_size(1280, 720)
        driver.get(f"{base}/ui")
        driver.save_screenshot(str(IMAGES / "login.png"))
        driver.find_element("name", "token").send_keys(TOKEN)
        driver.find_element("id", "login").click()
        wait_for(lambda: "Overview" in driver.title, what="the overview after logging in")
        for path, name, height in (
            ("/ui", "overview.png", 900),
            ("/ui/jobs?state=dead", "jobs.png", 700),
            (f"/ui/jobs/{dead}", "job.png", 1250),  # down to the traceback
            ("/ui/schedules", "schedules.png", 440),
            (f"/ui/workflows/{workflow}", "workflow.png", 620),
        ):
            driver.set_window_size(1280, height)
            driver.get(base + path)
            driver.save_screenshot(str(IMAGES / name))
        driver.set_window_size(1280, 520)
        driver.get(f"{base}/ui/jobs?state=dead")
        driver.find_element("id", "bulk-retry").click()
        wait_for(lambda: "/ui/bulk" in driver.current_url, what="the confirmation page")
        driver.save_screenshot(str(IMAGES / "bulk.png"))


if __name__ == "__main__":
    main()
