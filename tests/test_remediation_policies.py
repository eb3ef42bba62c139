"""Remediation policies of ``evalsvc.yaml``: one action per (step attempt, kind), retry limits and
delays, the ``pause_after`` widening, review queues, and their validation at apply time.

Retry and pause go through an orchestrator adapter; ``Recorder`` is a plug-in adapter (the
``evalsvc.adapters`` interface, registered for the source ``recorder``) that remembers what it was
asked to do, so these tests see exactly which side effects the pipeline performed.
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any, ClassVar

import pytest
import sqlalchemy as sa

from evalsvc.adapters import ActionContext, register
from evalsvc.pipeline.remediate import FailedEval, plan_actions
from evalsvc.schemas import EvaluatorSpec, OnFail
from evalsvc.settings import Settings
from evalsvc.store.db import get_engine, session_scope
from evalsvc.store.models import Action, table

from .conftest import Api
from .factories import record


@register
class Recorder:
    source: ClassVar[str] = "recorder"
    kinds: ClassVar[frozenset[str]] = frozenset({"retry", "pause", "resume", "cancel"})
    calls: ClassVar[list[dict[str, Any]]] = []
    lock: ClassVar[threading.Lock] = threading.Lock()

    def perform(self, ctx: ActionContext) -> dict[str, Any]:
        with self.lock:
            call = {"kind": ctx.kind, "run": ctx.run["run_key"], "step": ctx.step["step_key"],
                    "attempt": ctx.step["attempt"], "key": ctx.idempotency_key, "reason": ctx.reason}  # fmt: skip
            self.calls.append(call)
        return {"performed": ctx.kind}


@pytest.fixture(autouse=True)
def _fresh_recorder() -> None:
    Recorder.calls.clear()


def rec(run_key: str, attempt: int = 1, *, output: Any = "", workflow: str = "invoice-agent") -> dict[str, Any]:
    return record(run_key, "reply", source="recorder", attempt=attempt, output=output, workflow=workflow)


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value)


def test_several_failing_evaluators_give_one_action_per_kind(api: Api) -> None:
    api.apply("""
evaluators:
  - {name: not_blank, scorer: not_empty, on_fail: {action: retry, max_retries: 2}}
  - {name: is_object, scorer: json_schema, params: {schema: {type: object}}, on_fail: {action: retry, max_retries: 2}}
  - {name: has_total, scorer: regex, params: {pattern: total}, on_fail: review}
  - {name: has_sum, scorer: regex, params: {pattern: sum}, on_fail: review}
""")
    api.ingest([rec("r1")])
    actions = api.get("/v1/actions").json()
    assert sorted(a["kind"] for a in actions) == ["retry", "review"]
    by_kind = {a["kind"]: a for a in actions}
    assert set(by_kind["retry"]["reason"].removeprefix("failed: ").split(", ")) == {"not_blank", "is_object"}
    assert set(by_kind["review"]["reason"].removeprefix("failed: ").split(", ")) == {"has_total", "has_sum"}
    assert by_kind["retry"]["status"] == "succeeded" and by_kind["retry"]["response"] == {"performed": "retry"}
    assert [(c["kind"], c["attempt"]) for c in Recorder.calls] == [("retry", 1)]
    assert len(api.get("/v1/reviews").json()) == 1
    # the same step again (a duplicate) remediates nothing more
    api.ingest([rec("r1")])
    assert len(api.get("/v1/actions").json()) == 2 and len(Recorder.calls) == 1


def test_retry_stops_at_max_retries(api: Api) -> None:
    api.apply("evaluators:\n  - {name: not_blank, scorer: not_empty, on_fail: {action: retry, max_retries: 1}}\n")
    api.ingest([rec("r1", 1)])
    api.ingest([rec("r1", 2)])  # the retried step failed again: attempt 2 is the last one allowed
    actions = sorted(api.get("/v1/actions?run_key=r1").json(), key=lambda a: a["id"])
    assert [(a["kind"], a["status"]) for a in actions] == [("retry", "succeeded"), ("retry", "skipped")]
    assert actions[1]["last_error"] == "retry limit reached: attempt 2 of at most 2"
    assert [c["attempt"] for c in Recorder.calls] == [1]
    # max_attempts (the older spelling) limits the same way
    api.apply("evaluators:\n  - {name: not_blank, scorer: not_empty, on_fail: {action: retry, max_attempts: 1}}\n")
    api.ingest([rec("r2", 1)])
    (a,) = api.get("/v1/actions?run_key=r2").json()
    assert a["status"] == "skipped" and Recorder.calls == [Recorder.calls[0]]


def test_retry_waits_for_its_backoff(api: Api) -> None:
    api.apply("""
evaluators:
  - name: not_blank
    scorer: not_empty
    on_fail: {action: retry, max_retries: 5, backoff_seconds: 600, backoff_multiplier: 2}
""")
    api.ingest([rec("r1", 1), rec("r2", 3)])
    actions = {a["run_id"]: a for a in api.get("/v1/actions").json()}
    assert len(actions) == 2 and all(a["status"] == "pending" and a["attempts"] == 0 for a in actions.values())
    delays = sorted((_ts(a["next_attempt_at"]) - _ts(a["created_at"])).total_seconds() for a in actions.values())
    assert delays == [600.0, 2400.0]  # attempt 1: 600 s; attempt 3: 600 * 2^2
    assert Recorder.calls == []  # nothing is sent before its time


def test_pause_after_n_failures_within_m_minutes(api: Api) -> None:
    api.apply("""
evaluators:
  - name: not_blank
    scorer: not_empty
    on_fail: {action: retry, max_retries: 3, pause_after: {failures: 2, minutes: 10}}
  - name: quiet
    scorer: regex
    params: {pattern: "^ok$"}
    on_fail: {action: pause, pause_after: {failures: 2, minutes: 10}}
""")
    api.ingest([rec("r1", output="fine")])  # fails only "quiet": 1 of 2, no pause yet
    api.ingest([rec("r2"), rec("o1", workflow="other")])  # a failure of another workflow does not count
    kinds = [(a["run_id"], a["kind"]) for a in api.get("/v1/actions").json()]
    assert sorted(k for _, k in kinds) == ["pause", "retry", "retry"]  # r2: quiet's 2nd failure pauses
    api.ingest([rec("r3")])  # not_blank's 2nd failure in invoice-agent: pause as well as retry
    r3 = api.get("/v1/actions?run_key=r3").json()
    assert sorted(a["kind"] for a in r3) == ["pause", "retry"]
    (pause,) = [a for a in r3 if a["kind"] == "pause"]
    assert "pause_after: not_blank failed 2 steps of workflow invoice-agent within 10 min" in pause["reason"]
    assert "quiet" in pause["reason"]  # one pause of the step, whichever evaluators called for it
    paused_runs = sorted(c["run"] for c in Recorder.calls if c["kind"] == "pause")
    assert paused_runs == ["r2", "r3"]


def test_review_queue_and_assignee(api: Api) -> None:
    api.apply("""
evaluators:
  - {name: not_blank, scorer: not_empty, target: {step: reply}, on_fail: {action: review, queue: triage}}
  - {name: has_total, scorer: regex, params: {pattern: total}, target: {step: extract}, on_fail: {action: review, assignee: ana}}
""")
    api.ingest([record("r1", "reply", output=""), record("r1", "extract", output="nothing")])
    triage = api.get("/v1/reviews?queue=triage").json()
    assert [(r["step_key"], r["queue"], r["assignee"]) for r in triage] == [("reply", "triage", None)]
    assert [r["step_key"] for r in api.get("/v1/reviews?assignee=ana").json()] == ["extract"]
    targets = sorted(a["target"] for a in api.get("/v1/actions?kind=review").json())
    assert targets == ["ana", "queue triage"]


@pytest.mark.parametrize(
    ("on_fail", "field", "message"),
    [
        (
            "{action: review, backoff_seconds: 5}",
            "evaluators.0.on_fail.backoff_seconds",
            "only to on_fail.action retry",
        ),
        ("{action: retry, max_retries: -1}", "evaluators.0.on_fail.max_retries", "greater than or equal to 0"),
        ("{action: retry, pause_after: {failures: 0, minutes: 5}}", "evaluators.0.on_fail.pause_after.failures", ""),
        ("{action: retry, pause_after: {failures: 3}}", "evaluators.0.on_fail.pause_after.minutes", "required"),
        ("{action: webhook, url: 'https://x.example', queue: q}", "evaluators.0.on_fail.queue", "review"),
        ("{action: explode}", "evaluators.0.on_fail.action", ""),
    ],
)
def test_policies_are_validated_at_apply_time(api: Api, on_fail: str, field: str, message: str) -> None:
    r = api.post("/v1/evaluators", content=f"evaluators:\n  - {{name: e, scorer: not_empty, on_fail: {on_fail}}}\n",
                 headers={"content-type": "application/yaml"})  # fmt: skip
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field and message in r.json()["message"]


def test_new_policy_fields_leave_existing_versions_unchanged() -> None:
    # hashes of the definitions before the policy parameters existed: re-applying them changes nothing
    assert EvaluatorSpec.model_validate({"name": "a", "scorer": "not_empty", "on_fail": "review"}).version() == (
        "9e9236e031b7"
    )
    spec = {
        "name": "b",
        "scorer": "regex",
        "params": {"pattern": "x"},
        "on_fail": {"action": "retry", "max_attempts": 3},
    }
    assert EvaluatorSpec.model_validate(spec).version() == "19785a0b99cc"
    spec["on_fail"] = {"action": "retry", "max_attempts": 3, "backoff_seconds": 5}
    assert EvaluatorSpec.model_validate(spec).version() != "19785a0b99cc"


def test_a_later_failure_of_the_step_joins_the_reason_instead_of_acting_again(api: Api, settings: Settings) -> None:
    api.apply("""
evaluators:
  - {name: not_blank, scorer: not_empty, on_fail: review}
  - {name: has_total, scorer: regex, params: {pattern: total}, on_fail: review}
""")
    api.ingest([rec("r1")])
    (action,) = api.get("/v1/actions").json()
    evals = {e["evaluator"]: e for e in api.get("/v1/evals").json()}
    engine = get_engine(settings.resolved_database_url())
    a = table(Action)
    with engine.begin() as conn:  # as if only not_blank had failed the step so far
        conn.execute(sa.update(a).where(a.c.id == action["id"]).values(reason="failed: not_blank"))
    late = evals["has_total"]
    with session_scope(engine) as session:
        project_id = session.connection().execute(sa.select(a.c.project_id).where(a.c.id == action["id"])).scalar_one()
        failed = FailedEval(result_id=late["id"], project_id=project_id, run_id=late["run_id"],
                            step_id=late["step_id"], source="recorder", evaluator="has_total",
                            on_fail=OnFail(action="review"))  # fmt: skip
        assert plan_actions(session=session, failures=[failed]) == []
    (again,) = api.get("/v1/actions").json()
    assert again["id"] == action["id"] and again["reason"] == "failed: not_blank, has_total"
    assert len(api.get("/v1/reviews").json()) == 1
