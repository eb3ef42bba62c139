"""Drift and anomaly through the front door: history ingested over the HTTP API, baselines fitted
and windows checked with the ``evalsvc drift`` commands, and the ``step_anomaly`` scorer applied
from an ``evalsvc.yaml`` and run by the real scoring loop, its verdicts read back over HTTP."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from typer.testing import CliRunner

from evalsvc.cli import app
from evalsvc.settings import Settings

from .conftest import Api
from .test_stats_store import DAY1, history

EVALUATORS = """
evaluators:
  - name: classify_anomaly
    scorer: step_anomaly
    target: {step: classify}
    params: {baseline: classify_prod, alpha: 0.005}
    on_fail: review
"""


def _env(settings: Settings) -> dict[str, str]:
    return {"EVALSVC_HOME": str(settings.home), "EVALSVC_DATABASE_URL": settings.database_url or "",
            "EVALSVC_BROKER_URL": "", "EVALSVC_WEBHOOK_SECRET": ""}  # fmt: skip


def cli(settings: Settings, *args: str, code: int = 0) -> str:
    result = CliRunner().invoke(app, list(args), env=_env(settings))
    assert result.exit_code == code, (args, result.output, result.exception)
    return result.output


def _evals(api: Api, **query: str) -> list[dict[str, object]]:
    r = api.get("/v1/evals", params={"evaluator": "classify_anomaly", "limit": 1000, **query})
    assert r.status_code == 200, r.text
    out: list[dict[str, object]] = r.json()
    return out


def test_fit_check_and_anomaly_verdicts_end_to_end(api: Api, other_api: Api, settings: Settings) -> None:
    api.apply(EVALUATORS)
    assert api.ingest(history(400, start=DAY1, seed=11, prefix="a"))["accepted"] == 400
    # no baseline yet: the anomaly scorer has nothing to compare with, and says so
    early = _evals(api)
    assert len(early) == 400 and {e["status"] for e in early} == {"skipped"}
    assert early[0]["skip_reason"] == "no baseline 'classify_prod' fitted"

    out = cli(settings, "drift", "fit", "classify_prod", "--step", "classify", "--model", "m-v1",
              "--until", "2026-11-02T00:00:00Z", "--categorical", "output.label", "--text", "output.reply")  # fmt: skip
    assert "classify_prod v1: fitted on 400 steps" in out and "smallest p-value 0.005" in out

    day2 = DAY1 + timedelta(days=1)
    same = history(150, start=day2, seed=12, prefix="b")
    moved = history(150, start=day2, seed=13, prefix="c", model="m-v2", latency=1500, mix=(0.4, 0.3, 0.3),
                    new_words=0.3)  # fmt: skip
    odd = history(3, start=day2, seed=14, prefix="odd")
    odd[0]["ended_at"] = (day2 + timedelta(seconds=60)).isoformat()  # 60 s against ~1.2 s
    odd[1]["input_tokens"] = 9000
    odd[2]["output"] = {"label": "invoice", "reply": "total " * 400}
    api.ingest(same + moved + odd)

    # the scorer: each odd step is flagged, linked to its run and step; ordinary steps mostly pass
    verdicts = {e["run_key"]: e for e in _evals(api) if e["status"] == "completed"}
    for key, feature in (("odd00000", "latency_ms"), ("odd00001", "tokens"), ("odd00002", "output_length")):
        v = verdicts[key]
        assert v["passed"] is False and v["label"] == "anomalous", v
        assert feature in str(v["explanation"]) and "classify_prod' v1" in str(v["explanation"])
        run = api.get(f"/v1/runs/{key}").json()
        assert v["step_id"] == run["steps"][0]["id"] and v["attempt"] == 1
    flagged_b = sum(1 for k, v in verdicts.items() if k.startswith("b") and v["passed"] is False)
    assert flagged_b <= 6  # alpha 0.005 of 150 unchanged steps: about 1 expected
    assert {r["run_key"] for r in api.get("/v1/reviews").json()} >= {"odd00000", "odd00001", "odd00002"}

    # the window of the new model drifted; the CLI exits 1 with --exit-code and prints the table
    out = cli(settings, "drift", "check", "classify_prod", "--model", "m-v2", "--since", "2026-11-02T00:00:00Z",
              "--until", "2026-11-03T00:00:00Z", "--exit-code", code=1)  # fmt: skip
    assert "DRIFT" in out and "latency_ms" in out and "output.label" in out
    checks = json.loads(cli(settings, "drift", "check", "classify_prod", "--model", "m-v2", "--since",
                            "2026-11-02T00:00:00Z", "--until", "2026-11-03T00:00:00Z", "--json"))  # fmt: skip
    (check,) = checks
    found = {(r["feature"], r["statistic"]): r for r in check["reports"]}
    assert check["drifted"] and check["n_window"] == 150 and check["baseline_version"] == 1
    for key in [("latency_ms", "ks"), ("output.label", "chi2"), ("output.reply", "oov"), ("latency_ms", "psi")]:
        assert found[key]["drifted"], key
    assert all(e["run_key"].startswith("c") for e in found[("latency_ms", "ks")]["example_runs"])

    # the same model's next day, drawn alike: the KS and chi-square tests stay quiet
    aa = json.loads(cli(settings, "drift", "check", "classify_prod", "--since", "2026-11-02T00:00:00Z",
                        "--until", "2026-11-03T00:00:00Z", "--json", "--no-store"))[0]  # fmt: skip
    assert aa["n_window"] == 153  # model v1: the ordinary and the odd steps
    assert not [r for r in aa["reports"] if r["drifted"] and r["statistic"] in ("ks", "chi2")]

    listed = json.loads(cli(settings, "drift", "list", "--json"))
    assert [(b["name"], b["version"], b["current"]) for b in listed] == [("classify_prod", 1, True)]
    stored = json.loads(cli(settings, "drift", "reports", "--drifted", "--json", "--limit", "500"))
    assert check["check_id"] in {r["check_id"] for r in stored}
    assert len({r["check_id"] for r in stored}) == 2  # the two stored checks of m-v2 (the A/A one was not stored)
    assert "DRIFT" in cli(settings, "drift", "reports", "--drifted")
    # and over HTTP, scoped to the caller's project
    r = api.get("/v1/drift/reports", params={"check_id": check["check_id"], "drifted": "true"})
    assert r.status_code == 200 and {(x["feature"], x["statistic"]) for x in r.json()} == {
        k for k, v in found.items() if v["drifted"]
    }
    assert other_api.get("/v1/drift/reports").json() == []


def test_refit_pin_and_errors_through_the_cli(api: Api, settings: Settings) -> None:
    api.ingest(history(60, start=DAY1, seed=21, prefix="a"))
    assert "v1: fitted on 60 steps; no anomaly model" in cli(settings, "drift", "fit", "b", "--no-anomaly",
                                                             "--numeric", "latency_ms")  # fmt: skip
    assert "v2" in cli(settings, "drift", "fit", "b", "--no-anomaly", "--numeric", "latency_ms")
    assert "v1 pinned" in cli(settings, "drift", "pin", "b", "1")
    assert "v3" in cli(settings, "drift", "fit", "b", "--no-anomaly", "--numeric", "latency_ms")
    current = [b["version"] for b in json.loads(cli(settings, "drift", "list", "b", "--json")) if b["current"]]
    assert current == [1]
    assert "unpinned" in cli(settings, "drift", "pin", "b", "--unpin")
    current = [b["version"] for b in json.loads(cli(settings, "drift", "list", "b", "--json")) if b["current"]]
    assert current == [3]

    assert "no baseline named 'nope'" in cli(settings, "drift", "check", "nope", code=4)
    assert "latency" in cli(settings, "drift", "fit", "c", "--numeric", "latency", code=4)
    assert "30m, 24h or 7d" in cli(settings, "drift", "check", "b", "--last", "yesterday", code=4)
    assert "no finished steps" in cli(settings, "drift", "fit", "c", "--step", "missing", code=4)
    assert "must be after since" in cli(settings, "drift", "fit", "c", "--since", "2026-11-02",
                                        "--until", "2026-11-01", code=4)  # fmt: skip
    assert "VERSION" in cli(settings, "drift", "pin", "b", code=4)


CONFIG = """
evaluators:
  - name: classify_anomaly
    scorer: step_anomaly
    target: {step: classify}
    params: {baseline: classify_prod}
baselines:
  - name: classify_prod
    target: {step: classify, model: m-v1}
    history: {since: 2026-11-01T00:00:00Z, until: 2026-11-02T00:00:00Z}
    numeric: [latency_ms, tokens]
    categorical: [output.label]
    anomaly: [latency_ms, tokens]
  - name: all_steps
    history: {last: 3650d}
    anomaly: []
"""


def test_baselines_as_code_in_evalsvc_yaml(api: Api, settings: Settings, tmp_path: Path) -> None:
    api.ingest(history(80, start=DAY1, seed=31, prefix="a") + history(30, start=DAY1 + timedelta(days=1), seed=32,
                                                                       prefix="b"))  # fmt: skip
    path = tmp_path / "evalsvc.yaml"
    path.write_text(CONFIG)
    assert "classify_anomaly" in cli(settings, "evaluators", "apply", str(path))  # the same file
    out = cli(settings, "drift", "fit", "--config", str(path))
    assert "classify_prod v1: fitted on 80 steps; anomaly model on latency_ms, tokens" in out
    assert "all_steps v1: fitted on 110 steps; no anomaly model" in out
    assert "classify_prod v2" in cli(settings, "drift", "fit", "classify_prod", "--config", str(path))
    fitted = json.loads(cli(settings, "drift", "list", "classify_prod", "--json"))[0]
    assert fitted["target"] == {"step": "classify", "model": "m-v1"}
    assert fitted["spec"]["numeric"] == ["latency_ms", "tokens"] and fitted["spec"]["categorical"] == ["output.label"]

    path.write_text(CONFIG.replace("model: m-v1", "modle: m-v1"))
    assert "baselines.0.target.modle" in cli(settings, "drift", "fit", "--config", str(path), code=4)
    path.write_text(CONFIG.replace("last: 3650d", "last: forever"))
    assert "baselines.1.history.last" in cli(settings, "drift", "fit", "--config", str(path), code=4)
    assert "name the baseline" in cli(settings, "drift", "fit", code=4)
    assert len(json.loads(cli(settings, "drift", "list", "--json"))) == 3  # nothing fitted by the bad files
