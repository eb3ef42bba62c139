"""Rule scorers, table-driven: (scorer, params, step fields) -> expected verdict."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from evalsvc.errors import InvalidInput, UnknownScorer
from evalsvc.schemas import StepPublic
from scorers import available, create

SCHEMA = {"type": "object", "required": ["total"], "properties": {"total": {"type": "number"}}}


def step(**fields: Any) -> StepPublic:
    base: dict[str, Any] = {"id": 1, "run_id": 1, "source": "json", "run_key": "r", "step_key": "s", "attempt": 1,
                            "name": "s", "kind": "llm", "status": "completed"}  # fmt: skip
    return StepPublic(**(base | fields))


# (scorer, params, step fields, passed, explanation fragment); passed None = skipped
CASES: list[tuple[str, dict[str, Any], dict[str, Any], bool | None, str]] = [
    ("json_schema", {"schema": SCHEMA}, {"output": {"total": 3.5}}, True, ""),
    ("json_schema", {"schema": SCHEMA}, {"output": '{"total": 3.5}'}, True, ""),
    ("json_schema", {"schema": SCHEMA}, {"output": {"total": "3.5"}}, False, "output at total: '3.5' is not of type"),
    ("json_schema", {"schema": SCHEMA}, {"output": "Sure! {"}, False, "output is not JSON"),
    ("json_schema", {"schema": SCHEMA}, {"output": None}, False, "(root)"),
    ("json_schema", {"schema": {"type": "string"}, "field": "input.q"}, {"input": {"q": "hi"}}, True, ""),
    ("regex", {"pattern": r"INV-\d+"}, {"output": "ref INV-42"}, True, ""),
    ("regex", {"pattern": r"INV-\d+"}, {"output": "no ref"}, False, "does not match"),
    ("regex", {"pattern": r"[\w.]+@[\w.]+", "must_match": False}, {"output": "mail bob@x.io"}, False, "'bob@x.io'"),
    ("regex", {"pattern": r"[\w.]+@[\w.]+", "must_match": False}, {"output": "no address"}, True, ""),
    ("regex", {"pattern": "todo", "ignore_case": True}, {"output": "TODO: fix"}, True, ""),
    ("regex", {"pattern": '"total":3'}, {"output": {"total": 3}}, True, ""),  # objects as compact JSON
    ("not_empty", {}, {"output": "x"}, True, ""),
    ("not_empty", {}, {"output": "  \n"}, False, "output is empty"),
    ("not_empty", {}, {"output": []}, False, "empty"),
    ("not_empty", {}, {"output": {}}, False, "empty"),
    ("not_empty", {}, {"output": None}, False, "empty"),
    ("not_empty", {}, {"output": 0}, True, ""),
    ("not_empty", {"field": "output.items"}, {"output": {"items": [1]}}, True, ""),
    ("max_latency_ms", {"max_ms": 1000}, {"latency_ms": 999.0}, True, ""),
    ("max_latency_ms", {"max_ms": 1000}, {"latency_ms": 1000.5}, False, "over 1000 ms"),
    ("max_latency_ms", {"max_ms": 1000}, {}, None, "no latency recorded"),
    ("max_cost_usd", {"max_usd": 0.01}, {"cost_usd": 0.004}, True, ""),
    ("max_cost_usd", {"max_usd": 0.01}, {"cost_usd": 0.02}, False, "over $0.010000"),
    ("max_cost_usd", {"max_usd": 0.01}, {}, None, "no cost recorded"),
    ("equals", {}, {"output": "invoice", "expected": "invoice"}, True, ""),
    ("equals", {}, {"output": "spam", "expected": "invoice"}, False, "expected 'invoice'"),
    ("equals", {"ignore_case": True}, {"output": " Invoice ", "expected": "invoice"}, True, ""),
    ("equals", {}, {"output": {"a": 1}, "expected": {"a": 1}}, True, ""),
    ("equals", {"value": 3, "field": "output.total"}, {"output": {"total": 3}}, True, ""),
    ("equals", {"expected_field": "expected.label"}, {"output": "a", "expected": {"label": "a"}}, True, ""),
    ("equals", {}, {"output": "a"}, None, "no expected value"),
    ("contains", {"value": "thank you", "ignore_case": True}, {"output": "Thank you for the invoice"}, True, ""),
    ("contains", {}, {"output": "total 12 EUR", "expected": "EUR"}, True, ""),
    ("contains", {}, {"output": "total 12", "expected": "EUR"}, False, "does not contain 'EUR'"),
]


@pytest.mark.parametrize(("name", "params", "fields", "passed", "fragment"), CASES)
def test_rule_scorers(name: str, params: dict[str, Any], fields: dict[str, Any], passed: bool | None,
                      fragment: str) -> None:  # fmt: skip
    score = asyncio.run(create(name, params).score(step(**fields)))
    assert score.passed is passed, score
    if passed is None:
        assert score.value is None
    else:
        assert score.value == (1.0 if passed else 0.0)
    assert fragment in (score.explanation or ""), score.explanation


@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("json_schema", {}, "params.schema"),
        ("json_schema", {"schema": {"type": "thing"}}, "params.schema"),
        ("regex", {"pattern": "(unclosed"}, "params.pattern"),
        ("regex", {"pattern": "a", "must": True}, "params.must"),
        ("max_latency_ms", {"max_ms": -1}, "params.max_ms"),
        ("equals", {"value": 1, "expected_field": "expected"}, "params"),
    ],
)
def test_bad_params_name_the_field(name: str, params: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        create(name, params)
    assert info.value.field == field


def test_registry_lists_builtins_and_rejects_unknown() -> None:
    assert {"json_schema", "regex", "not_empty", "max_latency_ms", "max_cost_usd", "equals", "contains"} <= set(
        available()
    )
    with pytest.raises(UnknownScorer) as info:
        create("nope", {})
    assert "json_schema" in info.value.message


def test_field_paths_are_checked_when_applied() -> None:
    with pytest.raises(InvalidInput) as info:
        create("regex", {"pattern": "a", "field": "outptu.total"})
    assert info.value.field == "params.field" and "'outptu' is not a step field" in info.value.message
    assert "Value error" not in info.value.message
    with pytest.raises(InvalidInput):
        create("equals", {"expected_field": "nope"})
