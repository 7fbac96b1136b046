"""The dashboard in a real headless Chromium (Debian's chromium and chromium-driver).

Without the browser these tests fail with the command that installs it; set
ERRANDS_SKIP_BROWSER_TESTS=1 to skip them on purpose instead.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg
import pytest
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from errands import Client, JobState
from errands.harness.process import free_port
from errands.harness.waiting import answers
from errands.queue.lease import Held, claim, fail
from errands.queue.schedules import Schedule, declare, enqueue_tick
from errands.queue.ticks import Timing
from tests.browser import CHROMEDRIVER, CHROMIUM, headless_chromium
from tests.conftest import ServeApi
from tests.daemon import Daemon, wait_for

pytestmark = pytest.mark.slow

INSTALL = "apt-get update && apt-get install -y chromium chromium-driver"
TOKEN = "browser-test-token"
Conn = psycopg.Connection[Any]
StartDaemon = Callable[..., Daemon]


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    """A fresh headless Chromium with a profile of its own, quit afterwards."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    if missing:
        if os.environ.get("ERRANDS_SKIP_BROWSER_TESTS") == "1":
            pytest.skip(f"ERRANDS_SKIP_BROWSER_TESTS=1 and {', '.join(missing)} missing")
        pytest.fail(
            f"the dashboard's browser tests need {' and '.join(missing)}: install them with "
            f"`{INSTALL}` (or set ERRANDS_SKIP_BROWSER_TESTS=1 to skip these tests)",
            pytrace=False,
        )
    with headless_chromium("--window-size=1280,900") as driver:
        driver.implicitly_wait(0)
        yield driver


def base_of(api: httpx.Client) -> str:
    return str(api.base_url).rstrip("/")


def swapped(exc: WebDriverException) -> bool:
    """Whether an element went out of the page between finding it and using it (the live
    part was swapped meanwhile): a stale reference, or chromedriver's other word for it,
    which it gives at times instead. Either way the element was not used."""
    return isinstance(exc, StaleElementReferenceException) or (
        "does not belong to the document" in str(exc)
    )


def shown(driver: WebDriver, css: str, text: str, timeout: float = 10) -> None:
    """Wait until the element at `css` shows `text`."""

    def showing() -> bool:
        try:
            return any(text in e.text for e in driver.find_elements(By.CSS_SELECTOR, css))
        except WebDriverException as exc:
            if swapped(exc):
                return False
            raise

    wait_for(showing, timeout, f"{text!r} in {css}")


def click(driver: WebDriver, css: str) -> None:
    """Click the element at `css` once the page shows it, found again if the live part was
    swapped under it (or the page a click just asked for has not replaced this one yet)."""

    def clicked() -> bool:
        try:
            driver.find_element(By.CSS_SELECTOR, css).click()
        except NoSuchElementException:
            return False
        except WebDriverException as exc:
            if swapped(exc):
                return False
            raise
        return True

    wait_for(clicked, 10, f"a click on {css}")


def make_dead(conn: Conn, client: Client, queue: str = "default") -> int:
    job = client.enqueue("t", queue=queue, max_attempts=1)
    (held,) = claim(conn, "w1", [queue], limit=1, lease_seconds=30)
    fail(conn, "w1", Held(held.id, held.attempts), "boom", "Traceback: boom", retry_in=0)
    return job.id


def state_of(client: Client, job_id: int) -> JobState | None:
    job = client.get(job_id)
    return job.state if job else None


# -- seeing jobs -----------------------------------------------------------------------------


def test_jobs_submitted_through_the_api_are_listed_and_open_on_click(
    browser: WebDriver, api: httpx.Client
) -> None:
    ids = [
        api.post(
            "/jobs", json={"task": "send_email", "payload": {"to": f"{n}@example.com"}}
        ).json()["id"]
        for n in range(3)
    ]
    browser.get(base_of(api) + "/ui/jobs")
    rows = browser.find_elements(By.CSS_SELECTOR, "#jobs tbody tr[data-id]")
    assert [int(row.get_attribute("data-id") or 0) for row in rows] == ids[::-1]
    browser.find_element(By.LINK_TEXT, str(ids[0])).click()
    shown(browser, "h1", f"Job {ids[0]}")
    assert '"to": "0@example.com"' in browser.find_element(By.ID, "payload").text


def test_the_overview_updates_itself_without_a_reload(
    browser: WebDriver, api: httpx.Client
) -> None:
    browser.get(base_of(api) + "/ui")
    browser.execute_script("window.notReloaded = true")
    api.post("/jobs", json={"task": "t", "queue": "arrived-later"})
    shown(browser, "#queues", "arrived-later")
    assert browser.execute_script("return window.notReloaded") is True


# -- acting on jobs --------------------------------------------------------------------------


def test_a_dead_job_is_retried_by_clicking_retry(
    browser: WebDriver, api: httpx.Client, client: Client, conn: Conn
) -> None:
    job_id = make_dead(conn, client)
    browser.get(f"{base_of(api)}/ui/jobs/{job_id}")
    assert "Traceback: boom" in browser.page_source
    browser.find_element(By.ID, "retry").click()
    shown(browser, "#job-state", "pending")
    assert state_of(client, job_id) is JobState.PENDING


def test_a_pending_job_is_cancelled_by_clicking_cancel(
    browser: WebDriver, api: httpx.Client, client: Client
) -> None:
    job = client.enqueue("t")
    browser.get(f"{base_of(api)}/ui/jobs/{job.id}")
    browser.find_element(By.ID, "cancel").click()
    shown(browser, "#job-state", "cancelled")
    assert state_of(client, job.id) is JobState.CANCELLED


def test_bulk_retry_of_a_filter_shows_the_count_and_retries_every_match_once_confirmed(
    browser: WebDriver, api: httpx.Client, client: Client, conn: Conn
) -> None:
    mail = [make_dead(conn, client, queue="mail") for _ in range(3)]
    other = make_dead(conn, client, queue="other")
    browser.get(base_of(api) + "/ui/jobs")
    browser.find_element(By.ID, "filter-queue").send_keys("mail")
    Select(browser.find_element(By.ID, "filter-state")).select_by_value("dead")
    browser.find_element(By.ID, "apply-filter").click()
    click(browser, "#bulk-retry")  # on the filtered page, once it has loaded
    shown(browser, "#bulk-count", "3")
    assert {state_of(client, i) for i in mail} == {JobState.DEAD}  # nothing before confirming
    browser.find_element(By.ID, "confirm").click()
    shown(browser, "#notice", "3 job(s) retried")
    assert {state_of(client, i) for i in mail} == {JobState.PENDING}
    assert state_of(client, other) is JobState.DEAD


def test_a_paused_queue_is_left_alone_by_a_real_worker_until_resumed_by_clicking(
    browser: WebDriver, start_daemon: StartDaemon, client: Client
) -> None:
    port = free_port()
    start_daemon("--workers", "1", "--queues", "default,mail", "--port", str(port))
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: answers(base + "/health"), 30, "the daemon's HTTP child")
    client.enqueue("record", {"tag": "warm-up"}, queue="mail")
    wait_for(lambda: not client.list(state="pending"), 20, "the warm-up job to be taken")

    browser.get(base + "/ui")
    click(browser, 'tr[data-queue="mail"] button.queue-action')
    shown(browser, 'tr[data-queue="mail"] .status', "paused")
    held = client.enqueue("record", {"tag": "held"}, queue="mail")
    later = client.enqueue("record", {"tag": "later"})
    # The later job on a running queue completes: the worker has looked and passed `held` by.
    wait_for(lambda: state_of(client, later.id) is JobState.COMPLETED, 20, "the later job")
    assert state_of(client, held.id) is JobState.PENDING

    click(browser, 'tr[data-queue="mail"] button.queue-action')
    shown(browser, 'tr[data-queue="mail"] .status', "running")
    wait_for(lambda: state_of(client, held.id) is JobState.COMPLETED, 20, "the resumed job")


def test_a_queue_named_dots_is_paused_by_clicking_though_a_browser_resolves_dot_segments(
    browser: WebDriver, api: httpx.Client, client: Client
) -> None:
    client.enqueue("t", queue="..")
    browser.get(base_of(api) + "/ui")
    click(browser, 'tr[data-queue=".."] button.queue-action')
    shown(browser, 'tr[data-queue=".."] .status', "paused")
    assert client.stats().paused == [".."]


# -- security --------------------------------------------------------------------------------


def test_without_a_token_the_dashboard_refuses_and_with_one_it_opens(
    browser: WebDriver, serve_api: ServeApi, client: Client
) -> None:
    ui = serve_api(tokens=(TOKEN,))
    client.enqueue("t", queue="secret-queue")
    browser.get(base_of(ui) + "/ui")
    assert "/ui/login" in browser.current_url
    assert "secret-queue" not in browser.page_source
    browser.find_element(By.ID, "token").send_keys("not-the-token")
    browser.find_element(By.ID, "login").click()
    shown(browser, "#error", "not accepted")
    assert "secret-queue" not in browser.page_source

    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "login").click()
    shown(browser, "#queues", "secret-queue")
    cookie = browser.get_cookie("errands_session")
    assert cookie is not None
    assert (cookie["httpOnly"], cookie["sameSite"]) == (True, "Strict")
    assert browser.execute_script("return document.cookie") == ""


def test_a_payload_holding_a_script_shows_as_text_and_does_not_run(
    browser: WebDriver, api: httpx.Client
) -> None:
    hostile = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'
    job = api.post("/jobs", json={"task": "t", "payload": {"note": hostile}}).json()
    browser.get(f"{base_of(api)}/ui/jobs/{job['id']}")
    assert hostile.replace('"', '\\"') in browser.find_element(By.ID, "payload").text
    assert browser.execute_script("return window.pwned") is None
    assert not browser.find_elements(By.CSS_SELECTOR, "main img")


def test_no_page_scrolls_sideways_at_1280_pixels(
    browser: WebDriver, api: httpx.Client, client: Client, conn: Conn
) -> None:
    long = "x" * 150  # names, keys and payloads as long as the validation lets them be
    declare_long_schedules(conn, long)
    dead = client.enqueue(f"task_{long}", {"note": long}, queue=f"q_{long}", max_attempts=1)
    (held,) = claim(conn, "w1", [dead.queue], 1, 30)
    fail(conn, "w1", Held(held.id, held.attempts), "RuntimeError: " + long, "Trace " + long, 0)
    browser.set_window_size(1280, 900)
    pages = ["/ui", "/ui/jobs", f"/ui/jobs/{dead.id}", "/ui/schedules"]
    for path in pages:
        browser.get(base_of(api) + path)
        overflow = browser.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{path} scrolls {overflow} px sideways at 1280 px"


def declare_long_schedules(conn: Conn, long: str) -> None:
    tick = datetime(2026, 11, 30, 6, 0, tzinfo=UTC)
    daily = Schedule(f"digest_{long}", f"task_{long}", Timing("0 7 * * 1-5", None, "Europe/Berlin"))
    declare(conn, daily)
    enqueue_tick(conn, daily, tick)
    every = Schedule(f"purge_{long}", "purge", Timing(None, 90), {"table": long, "n": 1})
    declare(conn, every)
