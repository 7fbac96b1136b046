"""The HTTP API over a real socket, against a real database."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from errands import Client
from errands.api import endpoints, openapi
from errands.api.guesses import LIMIT, WINDOW_SECONDS
from errands.queue.lease import Held, claim, heartbeat
from tests.conftest import ServeApi

Conn = psycopg.Connection[Any]

TOKEN = "s3cret-token"


def error_fields(response: httpx.Response) -> list[str]:
    return [d["field"] for d in response.json()["error"]["details"]]


# -- submission ------------------------------------------------------------------------------


def test_submit_creates_a_job(api: httpx.Client, client: Client) -> None:
    response = api.post("/jobs", json={"task": "send_email", "payload": {"to": "a@example.com"}})
    assert response.status_code == 201
    job = response.json()
    assert response.headers["location"] == f"/jobs/{job['id']}"
    assert (job["task"], job["state"], job["payload"]) == (
        "send_email",
        "pending",
        {"to": "a@example.com"},
    )
    assert client.get(job["id"]) is not None


def test_timestamps_are_rfc3339_with_an_offset(api: httpx.Client) -> None:
    job = api.post("/jobs", json={"task": "t"}).json()
    assert job["created_at"].endswith("+00:00")


def test_same_key_and_request_replays_with_200(api: httpx.Client) -> None:
    body = {"task": "t", "payload": {"n": 1}}
    first = api.post("/jobs", json=body, headers={"Idempotency-Key": "k1"})
    again = api.post("/jobs", json=body, headers={"Idempotency-Key": "k1"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]


def test_the_key_may_come_in_the_body(api: httpx.Client) -> None:
    body = {"task": "t", "idempotency_key": "k1"}
    assert api.post("/jobs", json=body).status_code == 201
    assert api.post("/jobs", json=body).status_code == 200


def test_same_key_different_request_is_409(api: httpx.Client) -> None:
    api.post("/jobs", json={"task": "t", "payload": {"n": 1}}, headers={"Idempotency-Key": "k1"})
    response = api.post(
        "/jobs", json={"task": "t", "payload": {"n": 2}}, headers={"Idempotency-Key": "k1"}
    )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "idempotency_conflict"


def test_header_and_body_keys_must_agree(api: httpx.Client, client: Client) -> None:
    response = api.post(
        "/jobs", json={"task": "t", "idempotency_key": "a"}, headers={"Idempotency-Key": "b"}
    )
    assert response.status_code == 409 and error_fields(response) == ["idempotency_key"]
    assert client.list() == []


def test_invalid_fields_are_422_naming_each(api: httpx.Client, client: Client) -> None:
    response = api.post(
        "/jobs", json={"task": "bad name", "priority": "high", "max_attempts": 0, "typo": 1}
    )
    assert response.status_code == 422
    assert sorted(error_fields(response)) == ["max_attempts", "priority", "task", "typo"]
    assert client.list() == []


def test_a_body_that_is_not_an_object_is_422(api: httpx.Client) -> None:
    response = api.post("/jobs", json=[1, 2])
    assert response.status_code == 422 and error_fields(response) == ["body"]


def test_non_json_content_type_is_415(api: httpx.Client) -> None:
    response = api.post("/jobs", content=b"task=t", headers={"content-type": "text/plain"})
    assert response.status_code == 415


def test_unparsable_json_is_400(api: httpx.Client) -> None:
    response = api.post("/jobs", content=b"{nope", headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"


def test_a_body_over_one_mebibyte_is_413(api: httpx.Client, client: Client) -> None:
    big = {"task": "t", "payload": {"blob": "x" * (1024 * 1024)}}
    assert api.post("/jobs", json=big).status_code == 413
    assert client.list() == []


def test_an_oversized_body_without_a_length_is_refused_while_streaming(api: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"task": "t", "payload": {"blob": "'
        for _ in range(300):
            yield b"x" * 8192
        yield b'"}}'

    response = api.post("/jobs", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


# -- batches ---------------------------------------------------------------------------------


def test_batch_submits_every_job(api: httpx.Client) -> None:
    response = api.post(
        "/jobs/batch", json={"jobs": [{"task": "t", "payload": {"n": n}} for n in range(5)]}
    )
    assert response.status_code == 201
    assert [job["payload"]["n"] for job in response.json()["jobs"]] == list(range(5))


def test_batch_with_one_bad_item_stores_nothing(api: httpx.Client, client: Client) -> None:
    response = api.post(
        "/jobs/batch", json={"jobs": [{"task": "t"}, {"task": "t", "priority": "x"}]}
    )
    assert response.status_code == 422 and error_fields(response) == ["jobs[1].priority"]
    assert client.list() == []


def test_batch_with_a_conflicting_key_stores_nothing(api: httpx.Client, client: Client) -> None:
    api.post("/jobs", json={"task": "t", "idempotency_key": "k"})
    response = api.post(
        "/jobs/batch",
        json={
            "jobs": [
                {"task": "t", "payload": {"new": 1}},
                {"task": "other", "idempotency_key": "k"},
            ]
        },
    )
    assert response.status_code == 409
    assert len(client.list()) == 1


def test_batch_over_a_thousand_is_422(api: httpx.Client) -> None:
    response = api.post("/jobs/batch", json={"jobs": [{"task": "t"}] * 1001})
    assert response.status_code == 422 and error_fields(response) == ["jobs"]


# -- reading and managing --------------------------------------------------------------------


def test_get_returns_the_job_or_404(api: httpx.Client) -> None:
    job = api.post("/jobs", json={"task": "t"}).json()
    assert api.get(f"/jobs/{job['id']}").json() == job
    missing = api.get("/jobs/999999")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert api.get(f"/jobs/{2**64}").status_code == 404


def test_list_filters_and_validates(api: httpx.Client) -> None:
    api.post("/jobs", json={"task": "a", "queue": "q1"})
    b = api.post("/jobs", json={"task": "b", "queue": "q2"}).json()
    assert [j["id"] for j in api.get("/jobs", params={"queue": "q2"}).json()["jobs"]] == [b["id"]]
    bad = api.get("/jobs", params={"state": "sleeping", "limit": "0", "colour": "red"})
    assert bad.status_code == 422
    assert sorted(error_fields(bad)) == ["colour", "limit", "state"]


def test_list_refuses_nul_characters_in_filters(api: httpx.Client) -> None:
    response = api.get("/jobs", params={"task": "a\x00b"})
    assert response.status_code == 422 and error_fields(response) == ["task"]


def test_pagination_neither_skips_nor_repeats_while_jobs_arrive(api: httpx.Client) -> None:
    api.post("/jobs/batch", json={"jobs": [{"task": "t"}] * 10})
    seen: list[int] = []
    page = api.get("/jobs", params={"limit": 3}).json()
    while True:
        seen += [job["id"] for job in page["jobs"]]
        api.post("/jobs", json={"task": "t"})  # arrives between pages
        if page["next_after"] is None:
            break
        page = api.get("/jobs", params={"limit": 3, "after": page["next_after"]}).json()
    assert seen == list(range(10, 0, -1))


def test_cancel_then_retry(api: httpx.Client) -> None:
    job = api.post("/jobs", json={"task": "t"}).json()
    assert api.post(f"/jobs/{job['id']}/cancel").json()["state"] == "cancelled"
    assert api.post(f"/jobs/{job['id']}/retry").json()["state"] == "pending"


def test_cancel_of_a_running_job_answers_200_with_the_request_recorded(
    api: httpx.Client, client: Client, conn: Conn
) -> None:
    job = client.enqueue("t")
    claim(conn, "w1", ["default"], 1, 30)
    answer = api.post(f"/jobs/{job.id}/cancel")
    assert answer.status_code == 200
    body = answer.json()
    assert (body["state"], body["lease_owner"]) == ("in_progress", "w1")
    assert body["cancel_requested_at"].endswith("+00:00")


def test_a_running_jobs_progress_is_shown_and_documented(
    api: httpx.Client, client: Client, conn: Conn
) -> None:
    job = client.enqueue("t")
    (claimed,) = claim(conn, "w1", ["default"], 1, 30)
    held = Held(claimed.id, claimed.attempts)
    heartbeat(conn, "w1", [held], 30, {job.id: '{"done": 3, "total": 7}'})
    assert api.get(f"/jobs/{job.id}").json()["progress"] == {"done": 3, "total": 7}
    heartbeat(conn, "w1", [held], 30, {job.id: "0.25"})
    assert api.get(f"/jobs/{job.id}").json()["progress"] == 0.25
    schema = api.get("/openapi.json").json()["components"]["schemas"]["Job"]
    assert {"progress", "cancel_requested_at"} <= set(schema["properties"])


def test_retry_of_a_pending_job_is_409(api: httpx.Client) -> None:
    job = api.post("/jobs", json={"task": "t"}).json()
    response = api.post(f"/jobs/{job['id']}/retry")
    assert response.status_code == 409 and response.json()["error"]["code"] == "invalid_state"


def test_retry_or_cancel_of_an_unknown_job_is_404(api: httpx.Client) -> None:
    assert api.post("/jobs/424242/retry").status_code == 404
    assert api.post("/jobs/424242/cancel").status_code == 404


def test_stats_counts_jobs(api: httpx.Client) -> None:
    api.post("/jobs", json={"task": "t", "queue": "mail"})
    assert api.get("/stats").json()["queues"]["mail"]["pending"] == 1


def test_unknown_path_is_404_and_wrong_method_405(api: httpx.Client) -> None:
    assert api.get("/nothing").status_code == 404
    wrong = api.delete("/jobs")
    assert wrong.status_code == 405 and "GET" in wrong.headers["allow"]


# -- health, readiness, metrics, document ----------------------------------------------------


def test_health_and_ready(api: httpx.Client) -> None:
    assert api.get("/health").json() == {"status": "ok"}
    assert api.get("/ready").json() == {"status": "ready"}


def test_ready_is_503_when_the_database_is_unreachable(serve_api: ServeApi) -> None:
    http = serve_api(url="host=127.0.0.1 port=1 dbname=nowhere connect_timeout=1")
    assert http.get("/health").status_code == 200  # liveness never touches the database
    response = http.get("/ready")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "database_unavailable"


def test_metrics_expose_queue_depth_from_the_database(api: httpx.Client) -> None:
    api.post("/jobs", json={"task": "t", "queue": "mail"})
    text = api.get("/metrics").text
    assert 'errands_queue_jobs{queue="mail",state="pending"} 1.0' in text
    assert "errands_queue_oldest_pending_seconds" in text
    assert "errands_jobs_enqueued_total" in text


def test_openapi_document_lists_every_endpoint(api: httpx.Client) -> None:
    document = api.get("/openapi.json").json()
    assert document["openapi"].startswith("3.1")
    assert set(document["paths"]) == {
        "/jobs",
        "/jobs/batch",
        "/jobs/{id}",
        "/jobs/{id}/retry",
        "/jobs/{id}/cancel",
        "/schedules",
        "/queues",
        "/queues/{name}",
        "/queues/{name}/pause",
        "/queues/{name}/resume",
        "/workflows",
        "/workflows/{id}",
        "/stats",
        "/health",
        "/ready",
        "/metrics",
        "/openapi.json",
    }


# -- authentication --------------------------------------------------------------------------


def test_with_tokens_every_endpoint_but_health_ready_metrics_needs_one(serve_api: ServeApi) -> None:
    http = serve_api((TOKEN, "other"))
    for path in ("/jobs", "/stats", "/openapi.json", "/jobs/1"):
        response = http.get(path)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"].startswith("Bearer")
    for path in ("/health", "/ready", "/metrics"):
        assert http.get(path).status_code == 200, path
    assert http.post("/jobs", json={"task": "t"}).status_code == 401


def test_a_valid_token_is_accepted_and_a_wrong_one_refused(serve_api: ServeApi) -> None:
    http = serve_api((TOKEN, "other"))
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert http.post("/jobs", json={"task": "t"}, headers=good).status_code == 201
    assert http.get("/stats", headers={"Authorization": "Bearer other"}).status_code == 200
    assert http.get("/stats", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert http.get("/stats", headers={"Authorization": TOKEN}).status_code == 401


def test_an_address_that_guessed_too_often_gets_429_for_wrong_tokens_never_for_the_right_one(
    serve_api: ServeApi,
) -> None:
    http = serve_api((TOKEN,))
    wrong, right = {"Authorization": "Bearer guess"}, {"Authorization": f"Bearer {TOKEN}"}
    for _ in range(LIMIT):
        assert http.get("/stats", headers=wrong).status_code == 401
    held = http.get("/stats", headers=wrong)
    assert held.status_code == 429
    assert held.json()["error"]["code"] == "too_many_refused_tokens"
    assert 1 <= int(held.headers["retry-after"]) <= WINDOW_SECONDS
    # Clients sharing the address (a NAT, an untrusted proxy) are not locked out.
    assert http.get("/stats", headers=right).status_code == 200
    assert http.get("/stats", headers=wrong).status_code == 429
    # Another address is not held (the same server, reached from 127.0.0.2).
    other = httpx.Client(
        base_url=http.base_url, transport=httpx.HTTPTransport(local_address="127.0.0.2")
    )
    with other:
        assert other.get("/stats", headers=wrong).status_code == 401


def test_every_operation_that_wants_a_token_documents_the_throttling() -> None:
    document = openapi.document(endpoints.operations())
    operations = [op for path in document["paths"].values() for op in path.values()]
    wanting = [op for op in operations if "401" in op["responses"]]
    assert wanting and all("429" in op["responses"] for op in wanting)


def test_requests_without_a_token_are_not_counted_as_guesses(serve_api: ServeApi) -> None:
    http = serve_api((TOKEN,))
    for _ in range(LIMIT + 1):
        assert http.get("/stats").status_code == 401
    assert http.get("/stats", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_tokens_never_appear_in_the_logs(
    serve_api: ServeApi, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # errands, as a library here, logs through `logging`
    http = serve_api((TOKEN,))
    http.get("/stats", headers={"Authorization": f"Bearer {TOKEN}"})
    http.get("/stats", headers={"Authorization": "Bearer not-the-token"})
    logged = caplog.text
    assert logged.count("request") >= 2  # both requests were logged, and looked at here
    assert TOKEN not in logged
    assert "not-the-token" not in logged


def test_without_tokens_the_api_is_open(api: httpx.Client) -> None:
    assert api.get("/stats").status_code == 200
