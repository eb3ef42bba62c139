"""Evaluators as code: apply, version, list; bad files name the field."""

from __future__ import annotations

import pytest

from .conftest import Api
from .factories import record

V1 = """
evaluators:
  - name: total_is_number
    scorer: json_schema
    target: {step: "extract*"}
    params: {schema: {type: object, required: [total], properties: {total: {type: number}}}}
  - name: short_reply
    scorer: regex
    target: {step: reply}
    params: {pattern: "^.{0,20}$"}
"""


def _changes(answer: dict[str, list[dict[str, str]]]) -> dict[str, str]:
    return {c["name"]: c["change"] for c in answer["changes"]}


def test_apply_versions_and_lists(api: Api) -> None:
    assert _changes(api.apply(V1)) == {"total_is_number": "created", "short_reply": "created"}
    assert _changes(api.apply(V1)) == {"total_is_number": "unchanged", "short_reply": "unchanged"}
    listed = api.get("/v1/evaluators").json()
    assert sorted(e["name"] for e in listed) == ["short_reply", "total_is_number"]
    v1 = {e["name"]: e["version"] for e in listed}

    api.ingest([record("r1", "reply", output="a short answer")])
    (old,) = api.get("/v1/evals?evaluator=short_reply").json()
    assert old["evaluator_version"] == v1["short_reply"] and old["passed"] is True

    v2 = V1.replace("0,20", "0,5").replace(
        "  - name: total_is_number", "  - name: total_is_number\n    description: same"
    )
    changes = _changes(api.apply(v2))
    assert changes == {"short_reply": "updated", "total_is_number": "unchanged"}  # a description is no new version
    listed = {e["name"]: e["version"] for e in api.get("/v1/evaluators").json()}
    assert listed["short_reply"] != v1["short_reply"] and listed["total_is_number"] == v1["total_is_number"]
    all_versions = api.get("/v1/evaluators?include_inactive=true").json()
    assert len([e for e in all_versions if e["name"] == "short_reply"]) == 2

    api.ingest([record("r2", "reply", output="a short answer")])
    evals = api.get("/v1/evals?evaluator=short_reply").json()
    by_run = {e["run_key"]: e for e in evals}
    assert (
        by_run["r1"]["evaluator_version"] == v1["short_reply"] and by_run["r1"]["passed"] is True
    )  # old keeps its version
    assert by_run["r2"]["evaluator_version"] == listed["short_reply"] and by_run["r2"]["passed"] is False

    only_one = "evaluators:\n" + V1.split("  - name: short_reply")[0].split("evaluators:\n")[1]
    assert _changes(api.apply(only_one)) == {"total_is_number": "unchanged", "short_reply": "deactivated"}
    assert [e["name"] for e in api.get("/v1/evaluators").json()] == ["total_is_number"]


@pytest.mark.parametrize(
    ("text", "field", "fragment"),
    [
        ("evaluators: [", "evaluators", "not valid YAML"),
        ("rules: []", "evaluators", "under the key 'evaluators'"),
        ("evaluators:\n  - {scorer: regex, params: {pattern: a}}", "evaluators.0.name", "Field required"),
        ("evaluators:\n  - {name: a, scorer: nope}", "evaluators.0.scorer", "unknown scorer 'nope'"),
        (
            "evaluators:\n  - {name: a, scorer: regex, params: {pattern: '('}}",
            "evaluators.0.params.pattern",
            "not a valid regular expression",
        ),
        (
            "evaluators:\n  - {name: a, scorer: json_schema, params: {schema: {type: 7}}}",
            "evaluators.0.params.schema",
            "not a valid JSON Schema",
        ),
        (
            "evaluators:\n  - {name: a, scorer: regex, params: {pattern: a, colour: red}}",
            "evaluators.0.params.colour",
            "Extra inputs",
        ),
        (
            "evaluators:\n  - {name: a, scorer: not_empty}\n  - {name: a, scorer: not_empty}",
            "evaluators.1.name",
            "duplicate",
        ),
        (
            "evaluators:\n  - {name: a, scorer: not_empty, on_fail: explode}",
            "evaluators.0.on_fail.action",
            "Input should be",
        ),
        ("evaluators:\n  - {name: a, scorer: not_empty, on_fail: webhook}", "evaluators.0.on_fail", "url is required"),
        (
            "evaluators:\n  - {name: a, scorer: not_empty, sample: {rate: 2}}",
            "evaluators.0.sample.rate",
            "less than or equal to 1",
        ),
        (
            "evaluators:\n  - {name: a, scorer: not_empty, budget: {calls_per_day: 5, fallback: b}}",
            "evaluators.0.budget.fallback",
            "'b' is not defined",
        ),
    ],
)
def test_bad_evaluator_files_name_the_field(api: Api, text: str, field: str, fragment: str) -> None:
    r = api.post("/v1/evaluators", content=text, headers={"content-type": "application/yaml"})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field and fragment in r.json()["message"], r.json()
    assert api.get("/v1/evaluators").json() == []  # nothing half-applied


def test_json_body_is_accepted(api: Api) -> None:
    r = api.post("/v1/evaluators", json={"evaluators": [{"name": "a", "scorer": "not_empty"}]})
    assert r.status_code == 200 and _changes(r.json()) == {"a": "created"}


def test_sampling_is_deterministic_and_shared(api: Api) -> None:
    api.apply("""
evaluators:
  - {name: a, scorer: not_empty, sample: {rate: 0.3}}
  - {name: b, scorer: regex, params: {pattern: x}, sample: {rate: 0.3}}
  - {name: c, scorer: not_empty, sample: {rate: 0.0}}
""")
    api.ingest([record(f"r{i}", "s") for i in range(200)])
    evals = api.get("/v1/evals?limit=1000").json()
    sampled = {
        name: {e["run_key"] for e in evals if e["evaluator"] == name and e["status"] != "skipped"} for name in "abc"
    }
    assert 30 < len(sampled["a"]) < 90  # about 60 of 200
    assert sampled["a"] == sampled["b"]  # same rate, same steps
    assert sampled["c"] == set()
    skipped = [e for e in evals if e["status"] == "skipped"]
    assert skipped and all(e["skip_reason"] == "not sampled" for e in skipped)
    # re-ingesting repeats the decision: no new or changed results
    api.ingest([record(f"r{i}", "s", output={"total": 2}) for i in range(200)])
    again = {(e["evaluator"], e["run_key"]) for e in api.get("/v1/evals?limit=1000").json() if e["status"] != "skipped"}
    assert again == {(n, r) for n, runs in sampled.items() for r in runs}
