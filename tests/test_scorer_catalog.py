"""docs/scorers.md is generated from the registry, is current, and every example in it validates."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from evalsvc.schemas import EvaluatorSpec, Score, StepPublic
from scorers import BaseScorer, create
from scorers.catalog import CatalogError, builtin_scorers, example_of, main, params_of, scorers_markdown

ROOT = Path(__file__).parents[1]
PAGE = ROOT / "docs" / "scorers.md"
YAML_FENCE = re.compile(r"^```yaml\n(.*?)^```", re.MULTILINE | re.DOTALL)
PLACEHOLDER = re.compile(r"<[a-z][^<>\n]*>")


def test_scorers_page_is_generated() -> None:
    assert PAGE.read_text(encoding="utf-8") == scorers_markdown(), "docs/scorers.md is stale: run `make docs`"


def test_every_builtin_scorer_is_documented_with_kind_version_and_parameters() -> None:
    page = scorers_markdown()
    for name, cls in builtin_scorers().items():
        section = page.split(f"### `{name}`\n", 1)[1].split("\n### ", 1)[0]
        assert f"kind: {cls.kind} · version: {cls.version}" in section
        for param in params_of(cls):
            assert f"| `{param.name}` |" in section, (name, param.name)


def test_every_rule_scorer_has_an_example_that_validates() -> None:
    rules = {name: cls for name, cls in builtin_scorers().items() if cls.kind == "rule"}
    assert {"json_schema", "pii", "expression", "tool_called", "refusal", "numeric_tolerance"} <= set(rules)
    for name, cls in rules.items():
        example = example_of(name, cls)
        assert example is not None, f"rule scorer {name!r} gives no example"
        assert example["scorer"] == name


def test_the_page_examples_are_valid_evalsvc_yaml() -> None:
    blocks = YAML_FENCE.findall(scorers_markdown())
    examples = [b for b in blocks if not PLACEHOLDER.search(b)]  # skeletons (no example given) hold <placeholders>
    assert len(examples) >= len([c for c in builtin_scorers().values() if c.kind == "rule"])
    for block in examples:
        (evaluator,) = yaml.safe_load(block)["evaluators"]
        spec = EvaluatorSpec.model_validate(evaluator)
        create(spec.scorer, spec.params)


def test_parameters_are_read_from_the_pydantic_fields() -> None:
    by_name = {p.name: p for p in params_of(builtin_scorers()["json_schema"])}
    assert by_name["schema"].required and by_name["schema"].type == "object"  # the alias, not `json_schema`
    assert by_name["field"].type == "step path" and by_name["field"].default == '`"output"`'
    length = {p.name: p for p in params_of(builtin_scorers()["length"])}
    assert length["unit"].type == '`"chars"` | `"words"` | `"items"`'
    assert length["min"].type == "integer | null (≥ 0)" and length["min"].default == "`null`"
    assert "Shortest length" in length["min"].description


class NoExample(BaseScorer):
    """A third-party scorer that documents no example."""

    name: ClassVar[str] = "test_no_example"
    threshold_ms: float

    async def score(self, step: StepPublic) -> Score:
        return Score(value=1.0)


class BadExample(NoExample):
    """A scorer whose example does not validate."""

    name: ClassVar[str] = "test_bad_example"
    example: ClassVar[dict[str, Any]] = {"name": "bad", "params": {"threshold_ms": "soon"}}


def test_a_scorer_without_an_example_gets_a_placeholder(monkeypatch: pytest.MonkeyPatch) -> None:
    page = scorers_markdown(scorers={"test_no_example": NoExample})
    assert "**No example yet:** `NoExample` defines no `example`" in page
    assert "params: {threshold_ms: <number>}" in page
    assert "## Rule scorers" in page and "| `threshold_ms` | number | required |" in page


def test_an_example_that_does_not_validate_fails_the_build(monkeypatch: pytest.MonkeyPatch) -> None:
    from scorers import registry

    monkeypatch.setitem(registry._REGISTRY._classes, "test_bad_example", BadExample)
    with pytest.raises(CatalogError, match=r"'test_bad_example': its example does not validate: params\.threshold_ms"):
        scorers_markdown(scorers={"test_bad_example": BadExample})


def test_cli_prints_the_page(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    assert capsys.readouterr().out == scorers_markdown()


class PlainScorer:
    """A third-party scorer that is not a pydantic model."""

    name: ClassVar[str] = "test_plain"
    kind: ClassVar[str] = "rule"
    version: ClassVar[str] = "2"

    def __init__(self, pattern: str, limit: int = 3) -> None:
        self.pattern, self.limit = pattern, limit

    async def score(self, step: StepPublic) -> Score:
        return Score(value=1.0)


def test_a_plain_class_is_documented_from_its_constructor() -> None:
    assert [(p.name, p.type, p.default) for p in params_of(PlainScorer)] == [
        ("pattern", "string", "required"),
        ("limit", "integer", "`3`"),
    ]
    page = scorers_markdown(scorers={"test_plain": PlainScorer})
    assert f"kind: rule · version: 2 · class: `{PlainScorer.__module__}.PlainScorer`" in page
