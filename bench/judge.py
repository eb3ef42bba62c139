"""What LLM judging costs at production volume, and how well a sample estimates the failure rate.

100,000 steps with a 2.0% true failure rate, in strata of unequal size and failure rate:

    answer    / model-a   95,000 steps   1.6% failing
    summarize / model-b    4,000 steps   8.0% failing
    refund    / model-a    1,000 steps  16.0% failing   (a rare step)

The failing steps carry the marker that tests/fake_llm.py's judge finds (``[[planted-failure]]``).
Six judge evaluators (sample rate 1.0, 0.1, 0.02, each without and with stratification by step name
and model, ``min_per_stratum`` 200 a day) are applied to one SQLite store and the steps ingested
through ``ingest_batch`` in batches of 5,000.

What is real and what is counted:

- real: ``apply_evaluators``, ``ingest_batch`` and the scheduling code (``schedule_evals``, the
  deterministic draw, the stratum counters, the weights stored on each row) for all six;
- real for the two 2% evaluators (``--judge-rates``): their pending results are scored by
  ``score_pending`` over HTTP through litellm against tests/fake_llm.py (cache, budget accounting,
  the verdicts stored), and the estimate is ``estimate_failure_rate`` over the stored verdicts;
- counted for the others (100,000 and 10,000 calls would take too long over litellm here): the
  judge calls are the pending results the scheduler left; the verdict of each is what the fake
  judge answers (the planted marker); dollars = calls x the mean cost of a real call measured on
  the 2% runs; the estimate is the same weighted estimator (``failure_rate``) over those verdicts;
- real, the verdict cache: the 2% stratified sample's results set back to pending and scored again
  (every verdict a cache hit: no call, no dollar);
- real, a budget: a seventh evaluator, rate 0.1 with ``budget: {calls_per_day: 1000}``, scored
  through the real loop (1,000 calls, the rest skipped ``over budget`` and counted).

Each evaluator has its own model name, so its own verdict cache (two evaluators with the same rate
judge the same steps and would otherwise share verdicts).

Dollars use a configured per-token price (``input_cost_per_token`` 1.5e-7, ``output_cost_per_token``
6e-7: gpt-4o-mini's list price), tokens as the fake server reports them (characters / 4).

    $ .venv/bin/python bench/judge.py            # ~2-4 minutes on 2 cores
    $ .venv/bin/python bench/judge.py --steps 20000
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evalsvc.pipeline.evaluators import apply_evaluators, parse_config  # noqa: E402
from evalsvc.pipeline.ingest import ingest_batch  # noqa: E402
from evalsvc.pipeline.judging import estimate_failure_rate, failure_rate  # noqa: E402
from evalsvc.pipeline.projects import ensure_project  # noqa: E402
from evalsvc.pipeline.score import score_pending  # noqa: E402
from evalsvc.settings import Settings  # noqa: E402
from evalsvc.store.db import get_engine, migrate, session_scope  # noqa: E402
from tests.fake_llm import PLANTED, FakeLLM  # noqa: E402

STRATA = (("answer", "model-a", 0.95, 0.016), ("summarize", "model-b", 0.04, 0.08), ("refund", "model-a", 0.01, 0.16))
PRICE_IN, PRICE_OUT = 1.5e-7, 6e-7
RATES = (1.0, 0.1, 0.02)
MIN_PER_STRATUM = 200
RARE = "refund-"


def evaluators_yaml(api_base: str) -> str:
    out = ["evaluators:"]
    for rate in RATES:
        for strat in (False, True):
            sample = f"{{rate: {rate}" + (
                f", stratify: [name, model], min_per_stratum: {MIN_PER_STRATUM}}}" if strat else "}"
            )
            out.append(_judge(name_of(rate, strat), api_base, sample))
    # a budget: 1,000 calls a day for a 10% sample of 100,000 steps
    out.append(_judge("judge_0_1_budget", api_base, "{rate: 0.1}") + "\n    budget: {calls_per_day: 1000}")
    return "\n".join(out) + "\n"


def _judge(name: str, api_base: str, sample: str) -> str:
    # one model name per evaluator: each has its own verdict cache (two evaluators with the same
    # rate judge the same steps, and would otherwise share their verdicts)
    return f"""  - name: {name}
    scorer: llm_judge
    params: {{model: openai/judge-{name}, template: toxicity, api_base: "{api_base}", retry_backoff: 0.05,
              input_cost_per_token: {PRICE_IN}, output_cost_per_token: {PRICE_OUT}}}
    sample: {sample}"""


def name_of(rate: float, strat: bool) -> str:
    return f"judge_{str(rate).replace('.', '_')}" + ("_strat" if strat else "")


def make_steps(total: int, seed: int) -> tuple[list[dict[str, Any]], dict[str, bool], float]:
    """The records (shuffled), which run keys fail, and the true failure rate."""
    rng = random.Random(seed)
    records, failing = [], {}
    for name, model, share, rate in STRATA:
        count = round(total * share)
        bad = set(rng.sample(range(count), round(count * rate)))
        for i in range(count):
            key = f"{name}-{i:06d}"
            failing[key] = i in bad
            text = f"{name} reply {i}: thank you for your message." + (f" {PLANTED}" if i in bad else "")
            records.append({"source": "bench", "run_key": key, "step_key": name, "name": name, "kind": "llm",
                            "status": "completed", "model": model, "input": f"request {i}", "output": text})  # fmt: skip
    rng.shuffle(records)
    return records, failing, sum(failing.values()) / len(failing)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--judge-rates", default="0.02", help="Rates whose evaluators are judged over HTTP.")
    args = parser.parse_args()
    real_rates = {float(r) for r in args.judge_rates.split(",") if r}

    tmp = Path(tempfile.mkdtemp(prefix="evalsvc-bench-judge-"))
    settings = Settings(home=tmp)
    engine = get_engine(settings.resolved_database_url())
    migrate(engine)
    records, failing, truth = make_steps(args.steps, args.seed)
    with FakeLLM() as fake:
        with session_scope(engine) as session:
            project_id = ensure_project(session=session, name="default").id or 0
            apply_evaluators(session=session, project_id=project_id, specs=parse_config(evaluators_yaml(fake.url)),
                             settings=settings)  # fmt: skip
        t0 = time.perf_counter()
        for start in range(0, len(records), 5000):
            ingest_batch(engine=engine, project_id=project_id, items=records[start : start + 5000],
                         max_batch_records=5000, max_record_bytes=100_000)  # fmt: skip
        ingest_s = time.perf_counter() - t0
        print(f"ingested and scheduled {len(records):,} steps x 7 evaluators in {ingest_s:.1f} s", flush=True)

        rows: list[dict[str, Any]] = []
        cost_per_call: list[float] = []
        pending = _pending(engine)
        for rate in RATES:
            for strat in (False, True):
                name = name_of(rate, strat)
                mine = pending.get(name, [])
                if rate in real_rates:
                    row = _judge_for_real(engine, settings, fake, project_id, name, [rid for rid, _, _ in mine])
                    cost_per_call.append(row["dollars"] / max(row["calls"], 1))
                else:
                    est = failure_rate([(not failing[key], weight) for _, key, weight in mine])
                    rare = failure_rate([(not failing[k], w) for _, k, w in mine if k.startswith(RARE)])
                    row = {"calls": len(mine), "dollars": float("nan"), "estimate": est, "rare": rare, "how": "counted"}
                rows.append({"label": f"{rate} | {'yes' if strat else 'no'}", "rate": rate, "stratified": strat, **row})
        # the verdict cache: the 2% stratified sample scored again (its rows set back to pending)
        cached = name_of(0.02, True)
        if 0.02 in real_rates:
            with engine.begin() as conn:
                ids = [
                    r[0]
                    for r in conn.execute(
                        sa.text("SELECT id FROM eval_result WHERE evaluator = :e AND status = 'completed'"),
                        {"e": cached},
                    )
                ]
                conn.execute(
                    sa.text(
                        "UPDATE eval_result SET status = 'pending', started_at = NULL "
                        "WHERE evaluator = :e AND status = 'completed'"
                    ),
                    {"e": cached},
                )
            row = _judge_for_real(engine, settings, fake, project_id, cached, ids)
            rows.append({"label": "0.02 | yes, re-scored", "rate": 0.02, "stratified": True, **row})
        # the budget: 1,000 calls a day for a 10% sample
        budget_ids = [rid for rid, _, _ in pending.get("judge_0_1_budget", [])]
        row = _judge_for_real(engine, settings, fake, project_id, "judge_0_1_budget", budget_ids)
        rows.append({"label": "0.1 | no, budget 1,000 calls/day", "rate": 0.1, "stratified": False, **row})
        mean_cost = sum(cost_per_call) / len(cost_per_call) if cost_per_call else 0.0
        for row in rows:
            if row["dollars"] != row["dollars"]:  # nan: counted
                row["dollars"] = row["calls"] * mean_cost
    report(rows, truth, len(records), mean_cost)


def _judge_for_real(
    engine: sa.Engine,
    settings: Settings,
    fake: FakeLLM,
    project_id: int,
    name: str,
    ids: list[int],
) -> dict[str, Any]:
    """Score ``ids`` through the real loop (litellm over HTTP to the fake judge); what it took."""
    q = sa.text("SELECT dollars, over_budget FROM budget_usage WHERE evaluator = :e")
    with engine.connect() as conn:
        spent_before = (conn.execute(q, {"e": name}).first() or (0.0, 0))[0]
    t0, before = time.perf_counter(), fake.calls
    score_pending(engine=engine, ids=ids, settings=settings)
    secs, calls = time.perf_counter() - t0, fake.calls - before
    with engine.connect() as conn:
        dollars, over = conn.execute(q, {"e": name}).first() or (0.0, 0)
        hits = conn.execute(sa.text("SELECT count(*) FROM eval_result WHERE evaluator = :e AND cache_hit"),
                            {"e": name}).scalar()  # fmt: skip
    with session_scope(engine) as session:
        est = estimate_failure_rate(session=session, project_id=project_id, evaluator=name)
    return {"calls": calls, "dollars": dollars - spent_before, "estimate": est, "cache_hits": hits,
            "over_budget": over, "rare": _rare_verdicts(engine, name), "how": f"real HTTP ({secs:.0f} s)"}  # fmt: skip


def _rare_verdicts(engine: sa.Engine, name: str) -> Any:
    """The estimate of the rare stratum alone, from the stored verdicts."""
    q = sa.text(
        "SELECT e.passed, e.metadata FROM eval_result e JOIN run r ON r.id = e.run_id "
        "WHERE e.evaluator = :e AND e.status = 'completed' AND r.run_key LIKE :k"
    )
    pairs = []
    with engine.connect() as conn:
        for passed, meta in conn.execute(q, {"e": name, "k": RARE + "%"}):
            data = orjson.loads(meta) if isinstance(meta, str) else meta
            pairs.append((bool(passed), float(((data or {}).get("sample") or {}).get("weight", 1.0))))
    return failure_rate(pairs)


def _pending(engine: sa.Engine) -> dict[str, list[tuple[int, str, float]]]:
    """Pending results per evaluator: (id, run key, weight)."""
    out: dict[str, list[tuple[int, str, float]]] = {}
    q = sa.text(
        "SELECT e.id, e.evaluator, r.run_key, e.metadata FROM eval_result e JOIN run r ON r.id = e.run_id "
        "WHERE e.status = 'pending' ORDER BY e.id"
    )
    with engine.connect() as conn:
        for rid, evaluator, key, meta in conn.execute(q):
            data = orjson.loads(meta) if isinstance(meta, str) else meta
            sample = (data or {}).get("sample") or {}
            parts = evaluator.split("_")
            rate = float(parts[1] + "." + parts[2])
            weight = float(sample.get("weight", 1.0 / rate if rate else 1.0))
            out.setdefault(evaluator, []).append((rid, key, weight))
    return out


def report(rows: list[dict[str, Any]], truth: float, steps: int, mean_cost: float) -> None:
    print()
    print(f"{steps:,} steps, true failure rate {truth:.2%}; mean cost of a real judge call ${mean_cost:.7f}")
    print()
    print(
        "| sample rate | stratified | judge calls | % of judging all | dollars | cache hits | over budget "
        "| estimated failure rate (95% CI) | CI half-width | refund steps judged: their failure rate | judged |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- | --- |")
    for row in rows:
        est, rare = row["estimate"], row["rare"]
        half = (est.high - est.low) / 2
        print(f"| {row['label']} | {row['calls']:,} | {row['calls'] / steps:.1%} | ${row['dollars']:.3f} | "
              f"{row.get('cache_hits', '-')} | {row.get('over_budget', '-')} | "
              f"{est.rate:.2%} ({est.low:.2%}-{est.high:.2%}) | ±{half * 100:.2f} pt | "
              f"{rare.judged:,}: {rare.rate:.1%} ({rare.low:.1%}-{rare.high:.1%}) | {row['how']} |")  # fmt: skip
    target = next(r for r in rows if r["label"] == "0.02 | yes")
    est = target["estimate"]
    ok = est.low <= truth <= est.high and (est.high - est.low) / 2 <= 0.01 and target["calls"] <= 0.05 * steps
    print()
    print(f"target (2%, stratified: within ±1 pt at 95%, <= 5% of the calls): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
