"""GET /jobs/{id}?wait=SECONDS: answer when the job finishes, without holding a request thread."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest

from errands import Client
from errands.queue.lease import Completion, claim, complete
from tests.conftest import ServeApi

Conn = psycopg.Connection[Any]
API_THREADS = 8  # the App's default request threads


def run_to_completion(conn: Conn) -> None:
    (job,) = claim(conn, "w1", ["default"], limit=1, lease_seconds=30)
    complete(conn, "w1", [Completion(job.id, job.attempts, '"done"')])


def test_a_long_poll_answers_with_the_job_once_it_completes(
    api: httpx.Client, client: Client, conn: Conn
) -> None:
    job = client.enqueue("t")
    with ThreadPoolExecutor(1) as pool:
        polling = pool.submit(api.get, f"/jobs/{job.id}", params={"wait": 30})
        assert not polling.done()
        run_to_completion(conn)
        answer = polling.result()
    assert answer.status_code == 200
    assert answer.json()["state"] == "completed" and answer.json()["result"] == "done"


def test_a_long_poll_that_times_out_answers_with_the_job_as_it_is(
    api: httpx.Client, client: Client
) -> None:
    job = client.enqueue("t")
    answer = api.get(f"/jobs/{job.id}", params={"wait": 0.3})
    assert answer.status_code == 200 and answer.json()["state"] == "pending"


def test_a_long_poll_of_an_unknown_job_is_404(api: httpx.Client) -> None:
    assert api.get("/jobs/999999", params={"wait": 5}).status_code == 404


@pytest.mark.parametrize("wait", ["61", "-1", "soon", "nan", "inf"])
def test_a_wait_outside_zero_to_sixty_seconds_is_422(
    api: httpx.Client, client: Client, wait: str
) -> None:
    job = client.enqueue("t")
    answer = api.get(f"/jobs/{job.id}", params={"wait": wait})
    assert answer.status_code == 422
    assert [d["field"] for d in answer.json()["error"]["details"]] == ["wait"]


def test_long_polls_hold_no_request_thread(serve_api: ServeApi, client: Client, conn: Conn) -> None:
    api = serve_api()
    job = client.enqueue("t")
    waiting = API_THREADS * 3
    with (
        ThreadPoolExecutor(waiting) as pool,
        httpx.Client(base_url=api.base_url, timeout=60) as slow,
    ):
        polls = [
            pool.submit(slow.get, f"/jobs/{job.id}", params={"wait": 50}) for _ in range(waiting)
        ]
        # Were the polls holding the request threads, this would queue behind them for 50 s
        # and the client's 10 s timeout would fail it.
        for _ in range(5):
            assert api.get("/stats").status_code == 200
        assert not any(poll.done() for poll in polls)
        run_to_completion(conn)
        states = {poll.result().json()["state"] for poll in polls}
    assert states == {"completed"}


def test_the_long_poll_is_in_the_openapi_document(api: httpx.Client) -> None:
    parameters = api.get("/openapi.json").json()["paths"]["/jobs/{id}"]["get"]["parameters"]
    (wait,) = [p for p in parameters if p["name"] == "wait"]
    assert wait["in"] == "query" and wait["schema"]["maximum"] == 60


def test_many_waiters_are_each_answered_or_refused_at_once_never_refused_after_waiting(
    api: httpx.Client, client: Client
) -> None:
    # More waiters than the 128 requests the API holds at once: the probe that found 172
    # of 300 refused after their wait. Each wait ends together (a timeout), so that every
    # poll reads the job again at the same moment.
    job = client.enqueue("t")
    wait = 10.0  # long beside any admission, even on a loaded machine

    async def poll(http: httpx.AsyncClient) -> tuple[int, float]:
        started = time.monotonic()
        answer = await http.get(f"/jobs/{job.id}", params={"wait": wait})
        return answer.status_code, time.monotonic() - started

    async def polls() -> list[tuple[int, float]]:
        limits = httpx.Limits(max_connections=None)
        async with httpx.AsyncClient(base_url=api.base_url, timeout=60, limits=limits) as http:
            return await asyncio.gather(*(poll(http) for _ in range(300)))

    answers = asyncio.run(polls())
    assert {status for status, _ in answers} <= {200, 503}
    # A refusal comes before the wait could have ended: at once, at admission.
    assert all(took < wait for status, took in answers if status == 503)
    assert any(status == 200 for status, _ in answers)
