"""The API's JSON answers (errands/api/answers.py): the text json.dumps wrote from
Job.to_dict before, now written by orjson from the jobs themselves."""

from __future__ import annotations

import json
from typing import Any

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
