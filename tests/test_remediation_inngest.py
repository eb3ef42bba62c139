"""The Inngest adapter against ``tests/fake_inngest.py`` (a local stand-in for Inngest's event and REST
APIs that checks each request's shape), through the front door: evaluators applied and an Inngest run
ingested through the API, actions dispatched by the in-process runner and read back from
``GET /v1/actions``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from pydantic import SecretStr

from evalsvc.api.main import create_app
from evalsvc.pipeline.remediate import dispatch_action, due_action_ids
from evalsvc.settings import Settings
from evalsvc.store.db import get_engine
from evalsvc.store.models import Action, table, utcnow

from .conftest import Api, make_key
from .fake_inngest import FakeInngest

EVENT_KEY = "test-event-key/with+odd=chars"
SIGNING_KEY = "signkey-test-4f2a9c"
RUN = "01JD7Z4R8F6Q2V3W5X7Y9Z0ABC"


def evaluators(on_fail: str) -> str:
    return f"""
evaluators:
  - name: reply_is_polite
    scorer: regex
    target: {{source: inngest}}
    params: {{pattern: please}}
    on_fail: {on_fail}
"""


def finished(run_id: str = RUN, reply: str = "send the money now") -> dict[str, Any]:
    """Inngest's ``inngest/function.finished`` system event of one run."""
    return {"name": "inngest/function.finished", "id": f"evt-{run_id}", "ts": 1795320539000,
            "data": {"function_id": "support-reply", "run_id": run_id, "result": {"reply": reply}}}  # fmt: skip


@pytest.fixture
def inngest() -> Iterator[FakeInngest]:
    with FakeInngest(event_key=EVENT_KEY, signing_key=SIGNING_KEY) as fake:
        yield fake


@pytest.fixture
def fast(settings: Settings, inngest: FakeInngest) -> Settings:
    return settings.model_copy(
        update={
            "inngest_event_key": SecretStr(EVENT_KEY),
            "inngest_signing_key": SecretStr(SIGNING_KEY),
            "inngest_event_api_url": inngest.url,
            "inngest_api_url": inngest.url + "/",
            "action_backoff_seconds": 0.05,
            "action_max_attempts": 4,
        }
    )


@pytest.fixture
def iapi(fast: Settings) -> Iterator[Api]:
    with TestClient(create_app(fast)) as client:
        yield Api(client, make_key(fast, "default"))


def ingest(api: Api, *events: dict[str, Any]) -> None:
    r = api.post("/v1/ingest/inngest", json=list(events))
    assert r.status_code == 200, r.text
    api.wait_idle()


def settled(api: Api, kind: str, count: int = 1) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 30
    while True:
        got = [
            a for a in api.get("/v1/actions", params={"kind": kind}).json() if a["status"] in ("succeeded", "failed")
        ]
        if len(got) >= count:
            return got
        assert time.monotonic() < deadline, f"no settled {kind} action"
        time.sleep(0.05)


def test_module_example_runs() -> None:
    import doctest

    import evalsvc.adapters.inngest

    result = doctest.testmod(evalsvc.adapters.inngest)
    assert result.attempted == 2 and result.failed == 0


def test_failed_eval_sends_eval_failed_once_even_after_a_crash(iapi: Api, inngest: FakeInngest, fast: Settings) -> None:
    iapi.apply(evaluators("{action: retry, max_attempts: 3}"))
    ingest(iapi, finished(), finished("01JD7Z4R8F6Q2V3W5X7Y9Z0DEF", reply="please find the refund attached"))
    (action,) = settled(iapi, "retry")
    assert action["status"] == "succeeded" and action["attempts"] == 1, action

    assert inngest.problems == []
    (request,) = inngest.requests
    assert request["method"] == "POST" and request["path"] == "/e/test-event-key%2Fwith%2Bodd%3Dchars"
    (event,) = inngest.events
    assert event["name"] == "evalsvc/eval.failed" and event["id"] == action["idempotency_key"]
    data = event["data"]
    assert (data["action"], data["run_id"], data["function_id"], data["step_key"], data["attempt"]) == (
        "retry", RUN, "support-reply", "function", 1)  # fmt: skip
    assert data["step"] == "support-reply"  # the step's name: for the run's end, the function
    assert data["verdict"]["evaluator"] == "reply_is_polite" and data["verdict"]["passed"] is False
    assert action["response"]["event_id"] == event["id"] and action["response"]["response"]["ids"] == [event["id"]]

    # a worker that died after sending: the re-send after the lease carries the same event id
    engine = get_engine(fast.resolved_database_url())
    a = table(Action)
    with engine.begin() as conn:
        conn.execute(sa.update(a).where(a.c.id == action["id"]).values(
            status="dispatched", claimed_at=utcnow() - timedelta(seconds=fast.lease_seconds + 1)))  # fmt: skip
    assert due_action_ids(engine=engine, settings=fast) == [action["id"]]
    assert dispatch_action(engine=engine, settings=fast, action_id=action["id"]).status == "succeeded"
    assert len(inngest.requests) == 2 and inngest.requests[1]["body"] == inngest.requests[0]["body"]
    assert inngest.repeats == 1 and len(inngest.events) == 1 and inngest.problems == []
    # and a second ingest of the same run plans nothing new
    ingest(iapi, finished())
    assert len(iapi.get("/v1/actions").json()) == 1 and len(inngest.requests) == 2


def test_pause_sends_eval_failed_with_the_pause(iapi: Api, inngest: FakeInngest) -> None:
    iapi.apply(evaluators("pause"))
    ingest(iapi, finished())
    (action,) = settled(iapi, "pause")
    assert action["status"] == "succeeded", action
    (event,) = inngest.events
    assert (event["name"], event["data"]["action"], event["data"]["run_id"]) == ("evalsvc/eval.failed", "pause", RUN)
    assert inngest.problems == []


@pytest.mark.parametrize("status", [503, 429])
def test_a_5xx_or_429_is_retried_with_the_same_event_id(iapi: Api, inngest: FakeInngest, status: int) -> None:
    inngest.fail_with = [status, status]
    iapi.apply(evaluators("retry"))
    ingest(iapi, finished())
    (action,) = settled(iapi, "retry")
    assert action["status"] == "succeeded" and action["attempts"] == 3, action
    bodies = {r["body"] for r in inngest.requests}
    assert len(inngest.requests) == 3 and len(bodies) == 1  # the same event each time
    assert len(inngest.events) == 1 and inngest.problems == []


def test_a_4xx_fails_the_action_without_retrying(iapi: Api, inngest: FakeInngest) -> None:
    inngest.fail_with = [400]
    iapi.apply(evaluators("retry"))
    ingest(iapi, finished())
    (action,) = settled(iapi, "retry")
    assert action["status"] == "failed" and action["attempts"] == 1, action
    assert "HTTP 400" in action["last_error"] and len(inngest.requests) == 1


def test_a_wrong_event_key_is_a_4xx_and_no_key_fails_at_once(
    settings: Settings, inngest: FakeInngest, fast: Settings
) -> None:
    for update, error in (({"inngest_event_key": SecretStr("wrong")}, "HTTP 401"),
                          ({"inngest_event_key": None}, "EVALSVC_INNGEST_EVENT_KEY")):  # fmt: skip
        s = fast.model_copy(update=update)
        with TestClient(create_app(s)) as client:
            api = Api(client, make_key(s, "default"))
            api.apply(evaluators("retry"))
            ingest(api, finished(f"01RUN{len(error)}"))
            actions = [a for a in settled(api, "retry") if error in (a["last_error"] or "")]
            assert actions and all(a["status"] == "failed" and a["attempts"] == 1 for a in actions), actions
    assert inngest.problems == ["unknown event key"] and inngest.events == []


def test_review_approval_sends_the_decision_and_rejection_cancels_the_run(iapi: Api, inngest: FakeInngest) -> None:
    other = "01JD7Z4R8F6Q2V3W5X7Y9Z0GHI"
    iapi.apply(evaluators("review"))
    ingest(iapi, finished(), finished(other))
    reviews = {r["run_key"]: r for r in iapi.get("/v1/reviews").json()}
    assert set(reviews) == {RUN, other}

    r = iapi.post(f"/v1/reviews/{reviews[RUN]['id']}/approve", json={"reviewer": "ana", "comment": "fine"})
    assert r.status_code == 200 and r.json()["follow_up_action_id"], r.text
    (resume,) = settled(iapi, "resume")
    assert resume["status"] == "succeeded", resume
    (approved,) = inngest.events
    assert approved["name"] == "evalsvc/review.decided" and approved["id"] == resume["idempotency_key"]
    assert (approved["data"]["decision"], approved["data"]["run_id"]) == ("approved", RUN)
    assert inngest.cancelled == []

    r = iapi.post(f"/v1/reviews/{reviews[other]['id']}/reject", json={"reviewer": "ana", "comment": "rude"})
    assert r.status_code == 200, r.text
    (cancel,) = settled(iapi, "cancel")
    assert cancel["status"] == "succeeded", cancel
    rejected = inngest.events[1]
    assert (rejected["name"], rejected["data"]["decision"], rejected["data"]["run_id"]) == (
        "evalsvc/review.decided", "rejected", other)  # fmt: skip
    assert inngest.cancelled == [other]
    delete = inngest.requests[-1]
    assert delete["method"] == "DELETE" and delete["path"] == f"/v1/runs/{other}"
    assert delete["headers"]["authorization"] == f"Bearer {SIGNING_KEY}"
    assert cancel["response"]["cancel"]["status_code"] == 200 and inngest.problems == []
