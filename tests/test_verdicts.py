"""In-band verdicts: the long-poll endpoint answers pending, then the verdict; `evalsvc.client` waits
for it with a timeout. On each store (the `settings` fixture is parametrized over SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from evalsvc.client import Client, EvalsvcError, VerdictTimeout
from evalsvc.settings import Settings

from .conftest import Api
from .factories import record

EVALUATORS = """
evaluators:
  - name: total_is_number
    scorer: json_schema
    target: {step: extract}
    params: {schema: {type: object, required: [total], properties: {total: {type: number}}}}
    on_fail: review
  - name: total_present
    scorer: regex
    target: {step: extract}
    params: {pattern: total}
"""


def _path(run_key: str, step_key: str) -> str:
    return f"/v1/runs/{run_key}/steps/{step_key}/verdict"


def test_long_poll_answers_pending_then_the_verdict(api: Api) -> None:
    api.apply(EVALUATORS)
    assert api.get(_path("r1", "extract")).status_code == 404
    assert api.get(_path("r1", "extract")).json()["field"] == "step_key"
    api.ingest([record("r1", "extract", status="running", ended_at=None, output=None)])
    pending = api.get(_path("r1", "extract"), params={"wait": 0.3}).json()
    assert (pending["state"], pending["step_status"], pending["verdicts"]) == ("pending", "running", [])

    answers: list[Any] = []
    started = threading.Event()

    def long_poll() -> None:
        started.set()
        answers.append(api.get(_path("r1", "extract"), params={"wait": 30}))

    poller = threading.Thread(target=long_poll)
    poller.start()
    started.wait()
    api.ingest([record("r1", "extract", output={"total": "12,50"})])  # the step finishes, with a bad total
    poller.join(60)
    (r,) = answers
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["state"], body["run_key"], body["step_key"], body["attempt"]) == ("failed", "r1", "extract", 1)
    verdicts = {v["evaluator"]: v["passed"] for v in body["verdicts"]}
    assert verdicts == {"total_is_number": False, "total_present": True}
    assert [(a["kind"], a["status"]) for a in body["actions"]] == [("review", "succeeded")]
    assert [rv["status"] for rv in body["reviews"]] == ["open"]


def test_passed_step_and_attempts(api: Api) -> None:
    api.apply(EVALUATORS)
    api.ingest([record("r2", "extract", output={"total": "x"}), record("r2", "extract", attempt=2)])
    latest = api.get(_path("r2", "extract"), params={"wait": 5}).json()
    assert (latest["state"], latest["attempt"], latest["actions"]) == ("passed", 2, [])
    first = api.get(_path("r2", "extract"), params={"attempt": 1, "source": "json"}).json()
    assert (first["state"], first["attempt"]) == ("failed", 1)
    # a step no evaluator targets has nothing to wait for
    api.ingest([record("r2", "other")])
    assert api.get(_path("r2", "other")).json() == {**api.get(_path("r2", "other")).json(), "state": "passed",
                                                    "verdicts": []}  # fmt: skip


@pytest.mark.parametrize(
    ("params", "field"),
    [({"attempt": 0}, "attempt"), ({"wait": -1}, "wait"), ({"attempt": 5}, "step_key"), ({"source": "x"}, "step_key")],
)
def test_bad_requests_name_the_field(api: Api, params: dict[str, Any], field: str) -> None:
    api.apply(EVALUATORS)
    api.ingest([record("r3", "extract")])
    r = api.get(_path("r3", "extract"), params=params)
    assert r.status_code in (404, 422) and field in r.text, r.text


def test_other_projects_steps_are_invisible(api: Api, other_api: Api) -> None:
    api.ingest([record("r4", "extract")])
    assert other_api.get(_path("r4", "extract")).status_code == 404
    assert api.get(_path("r4", "extract")).status_code == 200
    assert api.client.get(_path("r4", "extract")).status_code == 401


def test_python_client_waits_for_the_verdict_with_a_timeout(api: Api, settings: Settings) -> None:
    api.apply(EVALUATORS)
    api.ingest([record("r5", "extract", status="running", ended_at=None, output=None)])
    with Client(api_key=api.key, http=api.client) as evalsvc:
        # still running: the wait ends at the timeout with the pending answer, or raises when asked to
        verdict = evalsvc.wait_for_verdict(run_key="r5", step_key="extract", timeout=0.3, poll=0.1)
        assert verdict.pending and not verdict.failed
        with pytest.raises(VerdictTimeout) as timeout:
            evalsvc.wait_for_verdict(run_key="r5", step_key="extract", timeout=0.2, raise_on_timeout=True)
        assert timeout.value.last is not None and timeout.value.last.pending
        with pytest.raises(VerdictTimeout, match="never ingested"):
            evalsvc.wait_for_verdict(run_key="r5", step_key="nope", timeout=0.2)

        done = threading.Timer(0.2, lambda: api.ingest([record("r5", "extract", output={"total": "n/a"})]))
        done.start()
        verdict = evalsvc.wait_for_verdict(run_key="r5", step_key="extract", timeout=30)
        done.join()
        assert verdict.failed and verdict.failed_evaluators == ["total_is_number"]
        assert verdict.planned == ["review"] and "total_is_number" in (verdict.explanation or "")
        with pytest.raises(EvalsvcError) as error:
            evalsvc.verdict(run_key="r5", step_key="extract", attempt=0)
        assert (error.value.status, error.value.field) == (422, "attempt")
