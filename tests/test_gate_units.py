"""The gate's item ids and its `gate:` block of evalsvc.yaml."""

from __future__ import annotations

import pytest

from evalsvc.errors import InvalidInput
from evalsvc.gate.candidate import item_id
from evalsvc.gate.config import parse_gate_config

EVALUATORS = "evaluators:\n  - {name: a, scorer: not_empty}\n  - {name: b, scorer: not_empty}\n"


def test_item_id_prefers_the_step_then_the_run_then_the_step_identity() -> None:
    assert item_id({"item_id": "q1", "dataset_item": "d1"}, {"item_id": "r1"}, run_key="k", step_key="s") == "q1"
    assert item_id({"dataset_item": "d1"}, {"item_id": "r1"}, run_key="k", step_key="s") == "d1"
    assert item_id({"item_id": ""}, {"dataset_item": 7}, run_key="k", step_key="s") == "7"
    assert item_id(None, None, run_key="k", step_key="s") == "k/s"


def test_gate_block_defaults_and_overrides() -> None:
    specs, gate = parse_gate_config(
        EVALUATORS + "gate:\n  margin: 0.05\n  evaluators: {b: {margin: 0.01, floor: 0.9}}\n"
    )
    assert [s.name for s in specs] == ["a", "b"]
    assert (gate.margin_of("a"), gate.margin_of("b"), gate.of("b").floor, gate.of("a").metric) == (0.05, 0.01, 0.9,
                                                                                                    "pass_rate")  # fmt: skip
    _, default = parse_gate_config(EVALUATORS)
    assert (default.alpha, default.power, default.margin, default.must_pass) == (0.05, 0.8, 0.02, [])


@pytest.mark.parametrize(
    ("block", "field"),
    [
        ("gate: {alpha: 0.7}", "gate.alpha"),
        ("gate: {evaluators: {a: {metric: median}}}", "gate.evaluators.a.metric"),
        ("gate: {evaluators: {zz: {floor: 0.5}}}", "gate.evaluators.zz"),
        ("gate: {surprise: 1}", "gate.surprise"),
    ],
)
def test_gate_block_errors_name_the_field(block: str, field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_gate_config(EVALUATORS + block + "\n")
    assert info.value.field == field


def test_the_gate_block_is_not_part_of_any_version() -> None:
    plain, _ = parse_gate_config(EVALUATORS)
    with_gate, _ = parse_gate_config(EVALUATORS + "gate: {margin: 0.1}\n")
    assert [s.version() for s in plain] == [s.version() for s in with_gate]
