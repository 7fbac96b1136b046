"""Hostile and careless requests, through the real server: a clear 4xx, never a 5xx, and
nothing stored by a refused request.

Each test is one class of input; hypothesis generates the bodies and query strings,
raw sockets send what client libraries would not. The last test sends every class
to the real `errands api` process and then reads its log and the database.
"""

from __future__ import annotations

import gzip
import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict

from errands import Client, InvalidJob
from errands.api.guesses import LIMIT
from errands.limits import MAX_PAYLOAD_DEPTH
from errands.queue.requests import JobRequest
from tests.conftest import ApiProcess, ServeApi
from tests.rawhttp import connect, exchange, parse_all, read_until_closed, request

TOKEN = "s3cret-token"
JSON = ("Content-Type", "application/json")
JOB_FIELDS = JobRequest.model_fields


def port_of(http: httpx.Client) -> int:
    port = http.base_url.port
    assert port is not None
    return port


def jobs_stored(conn: Any) -> int:
    return int(conn.execute("select count(*) from errands_jobs").fetchone()[0])


def fields(response: httpx.Response) -> list[str]:
    return [d["field"] for d in response.json()["error"]["details"]]


def post_raw(api: httpx.Client, body: str | bytes, path: str = "/jobs") -> httpx.Response:
    return api.post(path, content=body, headers=[JSON])


# -- authentication and routing --------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/nope"), ("DELETE", "/jobs"), ("GET", "/jobs/abc"), ("PUT", "/jobs/1/retry")],
)
def test_without_a_token_no_endpoint_is_revealed(
    serve_api: ServeApi, method: str, path: str
) -> None:
    response = serve_api(tokens=(TOKEN,)).request(method, path)
    assert response.status_code == 401
    assert "allow" not in response.headers


def test_two_authorization_headers_are_refused_even_if_both_are_valid(
    serve_api: ServeApi,
) -> None:
    port = port_of(serve_api(tokens=(TOKEN,)))
    auth = ("Authorization", f"Bearer {TOKEN}")
    answer = exchange(port, request("GET", "/stats", [auth, auth]))
    assert answer.status == 400 and answer.code == "bad_request"
    assert exchange(port, request("GET", "/stats", [auth])).status == 200


def test_a_path_id_in_other_digits_is_not_a_job(api: httpx.Client, conn: Any) -> None:
    ids = [api.post("/jobs", json={"task": "t"}).json()["id"] for _ in range(3)]
    api.post(f"/jobs/{ids[2]}/cancel")
    arabic_indic = "".join(chr(0x0660 + int(d)) for d in str(ids[2]))
    response = api.post(f"/jobs/{arabic_indic}/retry")
    assert response.status_code == 404
    assert conn.execute("select state from errands_jobs where id = %s", [ids[2]]).fetchone() == (
        "cancelled",
    )


@pytest.mark.parametrize("value", ["%C2%B2", "%D9%A3", "1e2", "+5", " 5", "", "0x10", "9" * 5000])
def test_query_integers_take_ascii_digits_only(api: httpx.Client, value: str) -> None:
    for name in ("limit", "after"):
        response = api.get(f"/jobs?{name}={value}")
        assert response.status_code == 422 and fields(response) == [name]


@pytest.mark.parametrize("name", ["state", "queue", "task", "limit", "after"])
def test_a_blank_query_value_is_refused_like_any_invalid_one(api: httpx.Client, name: str) -> None:
    response = api.get(f"/jobs?{name}=")
    assert response.status_code == 422 and fields(response) == [name]


def test_a_repeated_query_parameter_is_refused(api: httpx.Client) -> None:
    response = api.get("/jobs?state=dead&state=pending")
    assert response.status_code == 422 and fields(response) == ["state"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/jobs/1"),
        ("POST", "/jobs"),
        ("POST", "/jobs/batch"),
        ("POST", "/jobs/1/retry"),
        ("POST", "/jobs/1/cancel"),
        ("GET", "/jobs"),
        ("GET", "/stats"),
        ("GET", "/health"),
        ("GET", "/ready"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
    ],
)
def test_unknown_query_parameters_are_refused_everywhere(
    api: httpx.Client, conn: Any, method: str, path: str
) -> None:
    response = api.request(method, path + "?surprise=1", json={"task": "t"})
    assert response.status_code == 422 and fields(response) == ["surprise"]
    assert jobs_stored(conn) == 0


def test_a_query_string_that_is_not_utf8_is_400(api: httpx.Client) -> None:
    assert api.get("/jobs?queue=%FF").status_code == 400


# -- values that once crashed validation ----------------------------------------------------


def test_json_nested_a_thousand_deep_is_400(api: httpx.Client, conn: Any) -> None:
    for depth in (1_000, 100_000):
        body = '{"task": "t", "payload": {"x": ' + "[" * depth + "]" * depth + "}}"
        response = post_raw(api, body)
        assert response.status_code in (400, 422), response.text
    assert jobs_stored(conn) == 0


def test_a_payload_nests_at_most_64_levels(api: httpx.Client) -> None:
    def nested(depth: int) -> dict[str, Any]:
        value: Any = {}
        for _ in range(depth - 1):
            value = {"x": value}
        return value

    deepest = api.post("/jobs", json={"task": "t", "payload": nested(MAX_PAYLOAD_DEPTH)})
    assert deepest.status_code == 201
    too_deep = api.post("/jobs", json={"task": "t", "payload": nested(MAX_PAYLOAD_DEPTH + 1)})
    assert too_deep.status_code == 422 and fields(too_deep) == ["payload"]


def test_an_integer_over_4300_digits_is_400(api: httpx.Client, conn: Any) -> None:
    for field in ("priority", "payload"):
        value = "9" * 5_000 if field == "priority" else '{"n": ' + "9" * 5_000 + "}"
        response = post_raw(api, f'{{"task": "t", "{field}": {value}}}')
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"
    assert jobs_stored(conn) == 0


@pytest.mark.parametrize("delay", ["1" + "0" * 400, "1e400", "-1e400", "1e308"])
def test_an_enormous_delay_is_422(api: httpx.Client, delay: str) -> None:
    response = post_raw(api, f'{{"task": "t", "delay": {delay}}}')
    assert response.status_code == 422 and fields(response) == ["delay"]


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_not_json(api: httpx.Client, constant: str) -> None:
    response = post_raw(api, f'{{"task": "t", "payload": {{"x": {constant}}}}}')
    assert response.status_code == 400


@pytest.mark.parametrize("field", ["task", "queue"])
@pytest.mark.parametrize("suffix", ["\n", "\r\n", "\x00", " "])
def test_a_name_with_a_trailing_newline_is_422(
    api: httpx.Client, conn: Any, field: str, suffix: str
) -> None:
    body = {"task": "t", field: "name" + suffix}
    response = api.post("/jobs", json=body)
    assert response.status_code == 422 and fields(response) == [field]
    listed = api.get("/jobs", params={field: "name" + suffix})
    assert listed.status_code == 422 and fields(listed) == [field]
    assert jobs_stored(conn) == 0


EDGE_TIMES = [
    f"{date}T{time}{offset}"
    for date, time in [
        ("0001-01-01", "00:00:00"),
        ("0001-12-31", "23:59:59"),
        ("0002-01-01", "00:00:00"),
        ("9998-12-31", "23:59:59.999999"),
        ("9999-01-01", "00:00:00"),
        ("9999-12-31", "23:59:59"),
        ("0000-01-01", "00:00:00"),
    ]
    for offset in ("Z", "+23:59", "-23:59", "+14:00", "-12:00")
]


@pytest.mark.parametrize("zone", ["Pacific/Kiritimati", "Etc/GMT+12"])
def test_times_at_the_ends_of_the_calendar_never_make_a_500(
    serve_api: ServeApi, db_url: str, conn: Any, zone: str
) -> None:
    # A session time zone far from UTC, as a database's default might set it.
    dbname = conninfo_to_dict(db_url)["dbname"]
    conn.execute(f"alter database {dbname} set timezone = '{zone}'")
    api = serve_api()
    created = 0
    for run_at in EDGE_TIMES:
        response = api.post("/jobs", json={"task": "t", "run_at": run_at})
        assert response.status_code in (201, 422), (run_at, response.text)
        if response.status_code == 422:
            assert fields(response) == ["run_at"]
            continue
        created += 1
        job_id = response.json()["id"]
        assert api.get(f"/jobs/{job_id}").status_code == 200
        assert api.post(f"/jobs/{job_id}/cancel").status_code == 200
    assert api.get("/jobs", params={"limit": 1000}).status_code == 200
    assert created == jobs_stored(conn) == len([t for t in EDGE_TIMES if t[:4] in ("0002", "9998")])


@pytest.mark.parametrize(
    ("run_at", "accepted"),
    [
        ("2030-01-01T00:00:00Z", True),
        ("2030-01-01t00:00:00z", True),
        ("2030-01-01T00:00:00.123456789+05:30", True),
        ("20300101T000000Z", False),
        ("2030-01-01 00:00:00Z", False),
        ("2030-01-01T00:00:00", False),
        ("2030-02-30T00:00:00Z", False),
        ("2030-01-01T23:59:60Z", False),
        ("2030-01-01T00:00Z", False),
        ("2030-W01-1T00:00:00Z", False),
    ],
)
def test_run_at_is_rfc3339_exactly(api: httpx.Client, run_at: str, accepted: bool) -> None:
    response = api.post("/jobs", json={"task": "t", "run_at": run_at})
    assert response.status_code == (201 if accepted else 422), response.text


def test_null_means_absent_for_every_optional_field(api: httpx.Client) -> None:
    optional = {name: None for name, rule in JOB_FIELDS.items() if not rule.is_required()}
    job = api.post("/jobs", json={"task": "t", **optional})
    assert job.status_code == 201, job.text
    assert {k: job.json()[k] for k in ("queue", "priority", "max_attempts", "payload")} == {
        "queue": "default",
        "priority": 0,
        "max_attempts": 5,
        "payload": {},
    }
    assert api.post("/jobs", json={"task": None}).status_code == 422


# -- headers and framing --------------------------------------------------------------------


def test_the_idempotency_key_header_is_refused_on_a_batch(api: httpx.Client, conn: Any) -> None:
    response = api.post(
        "/jobs/batch", json={"jobs": [{"task": "t"}]}, headers={"Idempotency-Key": "k"}
    )
    assert response.status_code == 422 and fields(response) == ["Idempotency-Key"]
    assert jobs_stored(conn) == 0


def test_the_idempotency_key_header_is_read_as_utf8(api: httpx.Client) -> None:
    answer = exchange(
        port_of(api), request("POST", "/jobs", [JSON, ("Idempotency-Key", "hé")], b'{"task":"t"}')
    )
    assert answer.status == 201
    assert answer.json()["idempotency_key"] == "hé"
    replay = api.post("/jobs", json={"task": "t", "idempotency_key": "hé"})
    assert replay.status_code == 200


def test_a_batch_repeating_a_key_with_another_request_names_no_job(
    api: httpx.Client, conn: Any
) -> None:
    jobs = [{"task": "t", "idempotency_key": "k"}, {"task": "u", "idempotency_key": "k"}]
    response = api.post("/jobs/batch", json={"jobs": jobs})
    assert response.status_code == 409
    assert "jobs[0] and jobs[1]" in response.json()["error"]["message"]
    assert jobs_stored(conn) == 0
    # The key is free: nothing was stored under it.
    assert api.post("/jobs", json=jobs[1]).status_code == 201


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br"])
def test_a_content_encoding_is_415(api: httpx.Client, conn: Any, coding: str) -> None:
    response = api.post(
        "/jobs",
        content=gzip.compress(b'{"task": "t"}') if coding == "gzip" else b'{"task": "t"}',
        headers=[JSON, ("Content-Encoding", coding)],
    )
    assert response.status_code == 415
    assert jobs_stored(conn) == 0


def test_a_charset_other_than_utf8_is_415(api: httpx.Client) -> None:
    response = api.post(
        "/jobs",
        content=b'{"task": "t"}',
        headers={"Content-Type": "application/json; charset=latin-1"},
    )
    assert response.status_code == 415


@pytest.mark.parametrize("coding", ["gzip, chunked", "deflate,chunked", "identity, chunked"])
def test_a_transfer_coding_other_than_chunked_is_501(
    api: httpx.Client, conn: Any, coding: str
) -> None:
    head = request("POST", "/jobs", [JSON, ("Transfer-Encoding", coding)])
    head = head.replace(b"Content-Length: 0\r\n", b"")
    answer = exchange(port_of(api), head + b'c\r\n{"task":"t"}\r\n0\r\n\r\n')
    assert answer.status == 501
    assert answer.headers["content-type"] == "application/json"
    assert jobs_stored(conn) == 0


def test_unparsable_http_gets_the_json_error_shape(api: httpx.Client) -> None:
    answer = exchange(port_of(api), b"GET /health HTTP/1.1\r\nHost x\r\n\r\n")
    assert answer.status == 400 and answer.code == "bad_request"


# -- bodies, keys, batches -------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-be"])
def test_a_body_in_another_unicode_encoding_is_400_and_stores_nothing(
    api: httpx.Client, conn: Any, encoding: str
) -> None:
    response = post_raw(api, json.dumps({"task": "t"}).encode(encoding))
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"
    assert jobs_stored(conn) == 0


@pytest.mark.parametrize("key", ["k ", " k", "k\t", "\tk", " "])
def test_a_key_with_a_space_at_either_end_is_refused_wherever_it_is_given(
    api: httpx.Client, client: Client, conn: Any, key: str
) -> None:
    # HTTP strips spaces and tabs around a header's value: such a key could never be the
    # same in the Idempotency-Key header and in the body, so it is refused everywhere.
    response = api.post("/jobs", json={"task": "t", "idempotency_key": key})
    assert response.status_code == 422 and fields(response) == ["idempotency_key"]
    with pytest.raises(InvalidJob, match="idempotency_key"):
        client.enqueue("t", idempotency_key=key)
    assert jobs_stored(conn) == 0


def test_a_header_key_with_a_trailing_space_is_the_key_without_it(api: httpx.Client) -> None:
    answer = exchange(
        port_of(api), request("POST", "/jobs", [JSON, ("Idempotency-Key", "k ")], b'{"task":"t"}')
    )
    assert answer.status == 201 and answer.json()["idempotency_key"] == "k"
    same = api.post("/jobs", json={"task": "t", "idempotency_key": "k"})
    assert same.status_code == 200 and same.json()["id"] == answer.json()["id"]


def test_two_batches_naming_the_same_keys_in_opposite_orders_never_deadlock(
    serve_api: ServeApi, conn: Any
) -> None:
    api = serve_api()
    rounds = 30

    def submit(order: list[str], both: threading.Barrier) -> int:
        jobs = [{"task": "t", "idempotency_key": key} for key in order]
        both.wait()  # the two batches leave together, every round
        return api.post("/jobs/batch", json={"jobs": jobs}).status_code

    statuses: list[int] = []
    with ThreadPoolExecutor(2) as pool:
        for n in range(rounds):
            keys, both = [f"{n}-a", f"{n}-b"], threading.Barrier(2)
            statuses += pool.map(submit, [keys, keys[::-1]], [both, both])
    assert statuses == [201] * (2 * rounds)
    assert jobs_stored(conn) == 2 * rounds


json_scalars = st.sampled_from([True, False, 0, 1, 1.0, 0.0, -0.0, 1e23, 10**23, "1", "", None])


@given(first=json_scalars, second=json_scalars)
@settings(max_examples=60)
def test_a_batch_repeating_a_key_judges_two_payloads_alike_as_post_jobs_does(
    api: httpx.Client, first: Any, second: Any
) -> None:
    single, batch = (f"{uuid.uuid4()}" for _ in range(2))
    first_job, second_job = ({"task": "t", "payload": {"a": v}} for v in (first, second))
    api.post("/jobs", json={**first_job, "idempotency_key": single})
    again = api.post("/jobs", json={**second_job, "idempotency_key": single})
    copies = [{**job, "idempotency_key": batch} for job in (first_job, second_job)]
    together = api.post("/jobs/batch", json={"jobs": copies})
    assert (again.status_code == 409) == (together.status_code == 409), (first, second)


@pytest.mark.parametrize("requests_before", [1, 2])
def test_requests_followed_by_bytes_that_are_not_http_are_answered_then_refused(
    api: httpx.Client, conn: Any, requests_before: int
) -> None:
    one = request("POST", "/jobs", [JSON], b'{"task": "t"}', close=False)
    with connect(port_of(api)) as sock:
        sock.sendall(one * requests_before + b"\x16\x03\x01 not HTTP at all\r\n\r\n")
        answers = parse_all(read_until_closed(sock))
    assert [a.status for a in answers] == [201] * requests_before + [400]
    assert answers[-1].code == "bad_request"
    assert jobs_stored(conn) == requests_before


def test_x_forwarded_for_is_believed_only_from_the_configured_proxies(
    serve_api: ServeApi,
) -> None:
    wrong = ("Authorization", "Bearer guess")

    def statuses(port: int, forwarded: list[str]) -> list[int]:
        return [
            exchange(port, request("GET", "/stats", [wrong, ("X-Forwarded-For", address)])).status
            for address in forwarded
        ]

    rotating = [f"203.0.113.{n}" for n in range(LIMIT + 3)]
    untrusted = port_of(serve_api(tokens=(TOKEN,)))
    assert statuses(untrusted, rotating)[-3:] == [429] * 3  # all counted against the peer
    behind_proxy = port_of(serve_api(tokens=(TOKEN,), forwarded_allow_ips="127.0.0.1"))
    assert set(statuses(behind_proxy, rotating)) == {401}  # each client counted apart
    assert statuses(behind_proxy, ["198.51.100.7"] * (LIMIT + 1))[-1] == 429


# -- logs ------------------------------------------------------------------------------------


def test_a_refused_row_is_never_quoted_in_the_log(api_process: ApiProcess, db_url: str) -> None:
    # A constraint the validation does not know of: the database refuses the row.
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "alter table errands_jobs add constraint no_secret check (payload->>'pin' is null)"
        )
        response = api_process.http.post("/jobs", json={"task": "t", "payload": {"pin": "4711"}})
        assert response.status_code == 422
        assert "no_secret" in response.text and "4711" not in response.text
        assert jobs_stored(conn) == 0
    log = api_process.process.log_path.read_text()
    assert "no_secret" in log
    assert "4711" not in log and "Failing row" not in log


# -- generated -------------------------------------------------------------------------------

# Values that have broken parsers: deep, huge, non-finite, odd strings, wrong types.
hostile_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**300, max_value=10**5000)
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["t\n", "default\n", "\x00", "\ud800", "2030-01-01T00:00:00Z", "٣", "²"])
)
hostile_values = st.recursive(
    hostile_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
job_bodies = st.dictionaries(
    st.sampled_from([*JOB_FIELDS, "surprise"]), hostile_values, max_size=6
) | st.fixed_dictionaries(
    {"task": st.sampled_from(["t", "t.x:y-z", "t\n"])},
    optional={name: hostile_values for name in JOB_FIELDS if name != "task"},
)


def encode(body: Any) -> bytes:
    """JSON as a careless client writes it: NaN, surrogates and all."""
    try:
        return json.dumps(body).encode()
    except ValueError:  # an integer past Python's own limit to print
        return b'{"task": "t", "priority": ' + b"9" * 5000 + b"}"


@given(body=job_bodies | hostile_values)
@settings(max_examples=300)
def test_any_body_gets_a_job_or_a_4xx_and_a_4xx_stores_nothing(
    api: httpx.Client, conn: Any, body: Any
) -> None:
    before = jobs_stored(conn)
    response = post_raw(api, encode(body))
    assert response.status_code in (200, 201, 400, 409, 422), response.text
    assert jobs_stored(conn) == before + (response.status_code == 201)
    batch = post_raw(api, encode({"jobs": [body, body]}), "/jobs/batch")
    assert batch.status_code in (201, 400, 409, 422), batch.text
    if batch.status_code != 201:
        assert jobs_stored(conn) == before + (response.status_code == 201)


@given(
    query=st.lists(
        st.tuples(
            st.sampled_from(["state", "queue", "task", "limit", "after", "x", ""]),
            st.text(max_size=12) | st.integers().map(str),
        ),
        max_size=4,
    )
)
@settings(max_examples=200)
def test_any_query_lists_jobs_or_gets_a_4xx(
    api: httpx.Client, query: list[tuple[str, str]]
) -> None:
    response = api.get("/jobs", params=query)
    assert response.status_code in (200, 400, 422), response.text


# -- the whole campaign, against `errands api` itself ----------------------------------------

CAMPAIGN = [
    request("GET", "/health", [("X-Filler", "a" * 8000)] * 9),
    request("GET", "/health", [(f"X-H{n}", "v") for n in range(101)]),
    request("GET", "/health", [("Authorization", "Bearer a"), ("Authorization", "Bearer b")]),
    request("POST", "/jobs/%D9%A3/retry"),
    request("GET", "/jobs?limit=%C2%B2"),
    request("GET", "/jobs?state="),
    request("GET", "/stats?x=1"),
    request("DELETE", "/jobs"),
    request("GET", "/nope"),
    request(
        "POST", "/jobs", [JSON], b'{"task": "t", "payload": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    ),
    request("POST", "/jobs", [JSON], b'{"task": "t", "priority": ' + b"9" * 5000 + b"}"),
    request("POST", "/jobs", [JSON], b'{"task": "t", "delay": 1' + b"0" * 400 + b"}"),
    request("POST", "/jobs", [JSON], b'{"task": "t\n"}'),
    request("POST", "/jobs", [JSON], b'{"task": "t", "queue": "q\n"}'),
    request("POST", "/jobs", [JSON], b'{"task": "t", "run_at": "9999-12-31T23:59:59-23:59"}'),
    request("POST", "/jobs", [JSON], b'{"task": "t", "run_at": "0001-01-01T00:00:00+23:59"}'),
    request("POST", "/jobs", [JSON], b'{"task": "t", "run_at": "20300101T000000Z"}'),
    request("POST", "/jobs", [JSON, ("Content-Encoding", "gzip")], b'{"task": "t"}'),
    request("POST", "/jobs/batch", [JSON, ("Idempotency-Key", "k")], b'{"jobs": [{"task": "t"}]}'),
    request(
        "POST",
        "/jobs/batch",
        [JSON],
        b'{"jobs": [{"task": "t", "idempotency_key": "k"}, {"task": "u", "idempotency_key": "k"}]}',
    ),
    request("POST", "/jobs", [("Content-Type", "text/plain")], b'{"task": "t"}'),
    request("POST", "/jobs", [JSON], b"x" * 2_000_000),
    request("POST", "/jobs", [JSON], b"{"),
    b"NOT HTTP AT ALL\r\n\r\n",
    # Accepted: each stores one job.
    request("POST", "/jobs", [JSON], b'{"task": "t", "run_at": "2030-01-01t00:00:00z"}'),
    request("POST", "/jobs", [JSON, ("Idempotency-Key", "h\u00e9")], b'{"task": "t"}'),
]


def test_a_campaign_of_every_class_leaves_no_5xx_no_stray_row_and_the_server_up(
    api_process: ApiProcess, conn: Any
) -> None:
    statuses = [exchange(api_process.port, probe).status for probe in CAMPAIGN]
    assert statuses[-2:] == [201, 201]
    assert all(400 <= status < 500 for status in statuses[:-2]), statuses
    # Afterwards: the server answers, stored exactly the accepted jobs, and logged no 5xx.
    assert api_process.process.running()
    assert api_process.http.get("/ready").status_code == 200
    assert jobs_stored(conn) == 2
    events = api_process.process.log_events()
    assert [e["status"] for e in events if e.get("event") == "request"].count(201) == 2
    assert not [e for e in events if e.get("status", 0) >= 500 or e.get("level") == "error"]
