"""Schemathesis against /openapi.json: no 5xx, and every response as the document says."""

from __future__ import annotations

from typing import Any

import psycopg
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import ServeApi

Conn = psycopg.Connection[Any]

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
EXAMPLES_PER_OPERATION = 40


def test_every_response_matches_the_document(serve_api: ServeApi, conn: Conn) -> None:
    # Schedules to list, one with a last job: GET /schedules answers with every field.
    conn.execute(
        "insert into errands_schedules (name, task, cron, every_seconds, tz, last_tick,"
        " last_job_id, last_enqueued_at) values"
        " ('nightly', 'report', '30 2 * * *', null, 'Europe/Berlin', null, null, null),"
        " ('often', 'sync', null, 60, 'UTC', now(), 1, now())"
    )
    base = str(serve_api().base_url).rstrip("/")
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 11  # the README's HTTP API section, and GET /schedules

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def responds_as_documented(case: schemathesis.Case) -> None:
            case.call_and_validate(base_url=base, checks=CHECKS)

        responds_as_documented()
