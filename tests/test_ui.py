"""The web UI through its front door (TestClient): sign-in, scoping to the key's project, the runs
list's filters and pages, a run's timeline, failed evals, the review queue's decisions (CSRF-checked)
and the evaluator page with its "no data" states."""

from __future__ import annotations

import html
import re

from fastapi.testclient import TestClient

from evalsvc.pipeline.projects import get_project, revoke_key
from evalsvc.settings import Settings
from evalsvc.store.db import get_engine, session_scope

from .conftest import Api
from .factories import SCHEMA_YAML, record


def _sign_in(client: TestClient, key: str) -> None:
    r = client.post("/ui/login", data={"key": key, "next": "/ui/runs"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/runs", r.text
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie, cookie


def _csrf(html: str) -> str:
    m = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert m, html
    return m.group(1)


def _seed(api: Api, other_api: Api) -> None:
    api.apply(SCHEMA_YAML)
    api.ingest([
        record("r1", "extract", output={"total": "x"}, input={"text": "<script>alert(1)</script>"}),
        record("r2", "extract", started_at="2026-11-02T10:00:00Z", ended_at="2026-11-02T10:00:01Z"),
        record("r3", "extract", workflow="refund-agent"),
    ])  # fmt: skip
    other_api.apply(SCHEMA_YAML)
    other_api.ingest([record("secret-run", "extract", output={"total": "x"})])


def test_pages_need_a_valid_key(client: TestClient) -> None:
    r = client.get("/ui/runs?status=failed", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/login?next=%2Fui%2Fruns%3Fstatus%3Dfailed"
    r = client.post("/ui/login", data={"key": "esk_nope"})
    assert r.status_code == 401 and "unknown or revoked API key" in r.text
    assert client.get("/", follow_redirects=False).headers["location"] == "/ui/runs"
    assert client.get("/ui/login").status_code == 200
    assert client.get("/ui/static/ui.css").headers["content-type"].startswith("text/css")


def test_runs_list_filters_pages_and_scoping(api: Api, other_api: Api) -> None:
    _seed(api, other_api)
    client = api.client
    _sign_in(client, api.key)
    page = client.get("/ui/runs")
    assert page.status_code == 200 and 'data-testid="project">default<' in page.text
    assert all(k in page.text for k in ("r1", "r2", "r3")) and "secret-run" not in page.text
    failed = client.get("/ui/runs", params={"failed_evaluator": "total_is_number"}).text
    assert ">r1<" in failed and ">r2<" not in failed and ">r3<" not in failed
    assert "review succeeded" in failed  # the action taken, with its outcome
    wf = client.get("/ui/runs", params={"workflow": "refund-agent"}).text
    assert ">r3<" in wf and ">r1<" not in wf
    assert ">r1<" in client.get("/ui/runs", params={"status": "completed", "since": "2026-01-01"}).text
    assert 'data-testid="empty"' in client.get("/ui/runs", params={"since": "2999-01-01"}).text
    # a window: runs last changed in [since, until)
    assert 'data-testid="empty"' in client.get("/ui/runs", params={"until": "2026-01-01"}).text
    window = client.get("/ui/runs", params={"since": "2026-01-01", "until": "2999-01-01"}).text
    assert all(f">{k}<" in window for k in ("r1", "r2", "r3"))
    assert [r["run_key"] for r in api.get("/v1/runs", params={"until": "2026-01-01T00:00:00Z"}).json()] == []
    r = client.get("/ui/runs", params={"since": "2026-02-01", "until": "2026-01-01"})
    assert r.status_code == 422 and "<code>until</code>: must be after" in r.text
    r = client.get("/ui/runs", params={"until": "soon"})
    assert r.status_code == 422 and "<code>until</code>" in r.text
    # bad input: a clear 4xx naming the field
    r = client.get("/ui/runs", params={"status": "bogus"})
    assert r.status_code == 422 and "<code>status</code>: must be one of" in r.text
    r = client.get("/ui/runs", params={"page": "0"})
    assert r.status_code == 422 and "<code>page</code>" in r.text
    r = client.get("/ui/runs", params={"since": "last tuesday"})
    assert r.status_code == 422 and "<code>since</code>" in r.text
    # another project's run is invisible, even by its key
    r = client.get("/ui/runs/secret-run")
    assert r.status_code == 404 and "no run 'secret-run'" in html.unescape(r.text)
    assert "secret-run" not in client.get("/ui/evals").text
    assert "secret-run" not in client.get("/ui/reviews").text


def test_runs_list_paginates(api: Api) -> None:
    api.ingest([record(f"p{i:03d}", "s", started_at=f"2026-11-01T09:{i:02d}:00Z") for i in range(51)])
    _sign_in(api.client, api.key)
    first = api.client.get("/ui/runs").text
    assert ">p050<" in first and ">p001<" in first and ">p000<" not in first and 'rel="next"' in first
    second = api.client.get("/ui/runs", params={"page": 2}).text
    assert ">p000<" in second and ">p050<" not in second and 'rel="next"' not in second


def test_run_page_failed_evals_and_review_decision(api: Api, other_api: Api) -> None:
    _seed(api, other_api)
    client = api.client
    _sign_in(client, api.key)
    run = client.get("/ui/runs/r1", params={"source": "json"})
    assert run.status_code == 200
    assert 'class="attempt failed" open' in run.text and "✗ failed" in run.text
    assert "'x' is not of type 'number'" in html.unescape(run.text)
    assert 'data-testid="actions"' in run.text and "review" in run.text
    assert "<script>alert(1)" not in run.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in run.text
    evals = client.get("/ui/evals", params={"evaluator": "total_is_number"}).text
    assert ">r1<" in evals and ">r2<" not in evals
    queue = client.get("/ui/reviews").text
    (review,) = api.get("/v1/reviews").json()
    assert f'data-testid="review-{review["id"]}"' in queue
    token = _csrf(queue)
    url = f"/ui/reviews/{review['id']}/approve"
    form = {"csrf": token, "comment": "looks fine", "reviewer": "ana", "next": "/ui/reviews", "human_verdict": "pass"}
    assert client.post(url, data={**form, "csrf": "0" * 32}).status_code == 403
    r = client.post(url, data=form, headers={"origin": "https://evil.example"})
    assert r.status_code == 403 and "cross-origin" in r.text
    assert client.post(f"/ui/reviews/{review['id']}/maybe", data=form).status_code == 404
    r = client.post(url, data={**form, "human_verdict": "maybe"}, headers={"origin": "http://testserver"})
    assert r.status_code == 422 and "<code>human_verdict</code>" in r.text
    r = client.post(url, data=form, headers={"origin": "http://testserver"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/ui/reviews?decided={review['id']}"
    notice = client.get(r.headers["location"]).text
    assert "approved with comment “looks fine”" in notice and "No follow-up action" in notice
    (decided,) = api.get("/v1/reviews", params={"status": "all"}).json()
    assert (decided["status"], decided["reviewer"], decided["comment"]) == ("approved", "ana", "looks fine")
    assert decided["human_passed"] is True  # the reviewer's own verdict, kept beside the scorer's
    assert "(output is right)" in client.get("/ui/reviews", params={"status": "all"}).text
    assert 'data-testid="human-verdict">reviewer: output is right' in client.get("/ui/runs/r1").text
    r = client.post(url, data=form)
    assert r.status_code == 409 and "already approved" in r.text
    assert "looks fine" in client.get("/ui/runs/r1").text
    # the other project's review cannot be decided from this session
    (theirs,) = other_api.get("/v1/reviews").json()
    r = client.post(f"/ui/reviews/{theirs['id']}/reject", data=form)
    assert r.status_code == 404 and other_api.get("/v1/reviews").json()[0]["status"] == "open"


def test_evaluator_pages_and_sign_out(api: Api, other_api: Api) -> None:
    _seed(api, other_api)
    client = api.client
    _sign_in(client, api.key)
    listing = client.get("/ui/evaluators").text
    assert "total_is_number" in listing and "<td>1</td><td>1</td><td>50.0%</td>" in listing
    page = client.get("/ui/evaluators/total_is_number").text
    assert (
        "<svg" in page
        and "2026-11-01: 0.0% (0 passed, 1 failed)" in page
        and "2026-11-02: 100.0% (1 passed, 0 failed)" in page
    )
    assert 'data-testid="no-drift"' in page and 'data-testid="no-spend"' in page
    r = client.get("/ui/evaluators/nope")
    assert r.status_code == 404 and "no evaluator named" in r.text
    token = _csrf(page)
    r = client.post("/ui/logout", data={"csrf": token}, follow_redirects=False)
    assert r.status_code == 303 and 'evalsvc_ui=""' in r.headers["set-cookie"]
    assert client.get("/ui/runs", follow_redirects=False).status_code == 303


def test_revoking_the_key_signs_the_browser_out(api: Api, settings: Settings) -> None:
    _sign_in(api.client, api.key)
    assert api.client.get("/ui/runs", follow_redirects=False).status_code == 200
    with session_scope(get_engine(settings.resolved_database_url())) as session:
        revoke_key(session=session, project=get_project(session=session, name="default"), prefix=api.key[:12])
    r = api.client.get("/ui/runs", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")


REVIEW_QUEUES = """
evaluators:
  - {name: total_checked, scorer: json_schema, target: {step: extract},
     params: {schema: {type: object, properties: {total: {type: number}}}}, on_fail: {action: review, queue: finance}}
  - {name: reply_not_blank, scorer: not_empty, target: {step: reply}, on_fail: {action: review, queue: triage}}
"""


def test_review_queue_pages_and_filters_by_queue(api: Api) -> None:
    """More open items than a page: the API, the CLI's store query and the UI page through them
    oldest first, and a queue filter applies before the limit (not to one page of results)."""
    api.apply(REVIEW_QUEUES)
    api.ingest([record(f"q{i:03d}", "extract", output={"total": "x"}) for i in range(55)]
               + [record("q999", "reply", output="")])  # fmt: skip
    everything = api.get("/v1/reviews", params={"limit": 1000}).json()
    assert len(everything) == 56 and [r["queue"] for r in everything].count("triage") == 1
    first = api.get("/v1/reviews", params={"limit": 50}).json()
    rest = api.get("/v1/reviews", params={"limit": 50, "offset": 50}).json()
    assert [r["id"] for r in first + rest] == [r["id"] for r in everything]
    (triage,) = api.get("/v1/reviews", params={"queue": "triage", "limit": 10}).json()  # beyond the first 10
    assert triage["run_key"] == "q999"

    _sign_in(api.client, api.key)
    page1 = api.client.get("/ui/reviews").text
    assert 'data-testid="queue-filter"' in page1 and ">finance<" in page1 and ">triage<" in page1
    assert page1.count('data-testid="review-') == 50 and 'rel="next"' in page1
    page2 = api.client.get("/ui/reviews", params={"page": 2}).text
    assert page2.count('data-testid="review-') == 6 and 'rel="next"' not in page2
    only = api.client.get("/ui/reviews", params={"queue": "triage"}).text
    assert only.count('data-testid="review-') == 1 and f'data-testid="review-{triage["id"]}"' in only
    # a decision made on page 2 comes back to page 2 of the same list
    assert 'name="next" value="/ui/reviews?status=open&amp;page=2"' in page2
    assert api.client.get("/ui/reviews", params={"page": 0}).status_code == 422
