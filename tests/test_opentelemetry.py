"""OpenTelemetry across processes: the trace that enqueued a job goes on in the worker that ran it.

Every process of these tests exports its spans to files (tests/otel_setup.py);
the test process itself sets no tracer provider, so the rest of the suite runs
untraced, as an application without OpenTelemetry does.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from errands import Client
from errands.harness.process import free_port
from errands.harness.waiting import answers, wait_for
from tests.daemon import TESTS, Daemon
from tests.guides import blocks, uvicorn_app, write_files

StartDaemon = Callable[..., Daemon]
Span = dict[str, Any]
TASKS = "otel_setup,otel_tasks"


def spans_in(directory: Path) -> list[Span]:
    """Every span every process of the test exported so far."""
    return [
        json.loads(line) for f in directory.glob("*.jsonl") for line in f.read_text().splitlines()
    ]


def span_named(directory: Path, name: str, **attributes: Any) -> Span:
    """The span called `name` with these attributes, once some process has exported it."""

    def exported() -> Span | None:
        for span in spans_in(directory):
            if span["name"] == name and attributes.items() <= span["attributes"].items():
                return span
        return None

    return wait_for(exported, what=f"the span {name} {attributes}")


def traceparent() -> tuple[str, str]:
    """A caller's trace: its trace id and a traceparent header naming one of its spans."""
    trace_id = secrets.token_hex(16)
    return trace_id, f"00-{trace_id}-{secrets.token_hex(8)}-01"


@pytest.fixture
def spans(tmp_path: Path) -> Path:
    directory = tmp_path / "spans"
    directory.mkdir()
    return directory


def test_without_a_tracer_provider_a_job_stores_no_trace_context(client: Client) -> None:
    assert client.enqueue("t").trace_context is None
    assert client.enqueue_many([{"task": "t"}])[0].trace_context is None


@pytest.mark.slow
def test_a_job_posted_with_a_traceparent_runs_in_a_consumer_span_of_the_producer_span(
    start_daemon: StartDaemon, spans: Path, client: Client
) -> None:
    port = free_port()
    start_daemon("--port", str(port), ERRANDS_TASKS=TASKS, ERRANDS_TEST_SPANS=str(spans))
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: answers(f"{base}/health"), what="the HTTP child")
    trace_id, header = traceparent()
    job = httpx.post(f"{base}/jobs", json={"task": "otel.traced"}, headers={"traceparent": header})
    job_id = job.json()["id"]

    send = span_named(spans, "send traced", **{"messaging.message.id": str(job_id)})
    process = span_named(spans, "process traced", **{"messaging.message.id": str(job_id)})
    assert send["trace_id"] == process["trace_id"] == trace_id
    assert send["parent_id"] == header.split("-")[2]  # the caller's span
    assert process["parent_id"] == send["span_id"]
    assert (send["kind"], process["kind"]) == ("PRODUCER", "CONSUMER")
    common = {"messaging.system": "errands", "messaging.destination.name": "traced"}
    assert send["attributes"].items() >= {**common, "messaging.operation.type": "send"}.items()
    assert (
        process["attributes"].items() >= {**common, "messaging.operation.type": "process"}.items()
    )
    stored = client.get(job_id)
    assert stored is not None and stored.trace_context is not None
    assert stored.trace_context["traceparent"].split("-")[1:3] == [trace_id, send["span_id"]]


@pytest.mark.slow
def test_a_batch_is_one_producer_span_and_each_job_a_consumer_span_of_it(
    start_daemon: StartDaemon, spans: Path
) -> None:
    port = free_port()
    start_daemon("--port", str(port), ERRANDS_TASKS=TASKS, ERRANDS_TEST_SPANS=str(spans))
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: answers(f"{base}/health"), what="the HTTP child")
    trace_id, header = traceparent()
    batch = {"jobs": [{"task": "otel.traced", "payload": {"n": n}} for n in range(3)]}
    jobs = httpx.post(f"{base}/jobs/batch", json=batch, headers={"traceparent": header}).json()

    send = span_named(spans, "send traced", **{"messaging.batch.message_count": 3})
    for job in jobs["jobs"]:
        process = span_named(spans, "process traced", **{"messaging.message.id": str(job["id"])})
        assert (process["trace_id"], process["parent_id"]) == (trace_id, send["span_id"])


@pytest.mark.slow
def test_a_failed_attempt_is_an_error_span_recording_the_exception(
    start_daemon: StartDaemon, spans: Path, db_url: str
) -> None:
    start_daemon(ERRANDS_TASKS=TASKS, ERRANDS_TEST_SPANS=str(spans))
    traced_python(db_url, spans, "Client(url).enqueue('otel.fails')")
    process = span_named(spans, "process traced", **{"errands.task": "otel.fails"})
    assert (process["status"], process["attributes"]["errands.outcome"]) == ("ERROR", "dead")


@pytest.mark.slow
def test_python_enqueues_continue_the_callers_trace(
    start_daemon: StartDaemon, spans: Path, db_url: str
) -> None:
    start_daemon(ERRANDS_TASKS=TASKS, ERRANDS_TEST_SPANS=str(spans))
    traced_python(
        db_url,
        spans,
        """
        with trace.get_tracer("app").start_as_current_span("request"):
            Client(url).enqueue("otel.traced", {"n": 1})
            Client(url).enqueue_many([{"task": "otel.traced", "payload": {"n": 2}}])
        """,
    )
    request = span_named(spans, "request")
    for n in (1, 2):
        process = span_named(spans, "process traced", **{"errands.task": "otel.traced"})
        assert process["trace_id"] == request["trace_id"], n


@pytest.mark.slow
def test_a_periodic_tick_starts_a_trace_of_its_own_linked_to_the_schedulers_span(
    start_daemon: StartDaemon, spans: Path
) -> None:
    start_daemon(ERRANDS_TASKS=TASKS, ERRANDS_TEST_SPANS=str(spans))
    tick = span_named(spans, "tick otel.ticking")
    send = span_named(spans, "send ticks", **{"messaging.destination.name": "ticks"})
    process = span_named(spans, "process ticks")
    assert send["parent_id"] is None and send["trace_id"] != tick["trace_id"]
    assert send["links"] == [{"trace_id": tick["trace_id"], "span_id": tick["span_id"]}]
    assert process["trace_id"] == send["trace_id"]


@pytest.mark.slow
def test_the_fastapi_example_traced_a_request_and_its_job_share_one_trace(
    start_daemon: StartDaemon, spans: Path, db_url: str, tmp_path: Path
) -> None:
    shop = tmp_path / "shop"
    shop.mkdir()
    write_files("fastapi", shop)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(blocks("fastapi", "sql")[0])
    traced = {
        "DATABASE_URL": db_url,
        "ERRANDS_TEST_SPANS": str(spans),
        "PYTHONPATH": f"{shop}:{TESTS}",
    }
    start_daemon(ERRANDS_TASKS="otel_setup,tasks", **traced)
    env = {k: v for k, v in os.environ.items() if not k.endswith("DATABASE_URL")} | traced
    instrumented = (
        "import otel_setup, app\n"
        "from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor\n"
        "FastAPIInstrumentor.instrument_app(app.app)"
    )
    trace_id, header = traceparent()
    with uvicorn_app(shop, env, tmp_path / "app.log", setup=instrumented) as http:
        placed = http.post(
            "/orders", json={"item": "tea", "quantity": 1}, headers={"traceparent": header}
        )
        assert placed.status_code == 201
    job_id = str(placed.json()["job"])
    server = span_named(spans, "POST /orders")
    send = span_named(spans, "send mail", **{"messaging.message.id": job_id})
    process = span_named(spans, "process mail", **{"messaging.message.id": job_id})
    assert server["trace_id"] == send["trace_id"] == process["trace_id"] == trace_id
    assert process["parent_id"] == send["span_id"]


def traced_python(db_url: str, spans: Path, code: str) -> None:
    """Run `code` in a process of its own, traced by tests/otel_setup.py."""
    prelude = "import otel_setup, otel_tasks\nfrom opentelemetry import trace\n"
    prelude += "from errands import Client\n"
    env = {**os.environ, "ERRANDS_TEST_SPANS": str(spans), "PYTHONPATH": str(TESTS)}
    subprocess.run(
        [sys.executable, "-c", prelude + f"url = {db_url!r}\n" + textwrap.dedent(code)],
        env=env,
        check=True,
        timeout=60,
    )
