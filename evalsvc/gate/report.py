"""The gate's outputs: a terminal table (rich), JUnit XML (junitparser), Markdown for a pull-request
comment, and JSON. All four say the same verdict as the exit code::

    >>> from evalsvc.gate.report import write_junit, to_markdown  # doctest: +SKIP
    >>> write_junit(result, Path("gate.xml"))  # doctest: +SKIP
    >>> Path("gate.md").write_text(to_markdown(result, run_url=None))  # doctest: +SKIP
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import orjson
from junitparser import Error, Failure, JUnitXml, Skipped, TestCase, TestSuite
from rich.console import Console
from rich.table import Table

from .run import EvaluatorResult, GateResult

__all__ = ["print_result", "to_json", "to_markdown", "write_error_reports", "write_junit"]

_STYLE = {"PASS": "green", "REGRESSION": "red", "INCONCLUSIVE": "yellow", "ERROR": "red", "SKIPPED": "dim"}
_MAX_ITEMS = 50


def _pct(x: float | None, signed: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x * 100:+.1f}" if signed else f"{x * 100:.1f}"


def _interval(r: EvaluatorResult) -> str:
    c = r.comparison
    if c is None or c.n == 0:
        return "-"
    return f"[{_pct(c.low, True)}, {_pct(c.high, True)}]"


def _row(r: EvaluatorResult) -> list[str]:
    c = r.comparison
    unit = "%" if r.metric == "pass_rate" else " pts"
    return [
        r.name,
        r.metric,
        str(c.n) if c else "0",
        _pct(c.baseline if c else None) + (unit if c and c.n else ""),
        _pct(c.candidate if c else r.candidate_rate) + unit,
        _pct(c.diff if c else None, True),
        _interval(r),
        _pct(c.margin if c else None),
        _pct(c.mde if c else None),
        r.verdict,
    ]


_HEAD = ["evaluator", "metric", "pairs", "baseline", "candidate", "diff", "interval", "margin", "MDE", "verdict"]


def _headline(result: GateResult) -> str:
    code = result.exit_code
    if result.mode == "shadow":
        return f"{result.verdict} (shadow mode: would exit {code}; exits 0) - {result.reason}"
    return f"{result.verdict} (exit {code}) - {result.reason}"


def print_result(console: Console, result: GateResult) -> None:
    b = result.baseline
    console.print(f"baseline [bold]{b['name']}[/bold] v{b['version']} ({b['source']}, {b['items']} verdicts)"
                  f" vs candidate {result.candidate}", highlight=False)  # fmt: skip
    table = Table(*_HEAD, title=f"alpha {result.config.alpha} one-sided, Holm across evaluators; differences "
                  "in points, interval at 1-2alpha")  # fmt: skip
    for r in result.evaluators:
        row = _row(r)
        row[-1] = f"[{_STYLE.get(r.verdict, '')}]{r.verdict}[/]"
        table.add_row(*row)
    console.print(table)
    for r in result.evaluators:
        extra = f" (judge noise: sd {r.judge_noise:.3f} over {r.repeats} repeats)" if r.judge_noise is not None else ""
        errs = f" {r.errors} errors," if r.errors else ""
        console.print(f"  {r.name}:{errs} {r.reason}{extra}", highlight=False)
    for m in result.must_pass:
        console.print(f"  must-pass {m.item_id}: {'passed' if m.passed else 'FAILED'} ({m.reason})", highlight=False)
    if result.regressed:
        console.print(
            f"  {len(result.regressed)} item(s) passed in the baseline and failed in the candidate", highlight=False
        )
    style = _STYLE.get(result.verdict, "")
    console.print(f"[bold {style}]verdict: {_headline(result)}[/]", highlight=False)


def write_junit(result: GateResult, path: Path) -> None:
    """A testsuite per kind: a testcase per evaluator and per must-pass item."""
    xml = JUnitXml()
    suite = TestSuite("evalsvc gate")
    suite.add_property("verdict", result.verdict)
    suite.add_property("exit_code", str(result.exit_code))
    suite.add_property("mode", result.mode)
    for r in result.evaluators:
        case = TestCase(r.name, classname="evalsvc.gate.evaluators")
        c = r.comparison
        detail = (f"{r.metric}: baseline {_pct(c.baseline)} candidate {_pct(c.candidate)} diff {_pct(c.diff, True)} "
                  f"interval {_interval(r)} n={c.n} margin {_pct(c.margin)} MDE {_pct(c.mde)}") if c else r.reason  # fmt: skip
        message = f"{r.verdict}: {r.reason}"
        if r.verdict == "REGRESSION":
            case.result = [Failure(message, "REGRESSION")]
        elif r.verdict == "ERROR":
            case.result = [Error(message, "ERROR")]
        elif r.verdict == "INCONCLUSIVE":
            # a failure when the policy fails the build on it (EVALSVC_GATE_FAIL_ON_INCONCLUSIVE)
            case.result = [Failure(message, "INCONCLUSIVE") if result.exit_code == 2 else Skipped(message)]
        elif r.verdict == "SKIPPED":
            case.result = [Skipped(message)]
        case.system_out = detail
        suite.add_testcase(case)
    for m in result.must_pass:
        case = TestCase(m.item_id, classname="evalsvc.gate.must_pass")
        if m.missing:
            case.result = [Error(f"must-pass item {m.item_id}: {m.reason}", "ERROR")]
        elif not m.passed:
            case.result = [Failure(f"must-pass item {m.item_id}: {m.reason}", "REGRESSION")]
        suite.add_testcase(case)
    xml.add_testsuite(suite)
    xml.write(str(path), pretty=True)


def _link(run_key: str | None, run_url: str | None) -> str:
    if not run_key:
        return "-"
    if run_url:
        from urllib.parse import quote

        return f"[`{run_key}`]({run_url.replace('{run_key}', quote(run_key, safe=''))})"
    return f"`{run_key}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(result: GateResult, *, run_url: str | None) -> str:
    """A pull-request comment: the verdict, a row per evaluator, then the regressed items."""
    icon = {"PASS": "✅", "REGRESSION": "❌", "INCONCLUSIVE": "⚠️", "ERROR": "🛑"}[result.verdict]
    b = result.baseline
    lines = [
        f"### {icon} evalsvc gate: {_headline(result)}",
        "",
        f"Baseline `{b['name']}` v{b['version']} ({b['source']}) vs candidate `{result.candidate}`. One-sided "
        f"alpha {result.config.alpha} (Holm across evaluators), power {result.config.power}; differences in points "
        "with their interval at 1-2alpha.",
        "",
        "| " + " | ".join(_HEAD) + " | why |",
        "|" + "---|" * (len(_HEAD) + 1),
    ]
    for r in result.evaluators:
        lines.append("| " + " | ".join(_cell(x) for x in [*_row(r), r.reason]) + " |")
    if result.must_pass:
        lines += ["", "**Must-pass items**", ""]
        lines += [f"- {'✅' if m.passed else '❌'} `{m.item_id}`: {_cell(m.reason)}" for m in result.must_pass]
    if result.regressed:
        lines += ["", f"**Regressed items** (passed in the baseline, failed in the candidate: {len(result.regressed)})",
                  "", "| evaluator | item | step | baseline | candidate | candidate run | baseline run |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for x in result.regressed[:_MAX_ITEMS]:
            lines.append(f"| {x.evaluator} | `{_cell(x.item_id)}` | {_cell(x.step_name)} | {x.baseline} | {x.candidate} "
                         f"| {_link(x.candidate_run, run_url)} | {_link(x.baseline_run, run_url)} |")  # fmt: skip
        if len(result.regressed) > _MAX_ITEMS:
            lines.append(f"\n... and {len(result.regressed) - _MAX_ITEMS} more (see the JSON report)")
    return "\n".join(lines) + "\n"


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def to_json(result: GateResult) -> bytes:
    return orjson.dumps(_clean(result.as_dict()), option=orjson.OPT_INDENT_2)


def write_error_reports(*, verdict: str, code: int, message: str, mode: str, junit: Path | None,
                        markdown: Path | None, json_out: Path | None) -> None:  # fmt: skip
    """When the gate stops before a verdict (exit 3 or 4): the same files, saying why, so that a CI
    step that collects them shows the error rather than a missing file."""
    shown = f"{verdict} (shadow mode: would exit {code}; exits 0)" if mode == "shadow" else f"{verdict} (exit {code})"
    if junit:
        xml = JUnitXml()
        suite = TestSuite("evalsvc gate")
        suite.add_property("verdict", verdict)
        suite.add_property("exit_code", str(code))
        suite.add_property("mode", mode)
        case = TestCase("evalsvc gate", classname="evalsvc.gate")
        case.result = [Error(message, verdict)]
        suite.add_testcase(case)
        xml.add_testsuite(suite)
        xml.write(str(junit), pretty=True)
    if markdown:
        markdown.write_text(f"### 🛑 evalsvc gate: {shown}\n\n{message}\n", encoding="utf-8")
    if json_out:
        data = {"verdict": verdict, "exit_code": code, "reason": message, "mode": mode}
        json_out.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
