"""Workflows over HTTP, through the real server: POST /workflows stores a workflow in one
transaction or refuses it (422 naming the field: a ref given twice, an unknown ref, a cycle,
a stored job that does not exist) with nothing stored; GET /workflows/{id} reads it."""

from __future__ import annotations

from typing import Any

import httpx
import psycopg
from hypothesis import given, settings
from hypothesis import strategies as st

Conn = psycopg.Connection[Any]


def stored_jobs(conn: Conn) -> int:
    row = conn.execute("select count(*) from errands_jobs").fetchone()
    assert row is not None
    return int(row[0])


def test_a_chain_is_stored_with_its_edges_and_read_back(api: httpx.Client) -> None:
    body = {
        "jobs": [
            {"ref": "c", "task": "t", "after": ["b"]},
            {"ref": "a", "task": "t"},
            {"ref": "b", "task": "t", "after": ["a"], "on_parent_failure": "run"},
        ]
    }
    answer = api.post("/workflows", json=body)
    assert answer.status_code == 201, answer.text
    stored = answer.json()
    refs = stored["refs"]
    assert [job["id"] for job in stored["jobs"]] == [refs["c"], refs["a"], refs["b"]]
    assert refs["a"] < refs["b"] < refs["c"]  # parents stored first
    by_ref = {ref: job for ref, job in zip("cab", stored["jobs"], strict=True)}
    assert by_ref["a"]["state"] == "pending" and by_ref["a"]["parents"] is None
    assert by_ref["b"]["state"] == "waiting" and by_ref["b"]["parents"] == [refs["a"]]
    assert by_ref["b"]["on_parent_failure"] == "run"
    assert {job["workflow_id"] for job in stored["jobs"]} == {stored["id"]}
    assert answer.headers["Location"] == f"/workflows/{stored['id']}"

    read = api.get(f"/workflows/{stored['id']}")
    assert read.status_code == 200
    assert [job["id"] for job in read.json()["jobs"]] == sorted(refs.values())


def test_a_workflow_may_run_after_stored_jobs(api: httpx.Client) -> None:
    parent = api.post("/jobs", json={"task": "t"}).json()
    answer = api.post(
        "/workflows", json={"jobs": [{"ref": "x", "task": "t", "after": [parent["id"]]}]}
    )
    assert answer.status_code == 201
    assert answer.json()["jobs"][0]["parents"] == [parent["id"]]


def test_an_unknown_workflow_is_404(api: httpx.Client) -> None:
    answer = api.get("/workflows/12345")
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "not_found"


def test_post_jobs_takes_after_and_refuses_a_missing_parent(api: httpx.Client, conn: Conn) -> None:
    parent = api.post("/jobs", json={"task": "t"}).json()
    child = api.post("/jobs", json={"task": "t", "after": [parent["id"]]})
    assert child.status_code == 201 and child.json()["state"] == "waiting"
    missing = api.post(
        "/jobs/batch", json={"jobs": [{"task": "t"}, {"task": "t", "after": [9999]}]}
    )
    assert missing.status_code == 422
    assert [d["field"] for d in missing.json()["error"]["details"]] == ["jobs[1].after[0]"]
    assert stored_jobs(conn) == 2


def test_the_waiting_state_is_listed_and_counted(api: httpx.Client) -> None:
    parent = api.post("/jobs", json={"task": "t"}).json()
    api.post("/jobs", json={"task": "t", "after": [parent["id"]]})
    listed = api.get("/jobs", params={"state": "waiting"}).json()["jobs"]
    assert len(listed) == 1
    assert api.get("/stats").json()["queues"]["default"]["waiting"] == 1
    document = api.get("/openapi.json").json()
    assert "/workflows" in document["paths"] and "/workflows/{id}" in document["paths"]


# -- hostile bodies ----------------------------------------------------------------------------

REFS = st.sampled_from(["a", "b", "c", "d", "e"])


@st.composite
def workflow_bodies(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Up to six jobs with refs drawn from five (so some repeat), each after refs drawn from
    the five and one no job has (so some are unknown, some make cycles)."""
    jobs = []
    for _ in range(draw(st.integers(1, 6))):
        job: dict[str, Any] = {"ref": draw(REFS), "task": "t"}
        after = draw(st.lists(REFS | st.just("zz"), max_size=3, unique=True))
        if after:
            job["after"] = after
        jobs.append(job)
    return jobs


def verdict(jobs: list[dict[str, Any]]) -> str:
    """What the server must answer, worked out independently: 422 for a ref given twice, an
    unknown ref or a cycle (found by depth-first search), else 201."""
    refs = [job["ref"] for job in jobs]
    if len(set(refs)) < len(refs):
        return "422"
    edges = {job["ref"]: job.get("after", []) for job in jobs}
    if any(parent not in edges for parents in edges.values() for parent in parents):
        return "422"
    visiting: set[str] = set()
    done: set[str] = set()

    def cyclic(ref: str) -> bool:
        if ref in done:
            return False
        if ref in visiting:
            return True
        visiting.add(ref)
        found = any(cyclic(parent) for parent in edges[ref])
        visiting.discard(ref)
        done.add(ref)
        return found

    return "422" if any(cyclic(ref) for ref in edges) else "201"


@settings(max_examples=60)
@given(jobs=workflow_bodies())
def test_bad_refs_and_cycles_are_refused_and_nothing_is_stored(
    api: httpx.Client, conn: Conn, jobs: list[dict[str, Any]]
) -> None:
    before = stored_jobs(conn)
    answer = api.post("/workflows", json={"jobs": jobs})
    assert str(answer.status_code) == verdict(jobs), answer.text
    if answer.status_code == 422:
        details = answer.json()["error"]["details"]
        assert details and all(d["field"].startswith("jobs[") for d in details)
        assert stored_jobs(conn) == before
    else:
        assert stored_jobs(conn) == before + len(jobs)


@settings(max_examples=40)
@given(
    body=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=5),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
        ),
        max_leaves=8,
    )
)
def test_any_json_body_gets_a_4xx_or_a_201_never_a_500(
    api: httpx.Client, conn: Conn, body: Any
) -> None:
    before = stored_jobs(conn)
    answer = api.post("/workflows", json={"jobs": [body]} if isinstance(body, dict) else body)
    assert answer.status_code in (201, 415, 422), answer.text  # 415: no body at all (None)
    if answer.status_code == 422:
        assert stored_jobs(conn) == before


# -- the dashboard -------------------------------------------------------------------------------


def test_the_dashboard_draws_a_workflow_linked_from_its_jobs(api: httpx.Client) -> None:
    body = {
        "jobs": [
            {"ref": "a", "task": "fetch"},
            {"ref": "b", "task": "fetch"},
            {"ref": "c", "task": "merge", "after": ["a", "b"]},
        ]
    }
    stored = api.post("/workflows", json=body).json()
    refs = stored["refs"]
    page = api.get(f"/ui/workflows/{stored['id']}")
    assert page.status_code == 200
    svg = page.text[page.text.index("<svg") : page.text.index("</svg>")]
    assert svg.count('class="edge"') == 2
    for job_id in refs.values():
        assert f'href="/ui/jobs/{job_id}"' in svg
    assert 'class="state-waiting"' in svg
    job_page = api.get(f"/ui/jobs/{refs['c']}").text
    assert f'href="/ui/workflows/{stored["id"]}"' in job_page
    assert api.get("/ui/workflows/999999").status_code == 404
