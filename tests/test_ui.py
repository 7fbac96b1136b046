"""The dashboard's pages over a real socket, in-process: content, escaping, sessions, CSRF.

What a browser does with them (clicks, scripts, cookies) is in test_ui_browser.py.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import httpx
import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from errands import Client, JobState
from errands.api.guesses import LIMIT
from errands.config import Settings
from errands.errors import ConfigurationError
from errands.queue.lease import Held, claim, fail, heartbeat
from errands.queue.schedules import Schedule, declare, enqueue_tick, list_schedules
from errands.queue.ticks import Timing
from tests.conftest import ServeApi
from tests.rawhttp import exchange, request

TOKEN = "s3cret-token"
SCRIPT = "<script>document.title='pwned'</script>"
Conn = psycopg.Connection[Any]


def csrf_of(page: httpx.Response) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match, "the page has no CSRF token"
    return match.group(1)


def make_dead(conn: Conn, client: Client, **fields: Any) -> int:
    job = client.enqueue("t", max_attempts=1, **fields)
    (held,) = claim(conn, "w1", [job.queue], limit=1, lease_seconds=30)
    fail(conn, "w1", Held(held.id, held.attempts), "boom", "Traceback: boom", retry_in=0)
    return job.id


# -- pages -----------------------------------------------------------------------------------


def test_root_redirects_to_the_dashboard(api: httpx.Client) -> None:
    response = api.get("/")
    assert (response.status_code, response.headers["location"]) == (303, "/ui")


def test_the_overview_shows_each_queue_with_its_counts(api: httpx.Client, client: Client) -> None:
    client.enqueue("t", queue="mail")
    page = api.get("/ui")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert 'data-queue="mail"' in page.text
    assert "<svg" in page.text


def test_an_open_dashboard_says_it_is_open(api: httpx.Client) -> None:
    assert 'id="open-access"' in api.get("/ui").text


def test_every_asset_is_served_from_the_package_and_nothing_from_elsewhere(
    api: httpx.Client, client: Client
) -> None:
    job = client.enqueue("t")
    pages = [api.get(path).text for path in ("/ui", "/ui/jobs", f"/ui/jobs/{job.id}")]
    for text in pages:
        assert not re.search(r'(src|href)="(https?:)?//', text)
    for asset in ("app.css", "app.js"):
        assert api.get(f"/ui/static/{asset}").status_code == 200
    assert api.get("/ui/static/../dashboard.py").status_code == 404


def test_jobs_are_listed_newest_first_in_cursor_pages(api: httpx.Client, client: Client) -> None:
    ids = [client.enqueue("t").id for _ in range(55)]
    first = api.get("/ui/jobs")
    shown = [int(i) for i in re.findall(r'<tr data-id="(\d+)"', first.text)]
    assert shown == ids[::-1][:50]
    older = re.search(r'href="/ui/jobs\?([^"]+)" id="older"', first.text)
    assert older
    second = api.get("/ui/jobs?" + older.group(1).replace("&amp;", "&"))
    assert [int(i) for i in re.findall(r'<tr data-id="(\d+)"', second.text)] == ids[::-1][50:]


def test_jobs_filter_by_state_queue_and_task(api: httpx.Client, client: Client) -> None:
    wanted = client.enqueue("mail_task", queue="mail")
    client.enqueue("mail_task", queue="other")
    client.enqueue("other_task", queue="mail")
    page = api.get("/ui/jobs", params={"state": "pending", "queue": "mail", "task": "mail_task"})
    assert re.findall(r'<tr data-id="(\d+)"', page.text) == [str(wanted.id)]


def test_a_job_is_found_by_its_idempotency_key_or_id(api: httpx.Client, client: Client) -> None:
    job = client.enqueue("t", idempotency_key="order-7")
    for wanted in ("order-7", str(job.id)):
        found = api.get("/ui/find", params={"q": wanted})
        assert found.headers["location"] == f"/ui/jobs/{job.id}"
    assert api.get("/ui/find", params={"q": "nothing"}).status_code == 404


def test_the_job_page_shows_the_traceback_of_each_failed_attempt(
    api: httpx.Client, client: Client, conn: Conn
) -> None:
    job_id = make_dead(conn, client)
    page = api.get(f"/ui/jobs/{job_id}")
    assert "Traceback: boom" in page.text
    assert 'id="retry"' in page.text and 'id="cancel"' not in page.text


def test_a_failed_attempt_is_dated_to_the_second_like_every_time_on_the_page(
    api: httpx.Client, client: Client, conn: Conn
) -> None:
    job_id = make_dead(conn, client)
    summaries = re.findall(
        r"<summary>Attempt \d+ at ([^:]+:\d\d:\d\d[^:]*):", api.get(f"/ui/jobs/{job_id}").text
    )
    assert summaries
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", at) for at in summaries)


def test_the_timeline_shows_each_attempt_start_and_failure(
    api: httpx.Client, client: Client, conn: Conn
) -> None:
    job = client.enqueue("t", max_attempts=2)
    for _ in range(2):
        (held,) = claim(conn, "w1", ["default"], limit=1, lease_seconds=30)
        fail(conn, "w1", Held(held.id, held.attempts), "boom", "tb", retry_in=0)
    timeline = re.search(
        r'<ol class="timeline" id="timeline">(.*?)</ol>', api.get(f"/ui/jobs/{job.id}").text, re.S
    )
    assert timeline
    steps = re.findall(r"</time> ([^<]+)</li>", timeline.group(1))
    assert steps == [
        "created",
        "attempt 1 started",
        "attempt 1 failed",
        "attempt 2 started",
        "attempt 2 failed",
        "dead",
    ]


def test_everything_from_the_database_is_escaped(api: httpx.Client, client: Client) -> None:
    job = client.enqueue("t", {"note": SCRIPT}, queue="q", idempotency_key=SCRIPT)
    page = api.get(f"/ui/jobs/{job.id}")
    assert SCRIPT not in page.text
    assert "&lt;script&gt;" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]


# -- actions ---------------------------------------------------------------------------------


def test_retry_from_the_job_page_makes_a_dead_job_pending(
    api: httpx.Client, client: Client, conn: Conn
) -> None:
    job_id = make_dead(conn, client)
    token = csrf_of(api.get(f"/ui/jobs/{job_id}"))
    answer = api.post(f"/ui/jobs/{job_id}/retry", data={"csrf": token})
    assert answer.status_code == 303
    assert client.get(job_id).state is JobState.PENDING  # type: ignore[union-attr]


def test_an_action_the_state_forbids_shows_its_error_in_the_page(
    api: httpx.Client, client: Client
) -> None:
    job = client.enqueue("t")
    token = csrf_of(api.get(f"/ui/jobs/{job.id}"))
    answer = api.post(f"/ui/jobs/{job.id}/retry", data={"csrf": token})
    assert answer.status_code == 409
    assert "cannot retry" in answer.text or "pending" in answer.text
    assert 'id="error"' in answer.text


def test_a_post_without_the_csrf_token_is_refused_and_changes_nothing(
    api: httpx.Client, client: Client
) -> None:
    job = client.enqueue("t")
    api.get("/ui")  # a session cookie, but no token sent with the form
    answer = api.post(f"/ui/jobs/{job.id}/cancel", data={"csrf": "forged"})
    assert answer.status_code == 403
    assert client.get(job.id).state is JobState.PENDING  # type: ignore[union-attr]


def test_a_post_without_a_session_is_refused(api: httpx.Client, client: Client) -> None:
    job = client.enqueue("t")
    answer = api.post(f"/ui/jobs/{job.id}/cancel", data={"csrf": "x"})
    assert answer.status_code == 403
    assert client.get(job.id).state is JobState.PENDING  # type: ignore[union-attr]


def test_bulk_retry_shows_the_count_and_acts_only_once_confirmed(
    api: httpx.Client, client: Client, conn: Conn
) -> None:
    dead = [make_dead(conn, client, queue="mail") for _ in range(3)]
    make_dead(conn, client, queue="other")
    token = csrf_of(api.get("/ui/jobs?queue=mail"))
    form = {"csrf": token, "action": "retry", "queue": "mail"}
    asked = api.post("/ui/bulk", data=form)
    assert re.search(r'id="bulk-count">3<', asked.text)
    assert {client.get(i).state for i in dead} == {JobState.DEAD}  # type: ignore[union-attr]
    done = api.post("/ui/bulk", data={**form, "confirm": "yes"})
    assert done.status_code == 303
    assert {client.get(i).state for i in dead} == {JobState.PENDING}  # type: ignore[union-attr]
    assert [q.counts[JobState.DEAD] for q in client.stats().queues if q.queue == "other"] == [1]


def test_a_running_job_shows_its_progress_and_is_asked_to_stop_from_its_page(
    api: httpx.Client, client: Client, conn: Conn
) -> None:
    job = client.enqueue("t")
    (claimed,) = claim(conn, "w1", ["default"], 1, 30)
    heartbeat(conn, "w1", [Held(claimed.id, claimed.attempts)], 30, {job.id: "0.4"})
    page = api.get(f"/ui/jobs/{job.id}")
    assert '<progress value="0.4" max="1">40%</progress>' in page.text
    assert 'id="cancel">Cancel (stop it running)<' in page.text
    listed = api.get("/ui/jobs").text
    assert '<progress value="0.4" max="1" title="40%">' in listed
    answer = api.post(f"/ui/jobs/{job.id}/cancel", data={"csrf": csrf_of(page)})
    assert answer.status_code == 303 and "done=cancel-requested" in answer.headers["location"]
    asked = api.get(answer.headers["location"]).text
    assert 'id="stopping"' in asked and 'id="cancel"' not in asked
    assert "asked to stop" in asked
    assert client.get(job.id).state is JobState.IN_PROGRESS  # type: ignore[union-attr]


def test_a_progress_object_is_shown_escaped_with_a_bar_for_done_of_total(
    api: httpx.Client, client: Client, conn: Conn
) -> None:
    job = client.enqueue("t")
    (claimed,) = claim(conn, "w1", ["default"], 1, 30)
    progress = json.dumps({"done": 1, "total": 4, "stage": SCRIPT})
    heartbeat(conn, "w1", [Held(claimed.id, claimed.attempts)], 30, {job.id: progress})
    for text in (api.get(f"/ui/jobs/{job.id}").text, api.get("/ui/jobs").text):
        assert SCRIPT not in text and "&lt;script&gt;" in text
        assert '<progress value="0.25" max="1"' in text


def test_bulk_cancel_asks_running_jobs_to_stop_only_when_ticked(
    api: httpx.Client, client: Client, conn: Conn
) -> None:
    running = client.enqueue("t")
    claim(conn, "w1", ["default"], 1, 30)
    pending = client.enqueue("t")
    page = api.get("/ui/jobs")
    assert 'id="bulk-cancel-running"' in page.text
    form = {"csrf": csrf_of(page), "action": "cancel", "confirm": "yes"}
    assert api.post("/ui/bulk", data=form).status_code == 303
    assert client.get(running.id).cancel_requested_at is None  # type: ignore[union-attr]
    assert client.get(pending.id).state is JobState.CANCELLED  # type: ignore[union-attr]
    asked = api.post("/ui/bulk", data={**form, "confirm": "", "running": "yes"})
    assert re.search(r'id="bulk-count">1<', asked.text) and "asked to stop" in asked.text
    assert api.post("/ui/bulk", data={**form, "running": "yes"}).status_code == 303
    stopping = client.get(running.id)
    assert stopping is not None and stopping.state is JobState.IN_PROGRESS
    assert stopping.cancel_requested_at is not None


def test_a_queue_is_paused_and_resumed_from_the_overview(api: httpx.Client, client: Client) -> None:
    client.enqueue("t", queue="mail")
    token = csrf_of(api.get("/ui"))
    assert api.post("/ui/queues/pause", data={"csrf": token, "queue": "mail"}).status_code == 303
    assert client.stats().paused == ["mail"]
    assert "paused" in api.get("/ui").text
    api.post("/ui/queues/resume", data={"csrf": token, "queue": "mail"})
    assert client.stats().paused == []


def test_queue_limits_are_set_shown_and_removed_from_the_overview(
    api: httpx.Client, client: Client, conn: Conn
) -> None:
    for _ in range(3):
        client.enqueue("t", queue="mail")
    token = csrf_of(api.get("/ui"))
    form = {"csrf": token, "queue": "mail", "concurrency": "1", "rate": "20/s"}
    assert api.post("/ui/queues/limits", data=form).status_code == 303
    claim(conn, "w1", ("mail",), 5, 60)
    claim(conn, "w1", ("mail",), 5, 60)  # the first claim met the queue's counters
    row = re.search(r'<tr data-queue="mail">.*?</tr>', api.get("/ui").text, re.S)
    assert row is not None
    assert "1 at once (1)" in row.group(0) and "20/s (1)" in row.group(0)
    assert re.search(r'class="num throttled">2<', row.group(0))
    api.post("/ui/queues/limits", data={**form, "concurrency": "", "rate": ""})
    assert "at once" not in api.get("/ui").text


def test_invalid_queue_limits_from_the_overview_say_which_and_change_nothing(
    api: httpx.Client, client: Client
) -> None:
    client.enqueue("t", queue="mail")
    token = csrf_of(api.get("/ui"))
    answer = api.post("/ui/queues/limits", data={"csrf": token, "queue": "mail", "rate": "20/d"})
    assert answer.status_code == 422 and "rate: must be N/s, N/m or N/h" in answer.text
    (mail,) = api.get("/queues").json()["queues"]
    assert (mail["concurrency"], mail["rate"]) == (None, None)


def test_the_job_page_shows_its_unique_key_and_the_limits_it_comes_under(
    api: httpx.Client, client: Client, conn: Conn
) -> None:
    conn.execute(
        "insert into errands_limits (scope, name, kind, amount, key, set_by)"
        " values ('task', 'sync', 'concurrency', 2, 'account', 'code')"
    )
    job = client.enqueue("sync", {"account": "acme"}, unique_key="sync:acme")
    page = api.get(f"/ui/jobs/{job.id}").text
    assert 'id="unique-key">sync:acme<' in page
    assert "concurrency 2 of task sync per account (account=acme)" in page


def test_the_schedules_page_says_when_there_is_no_schedule(api: httpx.Client) -> None:
    page = api.get("/ui/schedules")
    assert page.status_code == 200
    assert 'id="no-schedules"' in page.text


def declare_schedules(conn: Conn) -> None:
    """A cron schedule in a time zone with a tick enqueued, and an interval never ticked."""
    daily = Schedule("morning_digest", "digest", Timing("0 7 * * 1-5", None, "Europe/Berlin"))
    declare(conn, daily)
    enqueue_tick(conn, daily, datetime(2026, 11, 30, 6, 0, tzinfo=UTC))
    payload = {"table": SCRIPT}
    declare(conn, Schedule("purge", "purge_expired", Timing(None, 90), payload, catch_up=False))


def test_the_schedules_page_shows_each_schedule_as_errands_schedules_does(
    api: httpx.Client, conn: Conn
) -> None:
    declare_schedules(conn)
    page = api.get("/ui/schedules").text
    digest, purge = list_schedules(conn)
    for heading in ("Schedule", "Task", "Runs", "Next tick", "Last tick", "Last job", "Payload"):
        assert f"<th>{heading}</th>" in page
    assert "<code>0 7 * * 1-5</code> in Europe/Berlin" in page
    assert "every 90 s" in page
    assert digest.next_tick is not None and purge.next_tick is not None
    for moment in (digest.next_tick, purge.next_tick, digest.last_tick):
        assert moment is not None
        assert moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") in page
    assert f'<a href="/ui/jobs/{digest.last_job_id}">' in page
    assert '<span class="badge pending">pending</span>' in page
    assert "no catch-up" in page and "the latest missed tick" in page


def test_the_schedules_page_shows_no_column_name_python_value_or_microsecond(
    api: httpx.Client, conn: Conn
) -> None:
    declare_schedules(conn)
    page = api.get("/ui/schedules").text
    for raw in ("every_seconds", "declared_at", "seen_at", "last_job_id", "True", "None"):
        assert raw not in page
    assert not re.search(r"\d\d:\d\d:\d\d\.\d", page)  # seconds, never their fractions
    assert SCRIPT not in page  # the payload, escaped


# -- sessions --------------------------------------------------------------------------------


def test_the_session_cookie_is_httponly_strict_and_scoped_to_the_dashboard(
    api: httpx.Client,
) -> None:
    cookie = api.get("/ui").headers["set-cookie"]
    assert cookie.startswith("errands_session=")
    # Attribute names and SameSite's value are case-insensitive (RFC 6265bis).
    for flag in ("httponly", "samesite=strict", "path=/ui"):
        assert flag in cookie.lower()


def test_with_tokens_the_dashboard_asks_for_a_login(serve_api: ServeApi) -> None:
    ui = serve_api(tokens=(TOKEN,))
    answer = ui.get("/ui/jobs")
    assert (answer.status_code, answer.headers["location"]) == (303, "/ui/login?next=%2Fui%2Fjobs")
    assert 'id="open-access"' not in ui.get("/ui/login").text


def test_a_wrong_token_is_refused_at_login(serve_api: ServeApi) -> None:
    ui = serve_api(tokens=(TOKEN,))
    answer = ui.post("/ui/login", data={"token": "wrong", "next": "/ui"})
    assert answer.status_code == 401
    assert "set-cookie" not in answer.headers
    assert ui.get("/ui").status_code == 303


def test_a_right_token_opens_a_session(serve_api: ServeApi) -> None:
    ui = serve_api(tokens=(TOKEN,))
    answer = ui.post("/ui/login", data={"token": TOKEN, "next": "/ui/jobs"})
    assert (answer.status_code, answer.headers["location"]) == (303, "/ui/jobs")
    assert "HttpOnly" in answer.headers["set-cookie"]
    assert ui.get("/ui/jobs").status_code == 200


def test_login_refuses_wrong_tokens_with_429_after_too_many_from_an_address(
    serve_api: ServeApi,
) -> None:
    ui = serve_api(tokens=(TOKEN,))
    for _ in range(LIMIT - 1):
        assert ui.post("/ui/login", data={"token": "guess"}).status_code == 401
    # Guesses through the API's bearer header count too.
    assert ui.get("/stats", headers={"Authorization": "Bearer guess"}).status_code == 401
    held = ui.post("/ui/login", data={"token": "guess"})
    assert held.status_code == 429
    assert "Try again in" in held.text and "set-cookie" not in held.headers
    # The right token still logs in: a shared address must not lock everyone out.
    answer = ui.post("/ui/login", data={"token": TOKEN})
    assert answer.status_code == 303 and "errands_session=" in answer.headers["set-cookie"]


def test_login_never_redirects_to_another_site(serve_api: ServeApi) -> None:
    ui = serve_api(tokens=(TOKEN,))
    answer = ui.post("/ui/login", data={"token": TOKEN, "next": "//evil.example/ui"})
    assert answer.headers["location"] == "/ui"


def test_a_session_is_signed_by_a_secret_of_the_database_not_by_the_token(
    serve_api: ServeApi, other_db_url: str, conn: Conn
) -> None:
    first, elsewhere = serve_api(tokens=(TOKEN,)), serve_api(tokens=(TOKEN,), url=other_db_url)
    first.post("/ui/login", data={"token": TOKEN})
    cookie = first.cookies["errands_session"]
    assert TOKEN not in cookie
    (secret,) = conn.execute("select secret from errands_dashboard_secret").fetchone()
    assert len(secret) >= 32  # made at random by the first API process that needed it
    # Another database, the same token: another secret, so the cookie opens nothing there.
    elsewhere.cookies.set("errands_session", cookie)
    assert elsewhere.get("/ui").status_code == 303


def test_with_errands_secret_key_every_process_given_it_accepts_the_session(
    serve_api: ServeApi, other_db_url: str
) -> None:
    key = "k" * 40
    first = serve_api(tokens=(TOKEN,), secret_key=key)
    second = serve_api(tokens=(TOKEN,), url=other_db_url, secret_key=key)
    first.post("/ui/login", data={"token": TOKEN})
    second.cookies.set("errands_session", first.cookies["errands_session"])
    assert second.get("/ui").status_code == 200


def test_a_session_of_other_tokens_is_refused(serve_api: ServeApi) -> None:
    first, second = serve_api(tokens=(TOKEN,)), serve_api(tokens=("another-token",))
    first.post("/ui/login", data={"token": TOKEN})
    cookie = first.cookies["errands_session"]
    second.cookies.set("errands_session", cookie)
    answer = second.get("/ui")
    assert answer.status_code == 303


def test_a_logged_out_cookie_is_refused_by_every_api_process(serve_api: ServeApi) -> None:
    first, second = serve_api(tokens=(TOKEN,)), serve_api(tokens=(TOKEN,))
    first.post("/ui/login", data={"token": TOKEN})
    copy = first.cookies["errands_session"]
    second.cookies.set("errands_session", copy)
    assert second.get("/ui").status_code == 200

    answer = first.post("/ui/logout", data={"csrf": csrf_of(first.get("/ui"))})
    assert answer.headers["location"] == "/ui/login"

    for ui in (first, second):
        ui.cookies.set("errands_session", copy)
        assert ui.get("/ui").status_code == 303
        assert ui.post("/ui/logout", data={"csrf": "any"}).status_code == 401


def test_logging_out_leaves_other_sessions_open(serve_api: ServeApi) -> None:
    staying, leaving = serve_api(tokens=(TOKEN,)), serve_api(tokens=(TOKEN,))
    for ui in (staying, leaving):
        ui.post("/ui/login", data={"token": TOKEN})
    leaving.post("/ui/logout", data={"csrf": csrf_of(leaving.get("/ui"))})
    assert staying.get("/ui").status_code == 200


def test_a_logout_is_forgotten_once_its_cookie_has_expired(serve_api: ServeApi, conn: Conn) -> None:
    conn.execute(
        "insert into errands_dashboard_logouts values ('gone', now() - interval '1 second')"
    )
    ui = serve_api(tokens=(TOKEN,))
    ui.post("/ui/login", data={"token": TOKEN})
    ui.post("/ui/logout", data={"csrf": csrf_of(ui.get("/ui"))})
    nonces = conn.execute("select nonce from errands_dashboard_logouts").fetchall()
    assert len(nonces) == 1 and nonces[0][0] != "gone"


def test_a_queue_named_dots_is_paused_and_resumed_from_the_overview(
    api: httpx.Client, client: Client
) -> None:
    # A browser resolves /ui/queues/../pause (and /ui/queues/%2E%2E/pause) to /ui/pause:
    # the form carries the queue's name in its body instead.
    for name in ("..", "."):
        client.enqueue("t", queue=name)
    page = api.get("/ui")
    token = csrf_of(page)
    assert 'name="queue" value=".."' in page.text
    for name in ("..", "."):
        answer = api.post("/ui/queues/pause", data={"csrf": token, "queue": name})
        assert answer.status_code == 303
    assert client.stats().paused == [".", ".."]
    api.post("/ui/queues/resume", data={"csrf": token, "queue": ".."})
    assert client.stats().paused == ["."]


def test_the_api_reaches_a_queue_named_dots_percent_encoded(api: httpx.Client) -> None:
    port = api.base_url.port
    assert port is not None
    answer = exchange(port, request("POST", "/queues/%2E%2E/pause"))
    assert answer.status == 200 and answer.json()["name"] == ".."
    assert answer.json()["paused"] is True
    assert answer.json()["counts"] == {state.value: 0 for state in JobState}


def test_the_api_still_wants_its_bearer_token(serve_api: ServeApi) -> None:
    ui = serve_api(tokens=(TOKEN,))
    ui.post("/ui/login", data={"token": TOKEN})
    assert ui.get("/stats").status_code == 401


# -- turning it off --------------------------------------------------------------------------


def test_no_ui_leaves_the_api_alone(serve_api: ServeApi) -> None:
    api = serve_api(ui=False)
    assert api.get("/ui").status_code == 404
    assert api.get("/").status_code == 404
    assert api.get("/health").status_code == 200


@pytest.mark.parametrize(("raw", "on"), [("0", False), ("off", False), ("1", True), ("", True)])
def test_errands_ui_turns_the_dashboard_on_and_off(raw: str, on: bool) -> None:
    assert Settings.from_env({"ERRANDS_UI": raw}).ui is on


def test_an_invalid_errands_ui_names_the_variable() -> None:
    with pytest.raises(ConfigurationError, match="ERRANDS_UI"):
        Settings.from_env({"ERRANDS_UI": "maybe"})


# -- hostile input ---------------------------------------------------------------------------

any_text = st.text(max_size=300)


@given(
    query=st.dictionaries(
        st.sampled_from(["state", "queue", "task", "after", "q", "done", "n", "next"]), any_text
    ),
    path=st.sampled_from(["/ui", "/ui/jobs", "/ui/find", "/ui/schedules", "/ui/live"]),
)
def test_no_query_makes_a_page_fail_with_a_server_error(
    api: httpx.Client, path: str, query: dict[str, str]
) -> None:
    assert api.get(path, params=query).status_code < 500


@given(
    form=st.dictionaries(
        st.sampled_from(["action", "state", "queue", "task", "confirm", "token", "next"]), any_text
    ),
    path=st.sampled_from(
        ["/ui/bulk", "/ui/login", "/ui/jobs/1/retry", "/ui/queues/pause", "/ui/logout"]
    ),
    raw=st.binary(max_size=200),
)
def test_no_form_body_makes_an_action_fail_with_a_server_error(
    api: httpx.Client, path: str, form: dict[str, str], raw: bytes
) -> None:
    token = csrf_of(api.get("/ui/jobs"))
    assert api.post(path, data={**form, "csrf": token}).status_code < 500
    assert api.post(path, content=raw).status_code < 500


@pytest.fixture
def ui_with_tokens(serve_api: ServeApi) -> httpx.Client:
    return serve_api(tokens=(TOKEN,))


@given(target=st.text(max_size=40).map(lambda text: "/ui" + text) | any_text)
def test_no_next_makes_a_login_answer_empty_or_send_the_browser_elsewhere(
    ui_with_tokens: httpx.Client, target: str
) -> None:
    # On a raw socket: an empty reply (a Location uvicorn refused to send) shows there only.
    port = ui_with_tokens.base_url.port
    assert port is not None
    query = urlencode({"next": target})
    asked = exchange(port, request("GET", f"/ui/login?{query}"))
    assert asked.status == 200 and 'name="next" value="/ui' in asked.body.decode()
    form = urlencode({"token": TOKEN, "next": target}).encode()
    headers = [("Content-Type", "application/x-www-form-urlencoded")]
    logged_in = exchange(port, request("POST", "/ui/login", headers, form))
    assert logged_in.status == 303
    assert re.fullmatch(r"/ui(?:[/?][\x21-\x7e]*)?", logged_in.headers["location"])


def test_a_next_with_a_line_break_logs_in_to_the_dashboard(ui_with_tokens: httpx.Client) -> None:
    port = ui_with_tokens.base_url.port
    assert port is not None
    assert exchange(port, request("GET", "/ui/login?next=/ui%0d%0aX:1")).status == 200
    form = b"token=" + TOKEN.encode() + b"&next=%2Fui%0D%0AX%3A1"
    headers = [("Content-Type", "application/x-www-form-urlencoded")]
    answer = exchange(port, request("POST", "/ui/login", headers, form))
    assert (answer.status, answer.headers["location"]) == (303, "/ui")


# What a header line can carry as UTF-8: no line breaks, no NUL, no lone surrogates.
header_characters = st.characters(exclude_characters="\r\n\x00", exclude_categories=["Cs"])
cookie_values = st.one_of(
    st.text(header_characters, max_size=200),
    # Shaped like a session cookie: nonce, expiry and signature, none of them signed by us.
    st.builds(
        lambda nonce, expiry, signature: f"errands_session={nonce}.{expiry}.{signature}",
        st.text(header_characters.filter(lambda c: c not in ";."), max_size=40),
        st.one_of(st.integers(-(10**15), 10**15).map(str), st.text(header_characters, max_size=20)),
        st.one_of(
            st.text("0123456789abcdef", min_size=64, max_size=64),
            st.text(header_characters.filter(lambda c: c not in ";."), max_size=70),
        ),
    ),
)


@given(cookie=cookie_values)
def test_no_cookie_opens_a_dashboard_with_tokens_or_fails_with_a_server_error(
    ui_with_tokens: httpx.Client, cookie: str
) -> None:
    # On a raw socket: httpx refuses some of these bytes itself. The server refuses control
    # characters in a header (400); nothing else may open a page.
    port = ui_with_tokens.base_url.port
    assert port is not None
    header = [("Cookie", cookie)]
    assert exchange(port, request("GET", "/ui", header)).status in (303, 400)
    assert exchange(port, request("POST", "/ui/logout", header)).status in (400, 401)


@given(csrf=any_text)
def test_no_csrf_text_makes_a_form_fail_with_a_server_error(api: httpx.Client, csrf: str) -> None:
    api.get("/ui")  # a session, as a browser holds one
    assert api.post("/ui/bulk", data={"csrf": csrf, "action": "retry"}).status_code == 403


def test_a_session_signature_outside_ascii_is_refused_not_answered_with_a_server_error(
    ui_with_tokens: httpx.Client,
) -> None:
    port = ui_with_tokens.base_url.port
    assert port is not None
    # Header bytes are read as ISO-8859-1: \xc3\xa9 arrives as two non-ASCII characters.
    answer = exchange(port, request("GET", "/ui", [("Cookie", "errands_session=n.1.\u00e9")]))
    assert answer.status == 303
