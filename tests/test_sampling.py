"""Sampling for LLM judges from ``evalsvc.yaml`` through the real loop (apply + ingest through the
API, the judge over HTTP against tests/fake_llm.py): always-sample conditions, the first N steps of
a new model, stratification with stored weights, and the failure rate estimated with its interval."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest

from evalsvc.pipeline.judging import estimate_failure_rate, failure_rate
from evalsvc.pipeline.projects import ensure_project
from evalsvc.settings import Settings
from evalsvc.store.db import get_engine, session_scope

from .conftest import Api
from .factories import record
from .fake_llm import PLANTED, FakeLLM
from .test_judge import results


@pytest.fixture
def fake() -> Iterator[FakeLLM]:
    with FakeLLM() as server:
        yield server


def judge(fake: FakeLLM, sample: str, name: str = "judge", target: str = "{}") -> str:
    return f"""
  - name: {name}
    scorer: llm_judge
    target: {target}
    params: {{model: openai/fake-judge, template: toxicity, api_base: "{fake.url}"}}
    sample: {sample}
"""


def decided(settings: Settings, evaluator: str = "judge") -> dict[str, tuple[str, str | None, dict[str, Any]]]:
    """run key -> (status, skip reason, metadata.sample)."""
    out = {}
    for key, row in results(settings, evaluator).items():
        meta = row["metadata"] or {}
        out[key] = (row["status"], row["skip_reason"], meta.get("sample") or {})
    return out


def test_failed_steps_are_always_judged(api: Api, settings: Settings, fake: FakeLLM) -> None:
    api.apply("evaluators:" + judge(fake, "{rate: 0, always: [step_failed]}"))
    api.ingest([record(f"ok{i}", "answer", output="fine") for i in range(3)]
               + [record(f"bad{i}", "answer", output=f"half an answer {i}", error="boom", status="failed") for i in range(2)])  # fmt: skip
    got = decided(settings)
    for i in range(3):
        assert got[f"ok{i}"][:2] == ("skipped", "not sampled")
    for i in range(2):
        status, _, sample = got[f"bad{i}"]
        assert status == "completed" and sample == {"why": "step_failed", "weight": 1.0}
    assert fake.calls == 2


def test_a_failed_rule_on_the_same_step_brings_the_judge_in(api: Api, settings: Settings, fake: FakeLLM) -> None:
    api.apply(
        "evaluators:\n  - {name: has_ref, scorer: regex, params: {pattern: 'REF-[0-9]+'}}\n"
        + judge(fake, "{rate: 0, always: [rule_failed]}")
    )
    api.ingest([record("with-ref-1", "answer", output="see REF-12"),
                record("with-ref-2", "answer", output="see REF-13"),
                record("no-ref-1", "answer", output="no reference here"),
                record("no-ref-2", "answer", output=f"none either {PLANTED}")])  # fmt: skip
    got = decided(settings)
    assert got["with-ref-1"][:2] == got["with-ref-2"][:2] == ("skipped", "not sampled")
    assert got["no-ref-1"][0] == got["no-ref-2"][0] == "completed"
    assert got["no-ref-1"][2]["why"] == "rule_failed" and got["no-ref-1"][2]["weight"] == 1.0
    assert fake.calls == 2
    verdicts = {e["run_key"]: e["passed"] for e in api.get("/v1/evals?evaluator=judge").json()}
    assert verdicts["no-ref-1"] is True and verdicts["no-ref-2"] is False


def test_a_step_a_rule_failed_weighs_one_even_when_the_draw_picked_it(
    api: Api, settings: Settings, fake: FakeLLM
) -> None:
    api.apply(
        "evaluators:\n  - {name: has_ref, scorer: regex, params: {pattern: 'REF-[0-9]+'}}\n"
        + judge(fake, "{rate: 0.5, always: [rule_failed]}")
    )
    api.ingest([record(f"r{i}", "answer", output=f"text {i}" + (" REF-1" if i % 2 else "")) for i in range(40)])
    got = decided(settings)
    for key, (status, _, sample) in got.items():
        rule_failed = int(key[1:]) % 2 == 0
        if rule_failed:
            assert status == "completed" and sample == {"why": "rule_failed", "weight": 1.0}, key
        elif status == "completed":
            assert sample == {"why": "rate", "weight": 2.0}, key
    assert 20 < fake.calls < 40


def test_a_rule_failure_stored_earlier_counts_too(api: Api, settings: Settings, fake: FakeLLM) -> None:
    rule = "evaluators:\n  - {name: has_ref, scorer: regex, params: {pattern: 'REF-[0-9]+'}}\n"
    api.apply(rule)
    api.ingest([record("r1", "answer", output="no reference"), record("r2", "answer", output="REF-1")])
    api.apply(rule + judge(fake, "{rate: 0, always: [rule_failed]}"))
    # the steps change after finishing: the judge is scheduled; the rule's earlier verdicts decide
    api.ingest([record("r1", "answer", output="no reference", ended_at="2026-11-01T10:00:05Z"),
                record("r2", "answer", output="REF-1", ended_at="2026-11-01T10:00:05Z")])  # fmt: skip
    got = decided(settings)
    assert got["r1"][0] == "completed" and got["r2"][:2] == ("skipped", "not sampled")


def test_the_first_steps_of_a_new_model_are_judged(api: Api, settings: Settings, fake: FakeLLM) -> None:
    api.apply("evaluators:" + judge(fake, "{rate: 0, always: [new_model], new_model_steps: 2}"))
    api.ingest([record(f"a{i}", "answer", model="model-a", output=f"a {i}") for i in range(3)])
    api.ingest([record("a3", "answer", model="model-a", output="a 3")]
               + [record(f"b{i}", "answer", model="model-b", output=f"b {i}") for i in range(3)])  # fmt: skip
    got = decided(settings)
    judged = sorted(k for k, (status, _, _) in got.items() if status == "completed")
    assert judged == ["a0", "a1", "b0", "b1"]
    assert got["b0"][2] == {"why": "new_model", "weight": 1.0}
    assert fake.calls == 4


def test_stratification_judges_rare_steps_and_weights_the_rest(api: Api, settings: Settings, fake: FakeLLM) -> None:
    api.apply("evaluators:" + judge(fake, "{rate: 0.25, stratify: [name, model], min_per_stratum: 3}"))
    common = [record(f"c{i}", "answer", model="m1", output=f"answer {i}" + (f" {PLANTED}" if i % 10 == 0 else ""))
              for i in range(120)]  # fmt: skip
    rare = [record(f"r{i}", "refund", model="m1", output=f"refund {i} {PLANTED}") for i in range(2)]
    api.ingest(common[:60] + rare)
    api.ingest(common[60:])
    got = decided(settings)
    assert all(got[f"r{i}"][0] == "completed" for i in range(2))  # the rare stratum: every step
    assert got["r0"][2] == {"why": "min_per_stratum", "weight": 1.0, "stratum": "refund|m1"}
    by_why: dict[str, int] = {}
    for key, (status, _, sample) in got.items():
        if key.startswith("c"):
            assert sample["stratum"] == "answer|m1"
            by_why[sample["why"]] = by_why.get(sample["why"], 0) + 1
            if status == "completed":
                assert sample["weight"] == (1.0 if sample["why"] == "min_per_stratum" else 4.0)
    assert by_why["min_per_stratum"] == 3 and 10 < by_why["rate"] < 50
    assert fake.calls == by_why["min_per_stratum"] + by_why["rate"] + 2
    # the estimate weights each verdict by 1 / its inclusion probability
    engine = get_engine(settings.resolved_database_url())
    with session_scope(engine) as session:
        project_id = ensure_project(session=session, name="default").id or 0
        est = estimate_failure_rate(session=session, project_id=project_id, evaluator="judge")
    pairs = [(status, sample) for status, _, sample in got.values() if status == "completed"]
    assert est.judged == len(pairs)
    assert est.population == pytest.approx(sum(s["weight"] for _, s in pairs))
    assert est.low <= est.rate <= est.high and 0 < est.rate < 0.5


def test_two_evaluators_with_the_same_rate_judge_the_same_steps(api: Api, settings: Settings, fake: FakeLLM) -> None:
    api.apply(
        "evaluators:" + judge(fake, "{rate: 0.3}", "j1") + judge(fake, "{rate: 0.3, always: [step_failed]}", "j2")
    )
    api.ingest([record(f"r{i}", "answer", output=f"text {i}") for i in range(40)])
    one, two = decided(settings, "j1"), decided(settings, "j2")
    assert {k for k, v in one.items() if v[0] == "completed"} == {k for k, v in two.items() if v[0] == "completed"}
    assert 0 < sum(v[0] == "completed" for v in one.values()) < 40


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_weighted_interval_covers_the_true_rate(seed: int) -> None:
    """Two strata of unequal size and failure rate, the small one sampled at 100%, the big one at
    5%: the weighted estimate's 95% interval covers the true rate in about 95% of repeated samples."""
    rng = random.Random(seed)
    big, small = 20_000, 500
    truth = (big * 0.02 + small * 0.20) / (big + small)
    trials, covered, errors = 200, 0, []
    for _ in range(trials):
        pairs = [(rng.random() >= 0.02, 20.0) for _ in range(big) if rng.random() < 0.05]
        pairs += [(rng.random() >= 0.20, 1.0) for _ in range(small)]
        est = failure_rate(pairs)
        covered += est.low <= truth <= est.high
        errors.append(est.rate - truth)
    assert 0.88 <= covered / trials <= 0.99
    assert abs(sum(errors) / trials) < 0.002  # unbiased


def test_the_estimate_of_an_unweighted_sample_is_a_wilson_interval() -> None:
    est = failure_rate([(False, 1.0)] * 20 + [(True, 1.0)] * 980)
    assert est.rate == pytest.approx(0.02)
    assert est.low == pytest.approx(0.01299, abs=1e-4) and est.high == pytest.approx(0.03074, abs=1e-4)
    none = failure_rate([(True, 5.0)] * 50)
    assert none.rate == 0 and none.low == 0 and 0 < none.high < 0.1
    assert failure_rate([]).judged == 0
    assert "failure rate 2.00%" in str(est)


def test_the_estimate_and_todays_spend_are_shown_by_the_cli(api: Api, settings: Settings, fake: FakeLLM) -> None:
    import json

    from typer.testing import CliRunner

    from evalsvc.cli import app

    api.apply("evaluators:" + judge(fake, "{rate: 0.5, stratify: [name], min_per_stratum: 2}"))
    api.ingest(
        [record(f"r{i}", "answer", output=f"text {i}" + (f" {PLANTED}" if i % 4 == 0 else "")) for i in range(40)]
    )
    env = {"EVALSVC_HOME": str(settings.home), "EVALSVC_DATABASE_URL": settings.database_url or "",
           "EVALSVC_BROKER_URL": "", "EVALSVC_WEBHOOK_SECRET": ""}  # fmt: skip
    result = CliRunner().invoke(app, ["evals", "estimate", "judge", "--json"], env=env)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    judged = [s for status, _, s in decided(settings).values() if status == "completed"]
    assert data["judged"] == len(judged) == fake.calls and data["today"]["evaluator"]["calls"] == fake.calls
    assert data["low"] <= data["failure_rate"] <= data["high"]
    text = CliRunner().invoke(app, ["evals", "estimate", "judge"], env=env).output
    assert "failure rate" in text and "95% CI" in text and f"today: {fake.calls} judge calls" in text
