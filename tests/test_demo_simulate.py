"""The demo simulator emits valid, deterministic records with its planted failures; the bundled
evalsvc.yaml is a valid evaluator file whose rules catch those failures."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped,unused-ignore]
import pytest
import yaml

from evalsvc.demo.simulate import simulate_runs, write_jsonl
from evalsvc.schemas import EvaluatorSpec, RunStatus, StepRecord, StepStatus

YAML_PATH = Path(__file__).resolve().parents[1] / "evalsvc" / "demo" / "evalsvc.yaml"
STEP_ORDER = ["classify_email", "extract_invoice", "lookup_vendor", "post_to_ledger", "draft_reply"]
SCORERS = {
    "json_schema",
    "regex",
    "not_empty",
    "max_latency_ms",
    "max_cost_usd",
    "equals",
    "contains",
}


@pytest.fixture(scope="module")
def records() -> list[dict[str, Any]]:
    return simulate_runs(runs=300, seed=7)


@pytest.fixture(scope="module")
def parsed(records: list[dict[str, Any]]) -> list[StepRecord]:
    return [StepRecord.model_validate(r) for r in records]


@pytest.fixture(scope="module")
def evaluators() -> dict[str, EvaluatorSpec]:
    data = yaml.safe_load(YAML_PATH.read_text(encoding="utf-8"))
    specs = [EvaluatorSpec.model_validate(item) for item in data["evaluators"]]
    return {spec.name: spec for spec in specs}


def _ends(parsed: list[StepRecord], step: str) -> list[StepRecord]:
    return [r for r in parsed if r.step_key == step and r.status != StepStatus.running]


def _latency_s(rec: StepRecord) -> float:
    assert rec.started_at is not None and rec.ended_at is not None
    return (rec.ended_at - rec.started_at).total_seconds()


def test_records_validate_and_are_json_ready(records: list[dict[str, Any]], parsed: list[StepRecord]) -> None:
    assert json.loads(json.dumps(records)) == records
    assert all(r["source"] == "demo" and r["workflow"] == "invoice-agent" for r in records)
    assert all(re.fullmatch(r"inv-\d{6}", r["run_key"]) for r in records)
    assert all(r["started_at"].endswith("Z") for r in records)
    assert {r.run_key for r in parsed} == {f"inv-{i:06d}" for i in range(1, 301)}
    assert all(r.started_at is not None and r.started_at.tzinfo is not None for r in parsed)


def test_same_seed_same_records_other_seed_differs() -> None:
    assert simulate_runs(runs=40, seed=3) == simulate_runs(runs=40, seed=3)
    assert simulate_runs(runs=40, seed=3) != simulate_runs(runs=40, seed=4)
    start = datetime(2024, 6, 1, tzinfo=UTC)
    first = simulate_runs(runs=5, seed=3, start=start)[0]
    assert first["started_at"] == "2024-06-01T00:00:00.000Z"


def test_runs_follow_step_order_and_time(parsed: list[StepRecord]) -> None:
    by_run: dict[str, list[StepRecord]] = defaultdict(list)
    for rec in parsed:
        by_run[rec.run_key].append(rec)
    for run in by_run.values():
        ends = [r for r in run if r.status != StepStatus.running]
        steps = list(dict.fromkeys(r.step_key for r in ends))
        assert steps == STEP_ORDER[: len(steps)]
        assert len(steps) >= 3
        starts = [r.started_at for r in ends if r.started_at is not None]
        assert len(starts) == len(ends) and starts == sorted(starts)
        final = ends[-1]
        if final.step_key == "draft_reply":
            assert final.run_status == RunStatus.completed
        else:
            assert final.step_key == "lookup_vendor"
            assert final.status == StepStatus.failed and final.run_status == RunStatus.failed
        assert all(r.run_status is None for r in run if r is not final)


def test_llm_steps_have_plausible_usage(parsed: list[StepRecord]) -> None:
    llm = [r for r in parsed if r.kind == "llm" and r.status != StepStatus.running]
    assert {r.step_key for r in llm} == {"classify_email", "extract_invoice", "draft_reply"}
    for rec in llm:
        assert rec.model == "gpt-4o-mini"
        assert rec.input_tokens and rec.output_tokens is not None and rec.cost_usd is not None
        expected = rec.input_tokens * 0.15e-6 + rec.output_tokens * 0.60e-6
        assert rec.cost_usd == pytest.approx(expected, abs=1e-8)
    assert sum(1 for r in llm if r.cost_usd and r.cost_usd >= 0.01) >= 1


def test_planted_rates_are_present(parsed: list[StepRecord]) -> None:
    classify = _ends(parsed, "classify_email")
    assert all(r.expected in {"invoice", "receipt"} for r in classify)
    wrong = sum(r.output != r.expected for r in classify)
    assert 5 <= wrong <= 40  # ~6%

    extract = _ends(parsed, "extract_invoice")
    retried = [r for r in extract if r.attempt == 2]
    assert 8 <= len(retried) <= 45  # ~8%
    assert all(r.attributes.get("retry_reason") == "parse_error" for r in retried)
    schema = {"type": "object", "required": ["total"], "properties": {"total": {"type": "number"}}}
    still_bad = [r for r in retried if not jsonschema.Draft202012Validator(schema).is_valid(r.output)]
    assert 1 <= len(still_bad) < len(retried)  # ~2% of runs

    lookups = _ends(parsed, "lookup_vendor")
    failed = [r for r in lookups if r.status == StepStatus.failed]
    assert 2 <= len(failed) <= 25  # ~3%
    assert all(r.error is not None and r.error.type == "TimeoutError" for r in failed)

    ledger = _ends(parsed, "post_to_ledger")
    slow = [r for r in ledger if _latency_s(r) > 3.0]
    assert 4 <= len(slow) <= 35  # ~5%
    assert all(4.0 <= _latency_s(r) <= 9.0 for r in slow)
    assert all(0.1 <= _latency_s(r) <= 0.6 for r in ledger if r not in slow)

    replies = _ends(parsed, "draft_reply")
    assert 1 <= sum(r.output == "" for r in replies) <= 12  # ~1%
    leaked = [r for r in replies if "@" in r.output or "TODO" in r.output]
    assert 4 <= len(leaked) <= 30  # ~4%


def test_start_records_precede_their_end(records: list[dict[str, Any]]) -> None:
    seen_start: set[tuple[str, str, int]] = set()
    starts = 0
    for rec in records:
        key = (rec["run_key"], rec["step_key"], rec["attempt"])
        if rec["status"] == "running":
            assert "ended_at" not in rec and "output" not in rec
            seen_start.add(key)
            starts += 1
        else:
            seen_start.discard(key)
    assert not seen_start  # every start record is followed by its end record
    assert 12 <= starts <= 50  # ~10% of 300 runs


def test_write_jsonl_round_trips(tmp_path: Path) -> None:
    records = simulate_runs(runs=10, seed=1)
    path = tmp_path / "sub" / "records.jsonl"
    write_jsonl(records, path)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == records


def test_yaml_is_valid_evaluator_file(evaluators: dict[str, EvaluatorSpec]) -> None:
    data = yaml.safe_load(YAML_PATH.read_text(encoding="utf-8"))
    names = [item["name"] for item in data["evaluators"]]
    assert len(names) == len(set(names)) == len(evaluators) == 6
    assert {spec.scorer for spec in evaluators.values()} <= SCORERS
    actions = {name: spec.on_fail.action for name, spec in evaluators.items()}
    assert actions == {
        "invoice_extraction_schema": "retry",
        "classification_matches_expected": "review",
        "reply_no_email_leak": "webhook",
        "reply_not_empty": "review",
        "ledger_post_latency": "none",
        "llm_step_cost": "none",
    }
    assert evaluators["invoice_extraction_schema"].on_fail.max_attempts == 3
    assert evaluators["reply_no_email_leak"].on_fail.url == "http://127.0.0.1:0/hook"
    assert evaluators["llm_step_cost"].target.kind == "llm"


def test_yaml_rules_catch_planted_failures(parsed: list[StepRecord], evaluators: dict[str, EvaluatorSpec]) -> None:
    schema = evaluators["invoice_extraction_schema"].params["schema"]
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    extract = _ends(parsed, "extract_invoice")
    bad_first = {r.run_key for r in extract if r.attempt == 1 and not validator.is_valid(r.output)}
    retried = {r.run_key for r in extract if r.attempt == 2}
    assert bad_first == retried

    leak = evaluators["reply_no_email_leak"].params
    assert leak["must_match"] is False
    replies = _ends(parsed, "draft_reply")
    flagged = [r for r in replies if re.search(leak["pattern"], r.output)]
    assert flagged and all("@" in r.output for r in flagged)


def test_the_simulated_orchestrator_holds_later_attempts_until_asked() -> None:
    import doctest

    import evalsvc.demo.orchestrator as orchestrator_module
    from evalsvc.demo.orchestrator import SimulatedOrchestrator

    assert doctest.testmod(orchestrator_module).failed == 0
    clean: dict[tuple[str, str], Any] = {}
    records = simulate_runs(runs=300, seed=7, clean=clean)
    orch = SimulatedOrchestrator(records, clean=clean)
    assert all(r["attempt"] == 1 for r in orch.first)
    held = [r for r in records if r["attempt"] > 1]
    assert held and len(orch.first) + len(held) == len(records)
    run_key = held[0]["run_key"]
    assert orch.retry(run_key, "extract_invoice", 1) == 2
    assert [r for r in orch.take() if r.get("ended_at")] == [r for r in held if r["run_key"] == run_key
                                                             and r.get("ended_at")]  # fmt: skip
    # a re-run nobody planned: the correct extraction, after the last attempt
    assert orch.retry(run_key, "extract_invoice", 2) == 3
    (third,) = orch.take()
    assert third["attempt"] == 3 and third["output"] == clean[(run_key, "extract_invoice")]
    assert third["attributes"]["retry_reason"] == "evalsvc" and orch.take() == []
