"""The API's JSON answers (errands/api/answers.py): the text json.dumps wrote from
Job.to_dict before, now written by orjson from the jobs themselves."""

from __future__ import annotations

import json
from typing import Any

import httpx

from errands import Client
from errands.api.answers import JSONAnswer


def as_json_wrote_it(content: Any) -> bytes:
    """What Starlette's JSONResponse wrote for the same answer built with Job.to_dict."""
    return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def test_a_stored_job_reads_as_the_text_json_wrote(client: Client) -> None:
    stored = client.enqueue("send_email", {"to": "é@example.com", "n": 1.5, "tags": ["a"]})
    job = client.get(stored.id)
    assert job is not None
    assert JSONAnswer(job).body == as_json_wrote_it(job.to_dict())


def test_a_batch_just_stored_reads_as_the_text_json_wrote(client: Client) -> None:
    jobs = client.enqueue_many([{"task": "send_email", "payload": {"i": i}} for i in range(3)])
    answer = JSONAnswer({"jobs": jobs, "next_after": None})
    assert answer.body == as_json_wrote_it(
        {"jobs": [job.to_dict() for job in jobs], "next_after": None}
    )


def test_an_integer_past_64_bits_in_a_payload_is_written_as_json_wrote_it(
    client: Client,
) -> None:
    [job] = client.enqueue_many([{"task": "send_email", "payload": {"big": 10**23}}])
    assert JSONAnswer({"jobs": [job]}).body == as_json_wrote_it({"jobs": [job.to_dict()]})
    assert b"100000000000000000000000" in JSONAnswer(job).body


def test_an_answer_past_what_orjson_writes_reaches_a_client_of_the_real_server(
    api: httpx.Client, conn: Any
) -> None:
    payload = {"big": 10**23, "small": -(2**70), "text": "é\u2028", "n": [1e-7, 2**63 - 1]}
    created = api.post("/jobs", json={"task": "t", "payload": payload})
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    (stored,) = conn.execute("select payload from errands_jobs where id = %s", [job_id]).fetchone()
    assert created.json()["payload"] == stored
    assert api.get(f"/jobs/{job_id}").json()["payload"] == stored
    batch = api.post("/jobs/batch", json={"jobs": [{"task": "t", "payload": payload}] * 2})
    assert batch.status_code == 201, batch.text
    assert [job["payload"] for job in batch.json()["jobs"]] == [stored, stored]
