"""The new rule scorers from ``evalsvc.yaml`` through the real scoring loop: applied over the HTTP
API (bad parameters rejected there, naming them), steps ingested over HTTP, verdicts read back."""

from __future__ import annotations

from typing import Any

from .conftest import Api
from .factories import record

CONFIG = """
evaluators:
  - name: invoice_model
    scorer: pydantic_model
    target: {step: extract}
    params: {model: "scorers.rule.values:ExampleInvoice"}
  - name: total_close
    scorer: numeric_tolerance
    target: {step: extract}
    params: {field: output.total, expected_field: expected.total, abs_tol: 0.01}
  - name: lines_add_up
    scorer: expression
    target: {step: extract}
    params: {expression: "abs(sum(output.lines) - output.total) < 0.01"}
  - name: known_class
    scorer: allowed_labels
    target: {step: classify}
    params: {labels: [invoice, receipt], ignore_case: true}
  - name: no_pii
    scorer: pii
    target: {step: reply}
    params: {region: DE}
    on_fail: review
  - name: not_refused
    scorer: refusal
    target: {step: reply}
  - name: reply_words
    scorer: length
    target: {step: reply}
    params: {unit: words, min: 3, max: 50}
  - name: token_budget
    scorer: max_tokens
    target: {step: reply}
    params: {max_total: 1000}
  - name: weather_called
    scorer: tool_called
    target: {step: plan}
    params:
      tool: get_weather
      arguments_schema: {type: object, required: [city], properties: {city: {type: string}}}
  - name: tool_args
    scorer: tool_arguments
    target: {step: plan}
    params: {tools_field: input.tools}
"""

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}}}]  # fmt: skip


def _call(arguments: str) -> dict[str, Any]:
    return {
        "choices": [
            {
                "message": {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
                    ],
                }
            }
        ]
    }


RECORDS = [
    record("r1", "extract", output={"total": 12.5, "lines": [4, 8.5]}, expected={"total": 12.5}),
    record("r2", "extract", output={"total": 13.0, "lines": [4, 8.5]}, expected={"total": 12.5}),
    record("r3", "extract", output={"lines": [1]}, expected={"total": 12.5}),
    record("r1", "classify", output="Invoice"),
    record("r2", "classify", output="spam"),
    record("r1", "reply", output="Thanks, your invoice is paid.", input_tokens=300, output_tokens=40),
    record(
        "r2", "reply", output="Write to jane.doe@example.com or call 030 901820.", input_tokens=900, output_tokens=200
    ),
    record("r3", "reply", output="I'm sorry, but I can't help with that."),
    record("r1", "plan", input={"tools": TOOLS}, output=_call('{"city": "Paris"}')),
    record("r2", "plan", input={"tools": TOOLS}, output=_call('{"town": "Paris"}')),
    record("r3", "plan", input={"tools": TOOLS}, output={"role": "assistant", "content": "It is sunny."}),
]


def test_new_rule_scorers_through_the_scoring_loop(api: Api) -> None:
    applied = api.apply(CONFIG)
    assert len(applied["changes"]) == 10
    assert api.ingest(RECORDS)["accepted"] == len(RECORDS)
    evals = {(e["evaluator"], e["run_key"]): e for e in api.get("/v1/evals", params={"limit": 1000}).json()}

    def verdict(evaluator: str, run: str) -> bool | None:
        e = evals[(evaluator, run)]
        assert e["status"] == "completed", e
        return bool(e["passed"])

    assert [verdict("invoice_model", r) for r in ("r1", "r2")] == [True, True]
    assert evals[("invoice_model", "r3")]["passed"] is False
    assert "total: Field required" in evals[("invoice_model", "r3")]["explanation"]
    assert [verdict("total_close", r) for r in ("r1", "r2", "r3")] == [True, False, False]
    assert "off by 0.5" in evals[("total_close", "r2")]["explanation"]
    assert [verdict("lines_add_up", r) for r in ("r1", "r2")] == [True, False]
    skipped = evals[("lines_add_up", "r3")]
    assert skipped["status"] == "skipped" and "no 'total'" in skipped["skip_reason"]

    assert verdict("known_class", "r1") is True and evals[("known_class", "r1")]["label"] == "invoice"
    assert verdict("known_class", "r2") is False

    assert [verdict("no_pii", r) for r in ("r1", "r2", "r3")] == [True, False, True]
    pii = evals[("no_pii", "r2")]["explanation"]
    assert "email at 9 (j***@e***.com)" in pii and "phone at" in pii and "jane.doe" not in pii and "901820" not in pii
    assert [verdict("not_refused", r) for r in ("r1", "r2", "r3")] == [True, True, False]
    assert [verdict("reply_words", r) for r in ("r1", "r2", "r3")] == [True, True, True]
    assert [verdict("token_budget", r) for r in ("r1", "r2")] == [True, False]
    assert evals[("token_budget", "r3")]["status"] == "skipped"

    assert [verdict("weather_called", r) for r in ("r1", "r2", "r3")] == [True, False, False]
    assert [verdict("tool_args", r) for r in ("r1", "r2")] == [True, False]
    assert "'city' is a required property" in evals[("tool_args", "r2")]["explanation"]
    assert evals[("tool_args", "r3")]["status"] == "skipped"

    (review,) = api.get("/v1/reviews").json()  # the PII failure went to review, linked to its run
    assert review["evaluator"] == "no_pii" and review["run_key"] == "r2"


def test_an_expression_that_fails_is_an_error_on_its_own_row(api: Api) -> None:
    api.apply("""
evaluators:
  - {name: ratio, scorer: expression, params: {expression: "output.hits / output.total"}, threshold: 0.5}
""")
    api.ingest(
        [
            record("r1", "a", output={"hits": 3, "total": 4}),
            record("r2", "a", output={"hits": 1, "total": 4}),
            record("r3", "a", output={"hits": 1, "total": 0}),
        ]
    )
    evals = {e["run_key"]: e for e in api.get("/v1/evals").json()}
    assert (evals["r1"]["value"], evals["r1"]["passed"]) == (0.75, True)  # a number is a score; the threshold decides
    assert (evals["r2"]["value"], evals["r2"]["passed"]) == (0.25, False)
    assert evals["r3"]["status"] == "error" and "division by zero" in evals["r3"]["error"]


def test_bad_params_are_rejected_when_applied(api: Api) -> None:
    cases = {
        "{name: x, scorer: expression, params: {expression: \"__import__('os')\"}}": (
            "params.expression", "unknown name '__import__'"),
        "{name: x, scorer: pii, params: {region: XX}}": ("params.region", "not a region"),
        "{name: x, scorer: pydantic_model, params: {model: 'no_such_pkg:Model'}}": ("params.model", "cannot import"),
        "{name: x, scorer: length, params: {min: 3, max: 1}}": ("params", "min (3) is greater than max (1)"),
        "{name: x, scorer: tool_called, params: {tool: t, field: outptu}}": ("params.field", "not a step field"),
    }  # fmt: skip
    for block, (field, fragment) in cases.items():
        r = api.post(
            "/v1/evaluators", content=f"evaluators:\n  - {block}\n", headers={"content-type": "application/yaml"}
        )
        assert r.status_code == 422, (block, r.text)
        body = r.json()
        assert body["field"].endswith(field) and fragment in body["message"], body
    assert api.get("/v1/evaluators").json() == []  # nothing was applied
