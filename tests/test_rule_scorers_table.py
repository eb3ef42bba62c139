"""The rule scorers of issue 4, table-driven: (scorer, params, step fields) -> verdict; and bad
parameters, rejected when the evaluator is applied, naming the parameter."""

from __future__ import annotations

import asyncio
import doctest
import importlib
from typing import Any

import pytest

from evalsvc.errors import InvalidInput, UnrecoverableError
from evalsvc.schemas import Score, StepPublic
from scorers import create

OPENAI_CALL = {
    "choices": [
        {"message": {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        ]}},
    ]
}  # fmt: skip
GENAI_CALL = [{"role": "assistant", "parts": [{"type": "tool_call", "name": "get_weather", "arguments": {"city": 3}}]}]
WEATHER = {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}]


def step(**fields: Any) -> StepPublic:
    base: dict[str, Any] = {
        "id": 1,
        "run_id": 1,
        "source": "json",
        "run_key": "r",
        "step_key": "s",
        "attempt": 1,
        "name": "s",
        "kind": "llm",
        "status": "completed",
    }
    return StepPublic(**(base | fields))


def run(name: str, params: dict[str, Any], fields: dict[str, Any]) -> Score:
    return asyncio.run(create(name, params).score(step(**fields)))


M = "scorers.rule.values:ExampleInvoice"

# (scorer, params, step fields, passed, explanation fragment); passed None = skipped
CASES: list[tuple[str, dict[str, Any], dict[str, Any], bool | None, str]] = [
    # pydantic_model
    ("pydantic_model", {"model": M}, {"output": {"total": 3, "currency": "USD"}}, True, ""),
    ("pydantic_model", {"model": M}, {"output": '{"total": "12.5"}'}, True, ""),  # lax: "12.5" -> 12.5
    ("pydantic_model", {"model": M, "strict": True}, {"output": {"total": "12.5"}}, False, "output at total"),
    ("pydantic_model", {"model": M}, {"output": {"currency": "EUR"}}, False, "output at total: Field required"),
    ("pydantic_model", {"model": M}, {"output": "Sure! {"}, False, "Invalid JSON"),
    ("pydantic_model", {"model": M}, {"output": None}, False, "(root)"),
    # numeric_tolerance
    ("numeric_tolerance", {"value": 12.5, "abs_tol": 0.01}, {"output": 12.505}, True, ""),
    ("numeric_tolerance", {"value": 12.5, "abs_tol": 0.01}, {"output": 12.6}, False, "expected 12.5 ± 0.01"),
    ("numeric_tolerance", {"value": 100, "rel_tol": 0.05}, {"output": "104.9"}, True, ""),
    ("numeric_tolerance", {"value": 100, "rel_tol": 0.05}, {"output": 94}, False, "off by 6"),
    ("numeric_tolerance", {"value": 3}, {"output": 3}, True, ""),
    (
        "numeric_tolerance",
        {"field": "output.total", "expected_field": "expected.total", "abs_tol": 0.05},
        {"output": {"total": 12.49}, "expected": {"total": 12.5}},
        True,
        "",
    ),
    (
        "numeric_tolerance",
        {"field": "output.total", "expected_field": "expected.total"},
        {"output": {"total": 1}, "expected": {}},
        None,
        "expected.total is missing",
    ),
    ("numeric_tolerance", {"field": "output.total", "value": 1}, {"output": {}}, False, "output.total is missing"),
    ("numeric_tolerance", {"value": 1}, {"output": "about one"}, False, "not a number"),
    ("numeric_tolerance", {"value": 1}, {"output": True}, False, "not a number"),
    ("numeric_tolerance", {}, {"output": 1}, None, "no expected value"),
    # length
    ("length", {"max": 5}, {"output": "hello"}, True, ""),
    ("length", {"max": 4}, {"output": "hello"}, False, "5 chars, more than 4"),
    ("length", {"unit": "words", "min": 3}, {"output": "two words"}, False, "2 words, fewer than 3"),
    ("length", {"unit": "words", "min": 1, "max": 3}, {"output": " one  two\nthree "}, True, ""),
    ("length", {"unit": "items", "min": 1, "field": "output.lines"}, {"output": {"lines": []}}, False, "0 items"),
    ("length", {"unit": "items", "max": 2}, {"output": [1, 2]}, True, ""),
    ("length", {"unit": "items", "max": 2}, {"output": "a, b"}, False, "not a list"),
    ("length", {"min": 1}, {"output": None}, False, "0 chars"),
    # allowed_labels
    ("allowed_labels", {"labels": ["invoice", "receipt"]}, {"output": "invoice"}, True, ""),
    ("allowed_labels", {"labels": ["invoice", "receipt"]}, {"output": " invoice\n"}, True, ""),
    ("allowed_labels", {"labels": ["invoice", "receipt"], "strip": False}, {"output": " invoice"}, False, "not one of"),
    ("allowed_labels", {"labels": ["invoice", "receipt"]}, {"output": "Invoice"}, False, "'Invoice', not one of"),
    ("allowed_labels", {"labels": ["invoice"], "ignore_case": True}, {"output": "INVOICE"}, True, ""),
    ("allowed_labels", {"labels": ["a"], "field": "output.label"}, {"output": {"label": 1}}, False, "int, not a label"),
    ("allowed_labels", {"labels": ["a"]}, {"output": None}, False, "output is missing"),
    ("allowed_labels", {"labels": ["a"], "skip_missing": True}, {"output": None}, None, "output is missing"),
    # max_tokens
    ("max_tokens", {"max_total": 100}, {"input_tokens": 60, "output_tokens": 40}, True, ""),
    ("max_tokens", {"max_total": 100}, {"input_tokens": 60, "output_tokens": 41}, False, "total tokens 101 > 100"),
    (
        "max_tokens",
        {"max_input": 10, "max_output": 10},
        {"input_tokens": 11, "output_tokens": 12},
        False,
        "input tokens 11 > 10; output tokens 12 > 10",
    ),
    ("max_tokens", {"max_output": 10}, {"input_tokens": 500, "output_tokens": 10}, True, ""),
    ("max_tokens", {"max_output": 10}, {"input_tokens": 5}, None, "no output token count"),
    ("max_tokens", {"max_total": 10}, {"output_tokens": 5}, None, "no total token count"),
    # refusal
    ("refusal", {}, {"output": "The total is 12.50 EUR."}, True, ""),
    ("refusal", {}, {"output": "I’m sorry, but I can’t help with that request."}, False, "is a refusal"),
    ("refusal", {}, {"output": "I  cannot\nassist with that."}, False, "'i cannot assist with'"),
    ("refusal", {}, {"output": "As an AI language model, I have no opinions."}, False, "as an ai language model"),
    ("refusal", {}, {"output": "I can't stress enough how late this invoice is."}, True, ""),  # not a refusal
    ("refusal", {}, {"output": "Bi can't help withdrawing"}, True, ""),  # word boundaries on both ends
    (
        "refusal",
        {"extra_phrases": ["contact support"]},
        {"output": "Please contact support."},
        False,
        "contact support",
    ),
    ("refusal", {"extra_phrases": ["contact support"]}, {"output": "Contact supporters"}, True, ""),
    ("refusal", {}, {"output": None}, True, ""),  # nothing said is not a refusal
    ("refusal", {"expect_refusal": True}, {"output": None}, False, "a refusal was expected"),
    ("refusal", {"expect_refusal": True}, {"output": "I cannot help with that."}, True, ""),
    ("refusal", {"expect_refusal": True}, {"output": "Here is how to do it."}, False, "a refusal was expected"),
    ("refusal", {"field": "output.text"}, {"output": {"text": "I must decline."}}, False, "'i must decline'"),
    # pii
    ("pii", {}, {"output": "Thanks, your invoice INV-42 is paid."}, True, ""),
    ("pii", {}, {"output": "Write to jane.doe@example.com"}, False, "email at 9 (j***@e***.com)"),
    ("pii", {}, {"output": "Card 4111 1111 1111 1111 on file"}, False, "card at 5 (************1111)"),
    ("pii", {}, {"output": "Card 4111 1111 1111 1112 on file"}, True, ""),  # fails the Luhn check
    ("pii", {}, {"output": "IBAN DE89 3704 0044 0532 0130 00"}, False, "iban at 5 (DE****************3000)"),
    ("pii", {}, {"output": "IBAN DE88 3704 0044 0532 0130 00"}, True, ""),  # bad IBAN checksum
    ("pii", {}, {"output": "pay to GB82 WEST 1234 5698 7654 32 EUR 40"}, False, "iban at 7 (GB****************5432)"),
    ("pii", {}, {"output": "Call (415) 555-2671 today"}, False, "phone at 5"),
    ("pii", {"region": "DE"}, {"output": "Ruf an: 030 901820"}, False, "phone at 8 (*******20)"),
    ("pii", {"region": "US"}, {"output": "Ruf an: 030 901820"}, True, ""),  # not a US number
    ("pii", {"kinds": ["card"]}, {"output": "jane@example.com"}, True, ""),
    ("pii", {}, {"output": {"to": "bob@example.org"}}, False, "email"),  # objects as JSON text
    ("pii", {}, {"output": None}, True, ""),
    # tool_called
    ("tool_called", {"tool": "get_weather"}, {"output": OPENAI_CALL}, True, ""),
    (
        "tool_called",
        {"tool": "get_time"},
        {"output": OPENAI_CALL},
        False,
        "'get_time' was not called in output (calls: 'get_weather')",
    ),
    ("tool_called", {"tool": "get_weather"}, {"output": "The weather is fine."}, False, "no tool calls"),
    ("tool_called", {"tool": "get_weather"}, {"output": None}, False, "no tool calls"),
    ("tool_called", {"tool": "get_weather", "arguments_schema": WEATHER}, {"output": OPENAI_CALL}, True, ""),
    (
        "tool_called",
        {"tool": "get_weather", "arguments_schema": WEATHER},
        {"output": GENAI_CALL},
        False,
        "call 1: arguments at city: 3 is not of type 'string'",
    ),
    ("tool_called", {"tool": "get_weather", "expect_called": False}, {"output": OPENAI_CALL}, False, "was called"),
    ("tool_called", {"tool": "delete_all", "expect_called": False}, {"output": OPENAI_CALL}, True, ""),
    # tool_arguments
    ("tool_arguments", {"tools": TOOLS}, {"output": OPENAI_CALL}, True, ""),
    ("tool_arguments", {"tools": TOOLS}, {"output": GENAI_CALL}, False, "call 1 of 'get_weather': arguments at city"),
    (
        "tool_arguments",
        {"tools": TOOLS},
        {"output": [{"type": "tool_use", "name": "rm", "input": {}}]},
        False,
        "'rm', which is not a defined tool",
    ),
    (
        "tool_arguments",
        {"tools": TOOLS, "unknown_tools": "ignore"},
        {"output": [{"type": "tool_use", "name": "rm"}]},
        True,
        "",
    ),
    ("tool_arguments", {"tools": TOOLS}, {"output": "no calls here"}, None, "no tool calls in output"),
    (
        "tool_arguments",
        {"tools_field": "input.tools"},
        {"input": {"tools": TOOLS}, "output": GENAI_CALL},
        False,
        "is not of type 'string'",
    ),
    (
        "tool_arguments",
        {"tools_field": "input.tools"},
        {"input": {}, "output": OPENAI_CALL},
        None,
        "no tool definitions at input.tools",
    ),
    # expression
    ("expression", {"expression": "output.total > 10"}, {"output": {"total": 12.5}}, True, ""),
    ("expression", {"expression": "output.total > 20"}, {"output": {"total": 12.5}}, False, "expression is false"),
    (
        "expression",
        {"expression": "output['total'] == 12.5 and status == 'completed'"},
        {"output": '{"total": 12.5}'},
        True,
        "",
    ),
    (
        "expression",
        {"expression": "output.total > 1"},
        {"output": {"lines": []}},
        None,
        "lacks what the expression reads: no 'total'",
    ),
    ("expression", {"expression": "latency_ms < 500"}, {}, None, "missing value"),
    ("expression", {"expression": "None"}, {}, None, "returned None"),
    (
        "expression",
        {"expression": "len([l for l in output.lines if l > 0]) == len(output.lines)"},
        {"output": {"lines": [1, 2, -3]}},
        False,
        "expression is false",
    ),
    ("expression", {"expression": "output.lower().startswith('dear')"}, {"output": "Dear ACME,"}, True, ""),
    (
        "expression",
        {"expression": "max(output) - min(output) <= 3 and sorted(output)[0] == 1"},
        {"output": [3, 1, 4]},
        True,
        "",
    ),
    (
        "expression",
        {"expression": "min(input_tokens, output_tokens) > 5 and sum(x * 2 for x in output) == 16"},
        {"input_tokens": 7, "output_tokens": 9, "output": [3, 1, 4]},
        True,
        "",
    ),
    ("expression", {"expression": "str(output.total) + ' EUR' == '12.5 EUR'"}, {"output": {"total": 12.5}}, True, ""),
    (
        "expression",
        {"expression": "attributes.get('tier', 'free') == 'pro'"},
        {"attributes": {"tier": "pro"}},
        True,
        "",
    ),
]


@pytest.mark.parametrize(("name", "params", "fields", "passed", "fragment"), CASES)
def test_rule_scorers(
    name: str, params: dict[str, Any], fields: dict[str, Any], passed: bool | None, fragment: str
) -> None:
    score = run(name, params, fields)
    assert score.passed is passed, score
    if passed is None:
        assert score.value is None
    else:
        assert score.value == (1.0 if passed else 0.0)
    assert fragment in (score.explanation or ""), score.explanation


def test_expression_numbers_are_scores_and_the_threshold_decides() -> None:
    score = run("expression", {"expression": "min(1, output_tokens / 100)"}, {"output_tokens": 25})
    assert score.value == 0.25 and score.passed is None  # the pipeline compares with the evaluator's threshold


@pytest.mark.parametrize(
    ("expression", "fields", "message"),
    [
        ("output.total", {"output": {"total": 12.5}}, "must return true/false, a number in [0, 1]"),
        ("output.total / 0", {"output": {"total": 1}}, "division by zero"),
        ("2 ** 100000", {}, "too large"),
        ("'%s' % output", {"output": "x"}, "%-formatting is not available"),
        ("output.ljust(100000000) == ''", {"output": "x"}, "'.ljust' is not available on a str"),
        ("len(output * 100000) > 0", {"output": "xx"}, "that long"),
        # one C call that the deadline cannot interrupt must stay cheap: no list repetition, no str() or
        # sorting of nested containers, no summing of lists
        ("len([[1] * 10000] * 10000) > 0", {}, "repeating a list with * is not available"),
        ("len(str([output for x in output])) > 0", {"output": list(range(100))}, "str() takes a number or text"),
        ("len(sum([[1], [2]], [])) == 2", {}, "sum() adds numbers only"),
        ("len(sorted([output for x in output])) > 0", {"output": [1, 2]}, "sorted() takes numbers or text"),
        ("min([output, output]) == output", {"output": [1, 2]}, "min() takes numbers or text"),
    ],
)
def test_expression_errors_are_errors_not_verdicts(expression: str, fields: dict[str, Any], message: str) -> None:
    with pytest.raises(UnrecoverableError) as info:
        run("expression", {"expression": expression}, fields)
    assert message in info.value.message


def test_expression_is_stopped_at_its_time_limit() -> None:
    fields = {"output": [f"word {i} " * 20 for i in range(1000)]}
    expression = "sum([len(s.split()) + len(s.strip()) + s.count('w') for s in output]) > 0"
    assert run("expression", {"expression": expression, "timeout_ms": 5000}, fields).passed is True
    with pytest.raises(UnrecoverableError) as info:
        run("expression", {"expression": expression, "timeout_ms": 1}, fields)
    assert "ran longer than 1 ms" in info.value.message


M_BAD = "scorers.rule.values:NoSuchModel"


@pytest.mark.parametrize(
    ("name", "params", "field", "fragment"),
    [
        ("pydantic_model", {}, "params.model", "Field required"),
        ("pydantic_model", {"model": "scorers.rule.values.ExampleInvoice"}, "params.model", "package.module:Class"),
        ("pydantic_model", {"model": "no_such_pkg.models:Invoice"}, "params.model", "cannot import module"),
        ("pydantic_model", {"model": M_BAD}, "params.model", "has no 'NoSuchModel'"),
        ("pydantic_model", {"model": "scorers.rule.values:import_model"}, "params.model", "not a pydantic BaseModel"),
        ("pydantic_model", {"model": M, "field": "outptu"}, "params.field", "not a step field"),
        ("numeric_tolerance", {"value": 1, "abs_tol": -1}, "params.abs_tol", "greater than or equal to 0"),
        ("numeric_tolerance", {"value": 1, "expected_field": "expected"}, "params", "not both"),
        ("numeric_tolerance", {"expected_field": "expectd.total"}, "params.expected_field", "not a step field"),
        ("length", {}, "params", "give min, max or both"),
        ("length", {"min": 5, "max": 2}, "params", "min (5) is greater than max (2)"),
        ("length", {"max": 2, "unit": "lines"}, "params.unit", "'chars', 'words' or 'items'"),
        ("allowed_labels", {"labels": []}, "params.labels", "at least 1 item"),
        ("allowed_labels", {"labels": ["a", " "]}, "params.labels", "must not be blank"),
        ("max_tokens", {}, "params", "at least one of max_input, max_output, max_total"),
        ("max_tokens", {"max_total": -1}, "params.max_total", "greater than or equal to 0"),
        ("refusal", {"extra_phrases": [""]}, "params.extra_phrases", "must not be blank"),
        ("refusal", {"builtin_phrases": False}, "params", "no phrases"),
        ("pii", {"region": "XX"}, "params.region", "not a region phonenumbers knows"),
        ("pii", {"kinds": ["ssn"]}, "params.kinds.0", "'email', 'phone', 'card' or 'iban'"),
        ("pii", {"kinds": []}, "params.kinds", "at least 1 item"),
        ("tool_called", {}, "params.tool", "Field required"),
        (
            "tool_called",
            {"tool": "t", "arguments_schema": {"type": "thing"}},
            "params.arguments_schema",
            "not a valid JSON Schema",
        ),
        ("tool_arguments", {}, "params", "give either tools or tools_field"),
        ("tool_arguments", {"tools": [{"parameters": {}}]}, "params", "needs a name"),
        (
            "tool_arguments",
            {"tools": [{"name": "t", "parameters": {"type": 1}}]},
            "params",
            "tool 't' is not a valid JSON Schema",
        ),
        ("expression", {}, "params.expression", "Field required"),
        ("expression", {"expression": "  "}, "params.expression", "empty"),
        ("expression", {"expression": "output +"}, "params.expression", "not a valid expression"),
        (
            "expression",
            {"expression": "__import__('os').system('x')"},
            "params.expression",
            "unknown name '__import__'",
        ),
        ("expression", {"expression": "open('/etc/passwd')"}, "params.expression", "unknown name 'open'"),
        ("expression", {"expression": "output.__class__"}, "params.expression", "'__class__' is not allowed"),
        ("expression", {"expression": "(lambda: 1)()"}, "params.expression", "Lambda is not allowed"),
        ("expression", {"expression": "f'{output}'"}, "params.expression", "JoinedStr is not allowed"),
        ("expression", {"expression": "(x := 1)"}, "params.expression", "NamedExpr is not allowed"),
        ("expression", {"expression": "import os"}, "params.expression", "not a valid expression"),
        ("expression", {"expression": "1; 2"}, "params.expression", "not a valid expression"),
        ("expression", {"expression": "output.format()"}, "params.expression", "'format' is not allowed"),
        ("expression", {"expression": "1 + " * 300 + "1"}, "params.expression", "at most 1000 are allowed"),
        ("expression", {"expression": "true", "timeout_ms": 0}, "params.timeout_ms", "greater than 0"),
    ],
)
def test_bad_params_are_rejected_naming_the_param(name: str, params: dict[str, Any], field: str, fragment: str) -> None:
    with pytest.raises(InvalidInput) as info:
        create(name, params)
    assert info.value.field == field, info.value.message
    assert fragment in info.value.message


@pytest.mark.parametrize("module", ["common", "checks", "values", "text", "refusal", "pii", "tools", "expression"])
def test_module_docstring_examples_run(module: str) -> None:
    mod = importlib.import_module(f"scorers.rule.{module}")
    failed, attempted = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert attempted > 0 and failed == 0


def test_an_expected_value_that_is_not_a_number_is_an_error() -> None:
    with pytest.raises(UnrecoverableError) as info:
        run("numeric_tolerance", {"expected_field": "expected.total"}, {"output": 1, "expected": {"total": "n/a"}})
    assert info.value.field == "expected.total" and "'n/a' is not a number" in info.value.message


def test_a_tool_definition_in_the_step_with_a_bad_schema_is_an_error() -> None:
    tools = [{"name": "get_weather", "parameters": {"type": "thing"}}]
    with pytest.raises(UnrecoverableError) as info:
        run("tool_arguments", {"tools_field": "input.tools"}, {"input": {"tools": tools}, "output": GENAI_CALL})
    assert "definition of tool 'get_weather' has an invalid schema" in info.value.message


def test_pii_findings_are_masked_in_metadata_too() -> None:
    text = "IBAN DE89 3704 0044 0532 0130 00, card 4111-1111-1111-1111, mail jane.doe@example.com"
    score = run("pii", {}, {"output": text})
    assert score.metadata["counts"] == {"iban": 1, "card": 1, "email": 1}
    assert [(f["kind"], text[f["start"] : f["end"]][:4]) for f in score.metadata["found"]] == [
        ("iban", "DE89"), ("card", "4111"), ("email", "jane")]  # fmt: skip
    shown = repr(score.metadata) + (score.explanation or "")
    assert "0532 0130" not in shown and "1111-1111" not in shown and "jane.doe" not in shown
