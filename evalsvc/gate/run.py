"""Run the gate: score the candidate, pair it with the baseline by item, decide, pick an exit code.

Per evaluator: the candidate's verdicts are paired with the baseline's by ``(item id, step name)``
(:mod:`evalsvc.gate.candidate`); a baseline scored with another version of the evaluator is
re-scored from its stored outputs first (or the gate stops with exit 4). Then the comparison of
:mod:`evalsvc.gate.stats` (pass rate: exact McNemar; score: paired bootstrap), Holm across the
evaluators' "worse" p-values, the floors and the must-pass items. The overall verdict and exit code:

========================  ====  ==========================================================
verdict                   exit  when
========================  ====  ==========================================================
REGRESSION                1     an evaluator regressed, fell below its floor, or a must-pass item failed
ERROR                     3     too many scorer errors (a judge outage), or no item to compare
INCONCLUSIVE              2     some evaluator could not be shown non-inferior (0 when allowed)
PASS                      0     every compared evaluator is non-inferior and powered
========================  ====  ==========================================================

Configuration and baseline problems raise :class:`~evalsvc.errors.InvalidInput` (exit 4)::

    >>> from evalsvc.gate.run import run_gate  # doctest: +SKIP
    >>> result = run_gate(engine=engine, project_id=1, config=Path("evalsvc.yaml"),
    ...                   candidate=Path("candidate.jsonl"), baseline="main")  # doctest: +SKIP
    >>> result.verdict, result.exit_code  # doctest: +SKIP
    ('PASS', 0)
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sqlalchemy.engine import Engine

from evalsvc.errors import InvalidInput
from evalsvc.schemas import EvaluatorSpec, StepPublic

from .baselines import Baseline, load_baseline, load_steps
from .candidate import Outcome, StoredRuns, group_by_key, read_steps, record_to_public, score_steps, stored_steps
from .config import GateConfig, load_gate_config
from .stats import Comparison, decide, holm, paired_binary, paired_scores

__all__ = ["EXIT_CODES", "EvaluatorResult", "GateResult", "MustPass", "Regressed", "run_gate"]

Overall = Literal["PASS", "REGRESSION", "INCONCLUSIVE", "ERROR"]
EXIT_CODES: dict[str, int] = {"PASS": 0, "REGRESSION": 1, "INCONCLUSIVE": 2, "ERROR": 3, "CONFIG": 4}


@dataclass
class EvaluatorResult:
    name: str
    version: str
    metric: str
    verdict: str  # PASS | REGRESSION | INCONCLUSIVE | ERROR | SKIPPED (not in the baseline, not compared)
    reason: str
    comparison: Comparison | None = None
    p_worse_adjusted: float | None = None
    floor: float | None = None
    candidate_rate: float | None = None  # over every scored candidate item (what the floor checks)
    scored: int = 0
    errors: int = 0
    skipped: int = 0
    unpaired: int = 0
    rescored_baseline: bool = False
    judge_noise: float | None = None  # mean per-item standard deviation of the judge's repeated values
    repeats: int = 1

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "comparison"}
        d["comparison"] = self.comparison.as_dict() if self.comparison else None
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


@dataclass
class MustPass:
    item_id: str
    passed: bool
    failed_evaluators: list[str]
    reason: str
    missing: bool = False


@dataclass
class Regressed:
    evaluator: str
    item_id: str
    step_name: str
    baseline: float | bool | None
    candidate: float | bool | None
    candidate_run: str
    baseline_run: str | None


@dataclass
class GateResult:
    verdict: Overall
    exit_code: int
    reason: str
    baseline: dict[str, Any]
    candidate: str
    config: GateConfig
    evaluators: list[EvaluatorResult] = field(default_factory=list)
    must_pass: list[MustPass] = field(default_factory=list)
    regressed: list[Regressed] = field(default_factory=list)
    mode: str = "enforce"

    def as_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "exit_code": self.exit_code,
            "reason": self.reason,
            "mode": self.mode,
            "baseline": self.baseline,
            "candidate": self.candidate,
            "settings": self.config.model_dump(exclude={"evaluators", "must_pass"}),
            "evaluators": [e.as_dict() for e in self.evaluators],
            "must_pass": [m.__dict__ for m in self.must_pass],
            "regressed_items": [r.__dict__ for r in self.regressed],
        }


def run_gate(
    *,
    engine: Engine,
    project_id: int,
    config: Path,
    candidate: Path | StoredRuns,
    baseline: str,
    connector: str = "json",
    fail_on_inconclusive: bool = True,
) -> GateResult:
    specs, gate = load_gate_config(config)
    base = load_baseline(engine=engine, project_id=project_id, name=baseline)
    if base is None:
        raise InvalidInput(f"no baseline named {baseline!r}; promote one with `evalsvc baseline promote`",
                           field="baseline")  # fmt: skip
    if isinstance(candidate, StoredRuns):
        steps = stored_steps(engine=engine, project_id=project_id, select=candidate)
    else:
        steps = read_steps(candidate, connector=connector)
    repeats = {s.name: gate.of(s.name).repeats for s in specs}
    cand = score_steps(engine=engine, project_id=project_id, specs=specs, steps=list(steps), repeats=repeats)
    base_outcomes = _baseline_outcomes(engine, project_id, base, specs)

    results: list[EvaluatorResult] = []
    regressed: list[Regressed] = []
    for spec in specs:
        res, reg = _compare(spec, gate, cand[spec.name], base_outcomes.get(spec.name))
        res.rescored_baseline = base.evaluators.get(spec.name, spec.version()) != spec.version()
        results.append(res)
        regressed.extend(reg)
    compared = [r for r in results if r.comparison is not None and r.verdict != "ERROR"]
    for r, p in zip(compared, holm([r.comparison.p_worse for r in compared if r.comparison]), strict=True):
        assert r.comparison is not None
        r.p_worse_adjusted = p
        d = decide(r.comparison, p_worse=p, alpha=gate.alpha, min_items=gate.min_items)
        r.verdict, r.reason = d.verdict, d.reason
    for r in results:
        if (
            r.floor is not None
            and r.candidate_rate is not None
            and r.candidate_rate >= r.floor
            and r.reason == "floor only"
        ):
            r.reason = f"floor only: {r.candidate_rate:.2%} is at least {r.floor:.2%}"
        if r.verdict != "ERROR" and r.floor is not None and r.candidate_rate is not None and r.candidate_rate < r.floor:
            r.verdict = "REGRESSION"
            r.reason = f"{r.candidate_rate:.2%} is below the floor {r.floor:.2%}; {r.reason}"
    must = _must_pass(gate, cand)
    verdict, reason = _overall(results, must)
    code = EXIT_CODES[verdict]
    if verdict == "INCONCLUSIVE" and not fail_on_inconclusive:
        code, reason = 0, reason + " (allowed: EVALSVC_GATE_FAIL_ON_INCONCLUSIVE=false)"
    info = {"name": base.name, "version": base.version, "source": base.source, "items": len(base.items),
            "created_at": base.created_at.isoformat()}  # fmt: skip
    return GateResult(verdict, code, reason, info, str(candidate), gate, results, must, regressed)


def _baseline_outcomes(
    engine: Engine, project_id: int, base: Baseline, specs: list[EvaluatorSpec]
) -> dict[str, list[Outcome]]:
    """The baseline's verdicts per evaluator, re-scored where the evaluator's version changed."""
    out: dict[str, list[Outcome]] = {}
    for spec in specs:
        items = base.of(spec.name)
        if not items:
            continue
        if all(i.evaluator_version == spec.version() for i in items):
            out[spec.name] = [
                Outcome(
                    i.item_id,
                    i.step_name,
                    i.run_key or "",
                    i.step_key or "",
                    i.output_hash or "",
                    passed=i.passed,
                    value=i.value,
                )
                for i in items
            ]
            continue
        stored = load_steps(engine=engine, step_ids=[i.step_id for i in items if i.step_id is not None])
        steps: list[tuple[StepPublic, dict[str, Any] | None, str]] = []
        for n, i in enumerate(items, start=1):
            if i.record is not None:
                steps.append((record_to_public(i.record, step_id=n, run_id=n), i.record, i.item_id))
            elif i.step_id is not None and i.step_id in stored:
                steps.append((stored[i.step_id], None, i.item_id))
            else:
                raise InvalidInput(
                    f"baseline {base.name!r} was scored with {spec.name} version {i.evaluator_version}, evalsvc.yaml "
                    f"has {spec.version()}, and the output of item {i.item_id!r} is no longer stored to re-score it; "
                    "promote a new baseline",
                    field="baseline",
                )
        rescored = score_steps(engine=engine, project_id=project_id, specs=[spec], steps=steps)[spec.name]
        out[spec.name] = rescored
    return out


def _rate(outcomes: list[Outcome], metric: str) -> float | None:
    if metric == "score":
        values = [o.value for o in outcomes if o.value is not None]
        return statistics.fmean(values) if values else None
    verdicts = [bool(o.passed) for o in outcomes if o.passed is not None]
    return sum(verdicts) / len(verdicts) if verdicts else None


def _compare(spec: EvaluatorSpec, gate: GateConfig, cand: list[Outcome],
             base: list[Outcome] | None) -> tuple[EvaluatorResult, list[Regressed]]:  # fmt: skip
    eg = gate.of(spec.name)
    scored = [o for o in cand if not o.error and not o.skipped]
    errors = sum(1 for o in cand if o.error)
    res = EvaluatorResult(spec.name, spec.version(), eg.metric, "INCONCLUSIVE", "", floor=eg.floor,
                          candidate_rate=_rate(scored, eg.metric), scored=len(scored), errors=errors,
                          skipped=sum(1 for o in cand if o.skipped), repeats=eg.repeats)  # fmt: skip
    noisy = [statistics.pstdev(o.repeats) for o in scored if len(o.repeats) > 1]
    res.judge_noise = statistics.fmean(noisy) if noisy else None
    if cand and errors / len(cand) > gate.max_error_rate:
        first = next(o.error for o in cand if o.error)
        res.verdict, res.reason = "ERROR", f"{errors} of {len(cand)} items errored (e.g. {first})"
        return res, []
    if not eg.compare:
        if eg.floor is None:
            res.verdict, res.reason = "SKIPPED", "not compared (compare: false, no floor)"
        elif res.candidate_rate is None:
            res.verdict, res.reason = "INCONCLUSIVE", "no candidate item to check the floor on"
        else:
            res.verdict, res.reason = "PASS", "floor only"
        return res, []
    if base is None:
        res.verdict, res.reason = "SKIPPED", "not in the baseline: not compared"
        return res, []
    by_base = group_by_key(o for o in base if not o.error and not o.skipped)
    by_cand = group_by_key(scored)
    keys = [k for k in by_cand if k in by_base and _usable(by_base[k], eg.metric) and _usable(by_cand[k], eg.metric)]
    res.unpaired = len(by_cand) - len(keys)
    margin = gate.margin_of(spec.name)
    if eg.metric == "score":
        res.comparison = paired_scores([float(by_base[k].value or 0.0) for k in keys], [float(by_cand[k].value or 0.0) for k in keys],
                                       margin=margin, alpha=gate.alpha, power=gate.power, resamples=gate.resamples,
                                       seed=gate.seed)  # fmt: skip
    else:
        res.comparison = paired_binary([bool(by_base[k].passed) for k in keys], [bool(by_cand[k].passed) for k in keys],
                                       margin=margin, alpha=gate.alpha, power=gate.power)  # fmt: skip
    if not keys:
        res.reason = "no paired items"
    regressed = [
        Regressed(
            spec.name,
            k[0],
            k[1],
            _shown(by_base[k], eg.metric),
            _shown(by_cand[k], eg.metric),
            by_cand[k].run_key,
            by_base[k].run_key or None,
        )
        for k in keys
        if by_base[k].passed and by_cand[k].passed is False
    ]
    return res, regressed


def _usable(o: Outcome, metric: str) -> bool:
    return (o.value if metric == "score" else o.passed) is not None


def _shown(o: Outcome, metric: str) -> float | bool | None:
    return o.value if metric == "score" else o.passed


def _must_pass(gate: GateConfig, cand: dict[str, list[Outcome]]) -> list[MustPass]:
    out = []
    for item in gate.must_pass:
        seen = [(name, o) for name, rows in cand.items() for o in rows if o.item_id == item]
        judged = [(name, o) for name, o in seen if o.passed is not None]
        failed = sorted({name for name, o in judged if not o.passed})
        if not judged:
            out.append(MustPass(item, False, [], "missing from the candidate (or no verdict on it)", missing=True))
        elif failed:
            out.append(MustPass(item, False, failed, f"failed {', '.join(failed)}"))
        else:
            out.append(MustPass(item, True, [], f"passed {len(judged)} verdicts"))
    return out


def _overall(results: list[EvaluatorResult], must: list[MustPass]) -> tuple[Overall, str]:
    regressions = [r.name for r in results if r.verdict == "REGRESSION"]
    failed_items = [m.item_id for m in must if not m.passed and not m.missing]
    if regressions or failed_items:
        parts = [f"regressed: {', '.join(regressions)}"] if regressions else []
        parts += [f"must-pass items failed: {', '.join(failed_items)}"] if failed_items else []
        return "REGRESSION", "; ".join(parts)
    errors = [r.name for r in results if r.verdict == "ERROR"]
    if errors:
        return "ERROR", f"scorer errors: {', '.join(errors)}"
    compared = [r for r in results if r.comparison is not None and r.comparison.n > 0]
    if not compared:
        return "ERROR", "no items to compare: no candidate item matched a baseline item of a configured evaluator"
    missing = [m.item_id for m in must if m.missing]
    if missing:
        return "ERROR", f"must-pass items missing from the candidate: {', '.join(missing)}"
    unsure = [r.name for r in results if r.verdict == "INCONCLUSIVE"]
    if unsure:
        return "INCONCLUSIVE", f"not shown non-inferior: {', '.join(unsure)}"
    return "PASS", f"{len(compared)} evaluator(s) non-inferior"
