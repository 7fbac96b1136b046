"""The Python client refuses every bad argument by name: never a raw psycopg or Python error."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from errands import AsyncClient, Client, InvalidArgument, InvalidJob, JobState
from errands.errors import WITHHELD, scrub
from errands.queue.requests import QUEUE_NAME
from tests.clients import Blocking, Portal
from tests.clients import either_client as client

__all__ = ["client"]  # each test runs with both clients: tests/clients.py

MAX_ID = 2**63 - 1

not_ids = st.one_of(
    st.integers(max_value=0),
    st.integers(min_value=MAX_ID + 1),
    st.booleans(),
    st.floats(),
    st.text(),
    st.none(),
    st.lists(st.integers(), max_size=2),
)
not_names = st.one_of(
    # Outside the queue-name alphabet, the wider of the two ("_" alone is a name:
    # hypothesis found it), so neither a queue nor a task name.
    st.text().filter(lambda t: not QUEUE_NAME.fullmatch(t)),
    st.sampled_from(["", "\x00", "bad name", "default\n", "a" * 201, "q\x00q"]),
    st.integers(),
    st.binary(max_size=5),
)
not_states = st.one_of(
    st.text().filter(lambda t: t not in {s.value for s in JobState}),
    st.integers(),
    st.sampled_from(["PENDING", "Pending", " pending"]),
)
not_limits = st.one_of(
    st.integers(max_value=0), st.integers(min_value=1001), st.booleans(), st.floats(), st.text()
)


@settings(max_examples=60)
@given(job_id=not_ids, method=st.sampled_from(["get", "retry", "cancel"]))
def test_a_bad_job_id_is_refused_by_name(client: Client, job_id: Any, method: str) -> None:
    with pytest.raises(InvalidArgument, match="job_id"):
        getattr(client, method)(job_id)


@settings(max_examples=80)
@given(
    argument=st.sampled_from(["state", "queue", "task", "limit", "after"]),
    data=st.data(),
)
def test_a_bad_list_argument_is_refused_by_name(
    client: Client, argument: str, data: st.DataObject
) -> None:
    values = {
        "state": not_states,
        "queue": not_names,
        "task": not_names,
        "limit": not_limits,
        "after": not_ids.filter(lambda v: v is not None),
    }[argument]
    value = data.draw(values)
    with pytest.raises(InvalidArgument) as refused:
        client.list(**{argument: value})
    assert [e.field for e in refused.value.errors] == [argument]


def test_list_names_every_bad_argument_at_once(client: Client) -> None:
    with pytest.raises(InvalidArgument) as refused:
        client.list(state="nope", queue="\x00", task="a b", limit=0, after=2**63)
    assert [e.field for e in refused.value.errors] == ["state", "queue", "task", "limit", "after"]


def test_good_list_arguments_still_work(client: Client) -> None:
    job = client.enqueue("t", queue="q")
    assert client.list(state="pending", queue="q", task="t", limit=1000, after=MAX_ID) == [
        client.get(job.id)
    ]
    assert client.list(state=JobState.COMPLETED) == []


@settings(max_examples=40)
@given(
    specs=st.one_of(
        st.lists(st.one_of(st.text(), st.integers(), st.none(), st.lists(st.text())), min_size=1),
        st.text(),
        st.integers(),
        st.none(),
        st.dictionaries(st.text(), st.text()),
    )
)
def test_enqueue_many_refuses_specs_that_are_not_dicts(client: Client, specs: Any) -> None:
    with pytest.raises(InvalidJob):
        client.enqueue_many(specs)
    assert client.list() == []


def test_enqueue_many_names_the_spec_that_is_not_a_dict(client: Client) -> None:
    with pytest.raises(InvalidJob, match=r"\[1\]: must be a dict"):
        client.enqueue_many([{"task": "sleep"}, "sleep"])


@pytest.mark.parametrize("kind", [Client, AsyncClient])
@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda kind: kind(42), "dsn"),
        (lambda kind: kind("not a connection string"), "dsn"),
        (lambda kind: kind("postgresql://u@h/d", max_connections=0), "max_connections"),
        (lambda kind: kind("postgresql://u@h/d", max_connections=True), "max_connections"),
    ],
)
def test_a_bad_client_setting_is_refused_at_once(
    make: Callable[[type], Any], field: str, kind: type
) -> None:
    with pytest.raises(InvalidArgument, match=field):
        make(kind)


def test_conn_must_be_a_psycopg_connection(client: Client) -> None:
    with pytest.raises(InvalidArgument, match="conn"):
        client.enqueue("t", conn="postgresql://")  # type: ignore[arg-type]


def test_a_connection_of_the_other_kind_is_refused_naming_the_client_it_goes_to(
    client: Client, client_kind: str, db_url: str, portal: Portal
) -> None:
    other = "AsyncClient" if client_kind == "Client" else "Client"
    # The other client's kind of connection: an AsyncConnection for the Client, and back.
    async_conn = Blocking(portal.call(psycopg.AsyncConnection.connect(db_url)), portal)
    with async_conn, psycopg.connect(db_url) as sync_conn:
        conn = async_conn.wrapped if client_kind == "Client" else sync_conn
        with pytest.raises(InvalidArgument, match=rf"conn: .* goes to errands\.{other}\)"):
            client.enqueue("t", conn=conn)
    assert client.list() == []


def test_a_database_refusal_is_named_without_the_row(client: Client, db_url: str) -> None:
    """Should the database ever refuse what validation let through, no row is quoted."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "alter table errands_jobs add constraint no_card_numbers check (not payload ? 'card')"
        )
    with pytest.raises(InvalidArgument) as refused:
        client.enqueue("charge", {"card": "4111111111111111"})
    message = str(refused.value)
    assert "no_card_numbers" in message and "4111" not in message
    assert refused.value.__suppress_context__  # the psycopg error, DETAIL and all, is not shown
    assert client.list() == []


def test_scrub_withholds_the_detail_of_a_chained_error(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("create table secrets (v text check (v <> 'hunter2'))")
        try:
            try:
                conn.execute("insert into secrets values ('hunter2')")
            except psycopg.Error as inner:
                raise RuntimeError("could not store") from inner
        except RuntimeError as outer:
            assert "hunter2" in str(outer.__cause__)
            text = scrub(f"{outer}\n{outer.__cause__}", outer)
    assert "hunter2" not in text and WITHHELD in text


def _nested(depth: int) -> dict[str, Any]:
    payload: dict[str, Any] = {}
    for _ in range(depth):
        payload = {"a": payload}
    return payload


@pytest.mark.parametrize(
    ("task", "arguments", "field"),
    [
        ("sleep", {"payload": _nested(5000)}, "payload"),
        ("sleep", {"delay": 10**400}, "delay"),
        ("sleep", {"delay": 1e400}, "delay"),
        ("sleep", {"queue": "default\n"}, "queue"),
        ("sleep\n", {}, "task"),
    ],
    ids=["5000-deep payload", "delay 10**400", "delay 1e400", "queue newline", "task newline"],
)
def test_enqueue_refuses_values_that_once_escaped_as_raw_errors(
    client: Client, task: str, arguments: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidJob) as refused:
        client.enqueue(task, **arguments)
    assert [e.field for e in refused.value.errors] == [field]
    with pytest.raises(InvalidJob) as refused:
        client.enqueue_many([{"task": task, **arguments}])
    assert [e.field for e in refused.value.errors] == [f"[0].{field}"]
    assert client.list() == []
