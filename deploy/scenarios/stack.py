"""The stack of deploy/compose.local.yml under test: Compose, the engine, the API, Prometheus.

Every call is the real command line (docker-compose, docker) or a real HTTP request to
127.0.0.1, where the host network puts every service. The engine must run on this
machine: the scenarios signal containers' processes by their host pid.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from errands.harness.process import free_port
from errands.harness.waiting import wait_for

COMPOSE_FILE = Path(__file__).resolve().parents[1] / "compose.local.yml"
PORTS = {
    "ERRANDS_COMPOSE_API_PORT": "api",
    "ERRANDS_COMPOSE_PG_PORT": "postgres",
    "ERRANDS_COMPOSE_PROMETHEUS_PORT": "prometheus",
    "ERRANDS_COMPOSE_WORKER_PORT": "first worker",
}
FINISHED = {"completed", "failed", "dead", "cancelled"}


def environment() -> dict[str, str]:
    """This process's environment, with a free port for each port not chosen already."""
    env = dict(os.environ)
    for name in PORTS:
        env.setdefault(name, str(free_port()))
    env.setdefault("COMPOSE_PROJECT_NAME", "errands-compose-test")
    # Short enough that the stop scenario's long job outlasts it in seconds, not the default 20.
    env.setdefault("ERRANDS_GRACE_SECONDS", "5")
    return env


@dataclass
class Stack:
    env: dict[str, str]
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.http = httpx.Client(base_url=self.api_url, timeout=10)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.env['ERRANDS_COMPOSE_API_PORT']}"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.env['ERRANDS_COMPOSE_PROMETHEUS_PORT']}"

    # -- Compose and the engine ----------------------------------------------------------------

    def compose(self, *args: str, timeout: float = 300) -> str:
        command = ["docker-compose", "--file", str(COMPOSE_FILE), "--profile", "prometheus"]
        return run([*command, *args], self.env, timeout)

    def docker(self, *args: str) -> str:
        return run(["docker", *args], self.env, 60)

    def containers(self, service: str) -> list[str]:
        """Ids of the service's containers, running or not."""
        return self.compose("ps", "--quiet", service).split()

    def inspect(self, container: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = json.loads(self.docker("inspect", container))
        return found[0]

    def health(self, container: str) -> str:
        state = self.inspect(container)["State"]
        return str(state["Health"]["Status"]) if "Health" in state else str(state["Status"])

    def wait_healthy(self, service: str, replicas: int = 1, timeout: float = 120) -> list[str]:
        """The service's containers, once `replicas` of them report healthy."""

        def healthy() -> list[str] | None:
            ids = self.containers(service)
            ready = [c for c in ids if self.health(c) == "healthy"]
            return ready if len(ready) == replicas == len(ids) else None

        return wait_for(healthy, timeout, f"{replicas} healthy {service}", interval=0.5)

    def host_pid(self, container: str) -> int:
        """The container's main process, as this machine's pid namespace numbers it."""
        return int(self.inspect(container)["State"]["Pid"])

    def errands(self, *args: str) -> str:
        """An errands command run in the api container (its environment names the database)."""
        return self.compose("exec", "-T", "api", "errands", *args)

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "40")

    # -- the HTTP API ----------------------------------------------------------------------------

    def submit(self, task: str, payloads: Iterable[dict[str, Any]], **fields: Any) -> list[int]:
        """Submit one job of `task` per payload (and `fields`) in one batch; their ids."""
        jobs = [{"task": task, "payload": payload, **fields} for payload in payloads]
        response = self.http.post("/jobs/batch", json={"jobs": jobs})
        assert response.status_code == 201, response.text
        return [job["id"] for job in response.json()["jobs"]]

    def job(self, job_id: int) -> dict[str, Any]:
        response = self.http.get(f"/jobs/{job_id}")
        assert response.status_code == 200, response.text
        found: dict[str, Any] = response.json()
        return found

    def jobs(self, ids: Iterable[int]) -> list[dict[str, Any]]:
        return [self.job(job_id) for job_id in ids]

    def wait_finished(self, ids: list[int], timeout: float = 120) -> list[dict[str, Any]]:
        """The jobs, once every one has reached a final state."""

        def finished() -> list[dict[str, Any]] | None:
            jobs = self.jobs(ids)
            return jobs if all(job["state"] in FINISHED for job in jobs) else None

        return wait_for(finished, timeout, f"{len(ids)} jobs to finish", interval=0.5)

    def wait_state(self, job_id: int, state: str, timeout: float = 60) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            job = self.job(job_id)
            return job if job["state"] == state else None

        return wait_for(reached, timeout, f"job {job_id} {state}", interval=0.1)

    # -- Prometheus ------------------------------------------------------------------------------

    def prometheus(self, path: str, **params: str) -> Any:
        response = httpx.get(f"{self.prometheus_url}{path}", params=params, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()["data"]


def run(command: list[str], env: dict[str, str], timeout: float) -> str:
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited {result.returncode}:\n{result.stderr}")
    return result.stdout


def since(started: float) -> float:
    return time.monotonic() - started
