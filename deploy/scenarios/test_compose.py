"""The compose deployment, for real: deploy/compose.local.yml built, run, killed, scaled, scraped.

The scenarios share one stack (conftest.py) and run in this order, each leaving it healthy
with one worker replica, until the scaling scenario leaves three. Each prints what it
measured (the summary at the end of the run).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stack import Stack, since

from errands.harness.waiting import wait_for

USER = "10001:10001"  # the Dockerfile's USER
ALERTS = {"ErrandsJobsStuck", "ErrandsDeadJobsRising", "ErrandsQueueAgeGrowing"}
DEPLOY = Path(__file__).resolve().parents[1]


def test_the_stack_comes_up_healthy_after_one_migration(stack: Stack) -> None:
    (migrate,) = stack.containers("migrate")
    state = stack.inspect(migrate)["State"]
    assert (state["Status"], state["ExitCode"]) == ("exited", 0)
    assert stack.inspect(migrate)["RestartCount"] == 0
    for service in ("postgres", "api", "worker"):
        (container,) = stack.containers(service)
        assert stack.health(container) == "healthy", service
    ready = stack.compose("exec", "-T", "postgres", "pg_isready", "--host=127.0.0.1")
    assert "accepting connections" in ready
    encoding = stack.compose(
        "exec", "-T", "postgres", "psql", "--username=errands", "--dbname=errands",
        "--tuples-only", "--no-align", "--command=show server_encoding",
    )  # fmt: skip
    assert encoding.strip() == "UTF8"


def test_containers_run_as_the_non_root_user_the_image_declares(stack: Stack) -> None:
    (api,) = stack.containers("api")
    assert stack.inspect(stack.inspect(api)["Image"])["Config"]["User"] == USER
    for service in ("api", "worker"):
        (container,) = stack.containers(service)
        processes = stack.docker("top", container, "-eo", "pid,uid").splitlines()[1:]
        uids = {line.split()[1] for line in processes}  # of every process in the container
        assert uids == {USER.partition(":")[0]}, (service, processes)
        status = Path(f"/proc/{stack.host_pid(container)}/status").read_text()
        assert re.search(r"^Uid:\s+10001\s+10001\s+10001\s+10001$", status, re.MULTILINE)


def test_a_job_submitted_over_http_completes(stack: Stack, figure: list[str]) -> None:
    started = time.monotonic()
    response = stack.http.post(
        "/jobs", json={"task": "send_email", "payload": {"to": "compose@example.com"}}
    )
    assert response.status_code == 201, response.text
    job = stack.wait_state(response.json()["id"], "completed")
    assert job["attempts"] == 1
    figure.append(f"http job: submitted to completed in {since(started) * 1000:.0f} ms")


def test_a_worker_killed_from_the_host_is_restarted_and_every_job_completes(
    stack: Stack, figure: list[str]
) -> None:
    """SIGKILL of the container's main process by its host pid: a crash, which the restart
    policy answers (`docker kill` would count as a manual stop and leave it stopped)."""
    seconds = [3 + n / 1000 for n in range(20)]  # each job's result names its own payload
    ids = stack.submit("sleep", ({"seconds": s} for s in seconds))
    wait_for(
        lambda: sum(job["state"] == "in_progress" for job in stack.jobs(ids)) >= 5,
        30,
        "jobs running",
    )
    (worker,) = stack.containers("worker")
    before = stack.inspect(worker)
    killed_at = datetime.now(UTC)
    os.kill(stack.host_pid(worker), signal.SIGKILL)

    def restarted() -> dict[str, Any] | None:
        found = stack.inspect(worker)
        return found if found["State"]["StartedAt"] != before["State"]["StartedAt"] else None

    after = wait_for(restarted, 60, "the worker container restarted")
    stack.wait_healthy("worker")
    healthy = datetime.now(UTC)
    jobs = stack.wait_finished(ids, timeout=180)

    assert after["RestartCount"] == before["RestartCount"] + 1
    assert [job["state"] for job in jobs] == ["completed"] * len(ids)
    assert [job["result"] for job in jobs] == [{"slept": s} for s in seconds]
    lost = [job for job in jobs if job["errors"]]
    assert lost, "the kill interrupted no job"
    for job in lost:  # recovered once, from a worker of the killed container, then completed
        assert job["attempts"] == 2
        (error,) = job["errors"]
        assert error["worker"].startswith(f"{worker[:12]}:")
        assert moment(job["finished_at"]) > moment(error["at"]) > killed_at
    assert all(job["attempts"] == 1 for job in jobs if not job["errors"])
    hosts = {w["host"] for w in stats(stack)["workers"]}
    assert hosts == {worker[:12]}  # the replica keeps its identity across the restart

    restarted = moment(after["State"]["StartedAt"]) - killed_at
    recovered = max(moment(job["errors"][0]["at"]) for job in lost) - killed_at
    finished = max(moment(job["finished_at"]) for job in jobs) - killed_at
    reasons = "; ".join(sorted({job["errors"][0]["error"] for job in lost}))
    figure.append(
        f"kill -9 of the worker's main process (host pid): container running again "
        f"{restarted.total_seconds():.2f} s after the kill, healthy (next healthcheck) "
        f"{(healthy - killed_at).total_seconds():.1f} s; {len(lost)} of {len(ids)} jobs were "
        f"running, returned to pending {recovered.total_seconds():.1f} s after the kill "
        f"({reasons}); the last job completed {finished.total_seconds():.1f} s after the kill"
    )


def test_a_stopped_worker_finishes_its_job_within_the_grace_or_releases_it_at_once(
    stack: Stack, figure: list[str]
) -> None:
    grace = float(stack.env["ERRANDS_GRACE_SECONDS"])
    short, long = stack.submit("sleep", [{"seconds": 1}, {"seconds": grace + 10}])
    stack.wait_state(short, "in_progress")
    stack.wait_state(long, "in_progress")
    started = time.monotonic()
    stack.compose("stop", "worker")
    stopped = since(started)

    (worker,) = stack.containers("worker")
    assert stack.inspect(worker)["State"]["ExitCode"] == 0
    assert stack.job(short)["state"] == "completed"  # within the grace
    released = stack.job(long)
    assert released["state"] == "pending"  # at once, not at its lease's expiry
    assert released["lease_owner"] is None
    assert released["errors"][-1]["worker"].startswith(f"{worker[:12]}:")

    started = time.monotonic()
    stack.compose("start", "worker")
    stack.wait_state(long, "completed", timeout=grace + 60)
    figure.append(
        f"docker-compose stop worker: exited 0 in {stopped:.1f} s (grace {grace:.0f} s); "
        f"the 1 s job completed within it, the {grace + 10:.0f} s job was released and "
        f"completed {since(started):.1f} s after `start`"
    )


def test_three_worker_replicas_are_three_hosts_and_all_drain(
    stack: Stack, figure: list[str]
) -> None:
    stack.compose("up", "--detach", "--no-deps", "--scale", "worker=3", "worker")
    replicas = stack.wait_healthy("worker", replicas=3)
    by_host = {}
    for worker in stats(stack)["workers"]:
        by_host.setdefault(worker["host"], []).append(worker["id"])
    assert set(by_host) == {replica[:12] for replica in replicas}
    assert all(len(ids) == 2 for ids in by_host.values())  # ERRANDS_WORKERS each
    before = {replica: completed(stack, replica) for replica in replicas}

    count = 600
    started = time.monotonic()
    ids = stack.submit("sleep", ({"seconds": 0.5} for _ in range(count)))
    jobs = stack.wait_finished(ids, timeout=300)
    elapsed = since(started)
    assert {job["state"] for job in jobs} == {"completed"}

    def shares() -> dict[str, float] | None:
        done = {r: completed(stack, r) - before[r] for r in replicas}
        return done if sum(done.values()) == count else None

    done = wait_for(shares, 30, "every completion counted")
    assert all(done.values()), done  # each replica drained its part
    split = ", ".join(f"{r[:12]} {n:.0f}" for r, n in done.items())
    figure.append(
        f"3 replicas (hosts {', '.join(sorted(by_host))}): {count} jobs of 0.5 s drained in "
        f"{elapsed:.1f} s ({count / elapsed:.0f} jobs/s); completed per replica: {split}"
    )


def test_prometheus_scrapes_the_api_and_every_worker_and_loads_the_rules(
    stack: Stack, figure: list[str]
) -> None:
    replicas = {replica[:12] for replica in stack.containers("worker")}
    started = time.monotonic()

    def all_up() -> list[dict[str, Any]] | None:
        targets = stack.prometheus("/api/v1/targets")["activeTargets"]
        up = [t for t in targets if t["health"] == "up"]
        return targets if len(up) == len(targets) == 1 + len(replicas) else None

    targets = wait_for(all_up, 90, "every target up", interval=1)
    assert sorted(t["labels"]["job"] for t in targets) == ["errands-api"] + ["errands-worker"] * 3
    workers = {t["labels"]["replica"] for t in targets if t["labels"]["job"] == "errands-worker"}
    assert workers == replicas
    up = stack.prometheus("/api/v1/query", query="up")["result"]
    assert sorted(series["value"][1] for series in up) == ["1"] * 4
    (group,) = stack.prometheus("/api/v1/rules")["groups"]
    assert {rule["name"] for rule in group["rules"]} == ALERTS
    assert {rule["health"] for rule in group["rules"]} <= {"ok", "unknown"}
    # And they fire as their unit tests expect, by the promtool of the Prometheus image.
    (prometheus,) = stack.containers("prometheus")
    image = stack.inspect(prometheus)["Config"]["Image"]
    verdict = stack.docker(
        "run", "--rm", "--network=none", "--entrypoint=promtool", f"--volume={DEPLOY}:/rules:ro",
        "--workdir=/rules", image, "test", "rules", "alerts.test.yml",
    )  # fmt: skip
    assert "SUCCESS" in verdict
    figure.append(
        f"prometheus: api and {len(replicas)} workers up (up == 1 each) "
        f"{since(started):.0f} s into the check; {len(group['rules'])} alert rules loaded, and "
        "their promtool unit tests pass"
    )


def test_down_and_up_again_keeps_every_stored_job(stack: Stack, figure: list[str]) -> None:
    waiting, cancelled = stack.submit("sleep", [{}, {}], delay=3600)  # not due for an hour
    assert stack.http.post(f"/jobs/{cancelled}/cancel").status_code == 200
    before = all_jobs(stack)
    assert (before[waiting], before[cancelled]) == ("pending", "cancelled")
    assert "completed" in before.values()

    started = time.monotonic()
    stack.compose("down")
    assert stack.compose("ps", "--quiet") == ""
    stack.compose("up", "--detach")
    stack.wait_healthy("api")
    stack.wait_healthy("worker")
    back = since(started)

    assert all_jobs(stack) == before
    figure.append(
        f"down and up: all {len(before)} stored jobs kept with their states "
        f"(healthy again {back:.1f} s after `down`)"
    )


# -- helpers -----------------------------------------------------------------------------------


def moment(timestamp: str) -> datetime:
    """An RFC 3339 time from errands, PostgreSQL or Docker (nanoseconds cut to micro)."""
    return datetime.fromisoformat(timestamp)


def stats(stack: Stack) -> dict[str, Any]:
    """`errands stats --json`, run in the api container."""
    found: dict[str, Any] = json.loads(stack.errands("stats", "--json"))
    return found


def completed(stack: Stack, replica: str) -> float:
    """Jobs a worker replica completed, from its own /metrics (where it announced itself)."""
    address = stack.docker("exec", replica, "cat", "/tmp/errands-http-addr").strip()
    text = stack.http.get(f"http://{address}/metrics").text
    lines = re.findall(r"^errands_jobs_completed_total\{.*\} (\S+)$", text, re.MULTILINE)
    return sum(float(value) for value in lines)


def all_jobs(stack: Stack) -> dict[int, str]:
    """Every stored job's state, by id, page by page."""
    states: dict[int, str] = {}
    after: int | None = None
    while True:
        params = {"limit": 1000, **({"after": after} if after is not None else {})}
        page = stack.http.get("/jobs", params=params).json()
        states.update({job["id"]: job["state"] for job in page["jobs"]})
        after = page["next_after"]
        if after is None:
            return states
