"""`evalsvc gate` and `evalsvc baseline` through the command line, on the worked example's data
(examples/gate): every exit code, the printed verdict matching it, JUnit that junitparser reads,
Markdown and JSON, shadow mode, re-scoring a baseline after an evaluator changed, production baselines."""

from __future__ import annotations

import importlib.util
import json
import re
import socket
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from junitparser import Error, Failure, JUnitXml, Skipped
from typer.testing import CliRunner

from evalsvc.cli import app
from evalsvc.settings import Settings
from evalsvc.store.db import get_engine
from evalsvc.store.models import table
from evalsvc.store.models_gate import GateBaselineItem

from .fake_llm import PLANTED, FakeLLM

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "gate"
CODES = {"PASS": 0, "REGRESSION": 1, "INCONCLUSIVE": 2, "ERROR": 3, "CONFIG ERROR": 4}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    spec = importlib.util.spec_from_file_location("make_data", EXAMPLE / "make_data.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path_factory.mktemp("gate-data")
    paths: dict[str, Path] = module.generate(out)
    paths["config"] = EXAMPLE / "evalsvc.yaml"
    return paths


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"EVALSVC_HOME": str(tmp_path / "home"), "EVALSVC_DATABASE_URL": "", "EVALSVC_BROKER_URL": "",
            "EVALSVC_WEBHOOK_SECRET": "", "EVALSVC_GATE_RUN_URL": "", "EVALSVC_GATE_FAIL_ON_INCONCLUSIVE": "true"}  # fmt: skip


def run(env: dict[str, str], *args: str, code: int = 0) -> str:
    result = CliRunner().invoke(app, list(args), env=env)
    assert result.exit_code == code, (args, result.output, result.exception)
    return result.output


def verdict_line(output: str) -> tuple[str, int]:
    """The printed verdict and the exit code it names."""
    m = re.search(r"verdict: ([A-Z ]+?) \((?:exit (\d)|shadow mode: would exit (\d))", output)
    assert m, output
    return m.group(1), int(m.group(2) or m.group(3))


def gate(env: dict[str, str], data: dict[str, Path], candidate: Path, code: int, *extra: str,
         config: Path | None = None) -> str:  # fmt: skip
    out = run(env, "gate", "--candidate", str(candidate), "--baseline", "main", "--config",
              str(config or data["config"]), *extra, code=code)  # fmt: skip
    verdict, named = verdict_line(out)
    if "--mode" not in extra:
        assert named == code and CODES[verdict] == code, out
    return out


def promote(env: dict[str, str], data: dict[str, Path], config: Path | None = None) -> str:
    return run(env, "baseline", "promote", "main", "--from", str(data["baseline"]), "--config",
               str(config or data["config"]))  # fmt: skip


def test_pass_regression_inconclusive_with_reports(env: dict[str, str], data: dict[str, Path], tmp_path: Path) -> None:
    out = promote(env, data)
    assert "baseline main v1 (file, 2400 verdicts" in out and "87.9%" in out
    shown = json.loads(run(env, "baseline", "show", "main", "--json"))
    assert shown["version"] == 1 and shown["items"] == 2400
    assert {e["evaluator"]: e["items"] for e in shown["evaluators"]} == {
        "total_matches_expected": 800, "total_is_number": 800, "summary_has_no_card_number": 800}  # fmt: skip

    env = {**env, "EVALSVC_GATE_RUN_URL": "https://evalsvc.example.com/ui/runs/{run_key}"}
    expected = {"candidate_ok": 0, "candidate_regressed": 1, "candidate_small": 2}
    for name, code in expected.items():
        junit, md, js = tmp_path / f"{name}.xml", tmp_path / f"{name}.md", tmp_path / f"{name}.json"
        gate(env, data, data[name], code, "--junit", str(junit), "--markdown", str(md), "--json", str(js))
        result = json.loads(js.read_text())
        assert result["exit_code"] == code
        suites = list(JUnitXml.fromfile(str(junit)))
        cases = {c.name: c for suite in suites for c in suite}
        assert set(cases) == {"total_matches_expected", "total_is_number", "summary_has_no_card_number", "inv-0001"}
        failures = sum(1 for c in cases.values() if any(isinstance(r, Failure) for r in c.result))
        assert (failures == 0) == (code == 0)
        text = md.read_text()
        icon = {0: "✅", 1: "❌", 2: "⚠️"}[code]
        assert text.splitlines()[0].startswith(f"### {icon} evalsvc gate: ") and f"(exit {code})" in text
        assert "| total_matches_expected | pass_rate |" in text

    ok = json.loads((tmp_path / "candidate_ok.json").read_text())
    tme = next(e for e in ok["evaluators"] if e["name"] == "total_matches_expected")
    assert tme["verdict"] == "PASS" and tme["comparison"]["n"] == 800
    assert tme["comparison"]["mde"] <= 0.02 and tme["comparison"]["low"] > -0.02

    bad = json.loads((tmp_path / "candidate_regressed.json").read_text())
    tme = next(e for e in bad["evaluators"] if e["name"] == "total_matches_expected")
    assert tme["verdict"] == "REGRESSION" and tme["comparison"]["high"] < 0 and tme["p_worse_adjusted"] < 0.05
    assert bad["regressed_items"] and all(r["candidate"] is False for r in bad["regressed_items"])
    md = (tmp_path / "candidate_regressed.md").read_text()
    first = bad["regressed_items"][0]
    assert f"[`{first['candidate_run']}`](https://evalsvc.example.com/ui/runs/{first['candidate_run']})" in md
    cases = {c.name: c for s in JUnitXml.fromfile(str(tmp_path / "candidate_regressed.xml")) for c in s}
    assert isinstance(cases["total_matches_expected"].result[0], Failure)
    assert cases["total_matches_expected"].result[0].type == "REGRESSION"

    small = json.loads((tmp_path / "candidate_small.json").read_text())
    assert {e["verdict"] for e in small["evaluators"] if e["comparison"] and e["comparison"]["n"]} == {"INCONCLUSIVE"}
    assert all("underpowered" in e["reason"] for e in small["evaluators"] if e["verdict"] == "INCONCLUSIVE")


def test_shadow_mode_and_the_inconclusive_policy(env: dict[str, str], data: dict[str, Path], tmp_path: Path) -> None:
    promote(env, data)
    out = gate(env, data, data["candidate_regressed"], 0, "--mode", "shadow")
    assert verdict_line(out) == ("REGRESSION", 1) and "shadow mode: would exit 1; exits 0" in out
    out = run(env, "gate", "--candidate", str(data["candidate_ok"]), "--baseline", "nope", "--config",
              str(data["config"]), "--mode", "shadow")  # fmt: skip
    assert verdict_line(out) == ("CONFIG ERROR", 4) and "no baseline named 'nope'" in out

    allowed = {**env, "EVALSVC_GATE_FAIL_ON_INCONCLUSIVE": "false"}
    js = tmp_path / "small.json"
    out = run(allowed, "gate", "--candidate", str(data["candidate_small"]), "--baseline", "main", "--config",
              str(data["config"]), "--json", str(js), "--junit", str(tmp_path / "small.xml"))  # fmt: skip
    assert verdict_line(out) == ("INCONCLUSIVE", 0) and "allowed: EVALSVC_GATE_FAIL_ON_INCONCLUSIVE=false" in out
    assert json.loads(js.read_text())["exit_code"] == 0
    cases = [c for s in JUnitXml.fromfile(str(tmp_path / "small.xml")) for c in s]
    assert not any(isinstance(r, Failure) for c in cases for r in c.result)
    assert any(isinstance(r, Skipped) for c in cases for r in c.result)


def _rewrite(src: Path, dst: Path, change: Any) -> Path:
    rows = [json.loads(line) for line in src.read_text().splitlines()]
    dst.write_text("".join(json.dumps(change(i, r)) + "\n" for i, r in enumerate(rows)))
    return dst


def test_must_pass_items_and_floors(env: dict[str, str], data: dict[str, Path], tmp_path: Path) -> None:
    promote(env, data)

    def break_first(i: int, r: dict[str, Any]) -> dict[str, Any]:
        if i == 0:
            r["output"]["total"] = -1
        return r

    junit = tmp_path / "g.xml"
    out = gate(env, data, _rewrite(data["candidate_ok"], tmp_path / "c1.jsonl", break_first), 1, "--junit", str(junit))
    assert "must-pass inv-0001: FAILED" in out
    cases = {c.name: c for s in JUnitXml.fromfile(str(junit)) for c in s}
    assert isinstance(cases["inv-0001"].result[0], Failure)

    def leak_cards(i: int, r: dict[str, Any]) -> dict[str, Any]:
        if i % 50 == 7:  # 2% of the summaries: below the floor of 99%
            r["output"]["summary"] += " paid with card 4111 1111 1111 1111"
        return r

    out = gate(env, data, _rewrite(data["candidate_ok"], tmp_path / "c2.jsonl", leak_cards), 1)
    assert re.search(r"summary_has_no_card_number: 98\.00% is below the floor 99\.00%", out)


def test_errors_exit_3_and_configuration_problems_exit_4(env: dict[str, str], data: dict[str, Path],
                                                         tmp_path: Path) -> None:  # fmt: skip
    promote(env, data)

    def other_items(i: int, r: dict[str, Any]) -> dict[str, Any]:
        r["attributes"]["item_id"] = f"other-{i}"
        return r

    out = gate(env, data, _rewrite(data["candidate_ok"], tmp_path / "c.jsonl", other_items), 3)
    assert "no items to compare" in out

    assert "no baseline named 'nope'" in run(env, "baseline", "show", "nope", code=4)
    # a usage error is a configuration problem (4), never 2, the code of INCONCLUSIVE
    assert verdict_line(run(env, "gate", "--candidate", "c.jsonl", code=4)) == ("CONFIG ERROR", 4)
    junit, js = tmp_path / "err.xml", tmp_path / "err.json"
    gate(env, data, data["candidate_ok"], 4, "--baseline", "missing", "--junit", str(junit), "--json", str(js))
    [case] = [c for suite in JUnitXml.fromfile(str(junit)) for c in suite]  # the last --baseline wins
    assert isinstance(case.result[0], Error) and "no baseline named 'missing'" in (case.result[0].message or "")
    assert json.loads(js.read_text())["exit_code"] == 4
    bad = tmp_path / "bad.yaml"
    bad.write_text(data["config"].read_text().replace("margin: 0.02", "margin: 5"))
    out = gate(env, data, data["candidate_ok"], 4, config=bad)
    assert "gate.margin" in out
    bad.write_text(data["config"].read_text() + "    no_such_evaluator: {floor: 0.5}\n")
    assert "gate.evaluators.no_such_evaluator" in gate(env, data, data["candidate_ok"], 4, config=bad)
    assert "file" in gate(env, data, tmp_path / "missing.jsonl", 4)
    (tmp_path / "broken.jsonl").write_text('{"source": "ci", "run_key": "r"}\n')
    assert "step_key" in gate(env, data, tmp_path / "broken.jsonl", 4)


def test_score_metric_uses_the_paired_bootstrap(env: dict[str, str], data: dict[str, Path], tmp_path: Path) -> None:
    config = tmp_path / "evalsvc.yaml"
    config.write_text(data["config"].read_text() + "    total_matches_expected: {metric: score, margin: 0.03}\n")
    promote(env, data, config)
    js = tmp_path / "g.json"
    gate(env, data, data["candidate_regressed"], 1, "--json", str(js), config=config)
    gate(env, data, data["candidate_ok"], 0, config=config)
    tme = next(e for e in json.loads(js.read_text())["evaluators"] if e["name"] == "total_matches_expected")
    assert tme["metric"] == "score" and tme["comparison"]["metric"] == "score"
    assert tme["comparison"]["high"] < -0.03 and tme["verdict"] == "REGRESSION"


def test_changed_evaluator_rescores_the_baseline_or_exits_4(env: dict[str, str], data: dict[str, Path],
                                                            tmp_path: Path) -> None:  # fmt: skip
    promote(env, data)
    changed = tmp_path / "evalsvc.yaml"
    changed.write_text(data["config"].read_text().replace("abs_tol: 0.01", "abs_tol: 0.02"))
    js = tmp_path / "g.json"
    gate(env, data, data["candidate_ok"], 0, "--json", str(js), config=changed)
    tme = next(e for e in json.loads(js.read_text())["evaluators"] if e["name"] == "total_matches_expected")
    assert tme["rescored_baseline"] is True and tme["comparison"]["n"] == 800

    # outputs no longer kept (e.g. an old baseline): the gate cannot re-score and says so
    engine = get_engine(Settings(home=Path(env["EVALSVC_HOME"])).resolved_database_url())
    with engine.begin() as conn:
        conn.execute(sa.update(table(GateBaselineItem)).values(record=None))
    out = gate(env, data, data["candidate_ok"], 4, config=changed)
    assert "promote a new baseline" in out


def test_production_baseline(settings: Settings, data: dict[str, Path], tmp_path: Path) -> None:
    env = {"EVALSVC_HOME": str(settings.home), "EVALSVC_DATABASE_URL": settings.database_url or "",
           "EVALSVC_BROKER_URL": "", "EVALSVC_WEBHOOK_SECRET": "", "EVALSVC_GATE_RUN_URL": "",
           "EVALSVC_GATE_FAIL_ON_INCONCLUSIVE": "true"}  # fmt: skip
    run(env, "evaluators", "apply", str(data["config"]))
    run(env, "ingest", str(data["baseline"]))
    out = run(env, "baseline", "promote", "main", "--from", "production", "--step", "extr*",
              "--evaluator", "total_matches_expected", "--evaluator", "total_is_number",
              "--since", "2000-01-01")  # fmt: skip
    assert "(production, 1600 verdicts" in out
    assert "--from production" in run(env, "baseline", "promote", "x", "--from", str(data["baseline"]), "--step",
                                      "a", code=4)  # fmt: skip
    run(env, "baseline", "promote", "main", "--from", "production", "--until", "2000-01-01", code=4)
    shown = json.loads(run(env, "baseline", "show", "main", "--json"))
    assert shown["source"] == "production" and shown["description"]["step"] == "extr*"
    js = tmp_path / "g.json"
    gate(env, data, data["candidate_ok"], 0, "--json", str(js))
    result = json.loads(js.read_text())
    assert {e["name"]: e["verdict"] for e in result["evaluators"]} == {
        "total_matches_expected": "PASS", "total_is_number": "PASS", "summary_has_no_card_number": "PASS"}  # fmt: skip
    gate(env, data, data["candidate_regressed"], 1)
    # production baselines keep step references: a changed evaluator re-scores the stored steps
    changed = tmp_path / "evalsvc.yaml"
    changed.write_text(data["config"].read_text().replace("abs_tol: 0.01", "abs_tol: 0.02"))
    gate(env, data, data["candidate_regressed"], 1, config=changed)


JUDGE_CONFIG = """
evaluators:
  - name: summary_ok
    scorer: llm_judge
    target: {{step: extract}}
    params:
      model: openai/fake-judge
      api_base: {url}
      prompt: "Is this summary acceptable? {{{{ output }}}}"
      choices: {{pass: 1.0, fail: 0.0}}
      fields: {{output: output.summary}}
      max_retries: 0
      timeout: 5
    threshold: 0.5
gate:
  min_items: 10
  margin: 0.2
  evaluators:
    summary_ok: {{repeats: 2}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_judge_shares_the_verdict_cache_and_an_outage_exits_3(env: dict[str, str], data: dict[str, Path],
                                                              tmp_path: Path) -> None:  # fmt: skip
    env = {**env, "OPENAI_API_KEY": "sk-fake"}
    lines = data["baseline"].read_text().splitlines()[:60]
    base = tmp_path / "base.jsonl"
    base.write_text("\n".join(lines) + "\n")
    with FakeLLM() as fake:
        config = tmp_path / "judge.yaml"
        config.write_text(JUDGE_CONFIG.format(url=fake.url))
        run(env, "baseline", "promote", "main", "--from", str(base), "--config", str(config))
        assert fake.calls == 120  # 60 items, 2 repeats each
        js = tmp_path / "g.json"
        gate(env, data, base, 0, "--json", str(js), config=config)
        assert fake.calls == 120  # the same outputs: every verdict from the cache
        summary = json.loads(js.read_text())["evaluators"][0]
        assert summary["judge_noise"] == 0.0 and summary["repeats"] == 2

        def planted(i: int, r: dict[str, Any]) -> dict[str, Any]:
            r["output"]["summary"] += f" {PLANTED}"
            return r

        worse = _rewrite(base, tmp_path / "worse.jsonl", planted)
        gate(env, data, worse, 1, config=config)
        assert fake.calls == 240

        def same(i: int, r: dict[str, Any]) -> dict[str, Any]:
            r["output"]["summary"] = "one summary for all"
            return r

        gate(env, data, _rewrite(base, tmp_path / "same.jsonl", same), 0, config=config)
        assert fake.calls == 242  # one call per distinct prompt and repeat, however many items share it

    config.write_text(JUDGE_CONFIG.format(url=f"http://127.0.0.1:{_free_port()}/v1"))

    def changed(i: int, r: dict[str, Any]) -> dict[str, Any]:
        r["output"]["summary"] += " (v2)"
        return r

    out = gate(env, data, _rewrite(base, tmp_path / "new.jsonl", changed), 3, config=config)
    assert "summary_ok: 60 errors" in out and "judge call failed" in out
    gate(env, data, base, 0, config=config)  # the judge is down, but these verdicts are cached


def test_a_candidate_already_in_the_store(env: dict[str, str], data: dict[str, Path], tmp_path: Path) -> None:
    """`--candidate store` scores stored runs (picked by run attribute, workflow, run key or time)
    in memory, with the same verdict as the same records given as a file."""
    promote(env, data)
    for name, release in (("candidate_ok", "ok"), ("candidate_regressed", "bad")):
        tagged = _rewrite(data[name], tmp_path / f"{name}.tagged.jsonl",
                          lambda _, r, release=release: {**r, "run_attributes": {"release": release}})  # fmt: skip
        run(env, "ingest", str(tagged))
    stored: dict[str, Any] = {}
    for release, code in (("ok", 0), ("bad", 1)):
        out_json = tmp_path / f"store-{release}.json"
        out = run(env, "gate", "--candidate", "store", "--attr", f"release={release}", "--baseline", "main",
                  "--config", str(data["config"]), "--json", str(out_json), code=code)  # fmt: skip
        assert verdict_line(out) == ({0: "PASS", 1: "REGRESSION"}[code], code)
        stored[release] = json.loads(out_json.read_text())
        assert stored[release]["candidate"] == f"stored runs: release={release}"
    from_file = tmp_path / "file-bad.json"
    gate(env, data, data["candidate_regressed"], 1, "--json", str(from_file))
    same = json.loads(from_file.read_text())
    assert [(e["name"], e["verdict"], e["comparison"]) for e in stored["bad"]["evaluators"]] == [
        (e["name"], e["verdict"], e["comparison"]) for e in same["evaluators"]]  # fmt: skip
    # a few runs by key: too few items to tell
    few = ["ok-inv-0001", "ok-inv-0002", "ok-inv-0003"]
    out = run(env, "gate", "--candidate", "store", *(a for k in few for a in ("--run", k)), "--baseline", "main",
              "--config", str(data["config"]), code=2)  # fmt: skip
    assert verdict_line(out) == ("INCONCLUSIVE", 2)
    # selectors need `store`, `store` needs a selector, an attribute needs KEY=VALUE: exit 4, named
    for args, field in (
        (["--candidate", str(data["candidate_ok"]), "--workflow", "invoice-agent"], "candidate"),
        (["--candidate", "store"], "candidate"),
        (["--candidate", "store", "--attr", "release"], "attr"),
    ):
        out = run(env, "gate", *args, "--baseline", "main", "--config", str(data["config"]), code=4)
        assert f"[{field}]" in out and verdict_line(out) == ("CONFIG ERROR", 4)
