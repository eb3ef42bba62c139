"""Trace exports: Langfuse trace exports and LangSmith run payloads, every fixture asserted, imported
through ``evalsvc ingest --connector NAME`` and ``POST /v1/ingest/NAME`` on both stores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from connectors import get as get_connector
from evalsvc.cli import app as cli_app
from evalsvc.errors import PayloadRejected

from .conftest import Api

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
needs_fixtures = pytest.mark.skipif(
    not (FIXTURES / "langfuse").is_dir() or not (FIXTURES / "langsmith").is_dir(),
    reason=f"shared fixtures not found under {FIXTURES}",
)

# (connector, file) → run_key, workflow, number of steps, {step_key: (name, kind, parent, model, in, out, cost)}
LLM = "llm"
EXPECTED: dict[tuple[str, str], tuple[str, str, int, dict[str, tuple[Any, ...]]]] = {
    ("langfuse", "langgraph_python_trace_export.json"): ("e1fde3efec57ce8a69bafd3fb928a7eb", "LangGraph", 9, {
        "b024c7ee7680b708": ("LangGraph", "span", None, None, None, None, None),
        "4f6535aaebcda355": ("ChatOpenAI", LLM, "98d3e02591797c04", "gpt-4o-2024-08-06", 60, 15, 7.5e-05),
        "5ba09605e0929d78": ("ChatOpenAI", LLM, "3b239b11cbb2ac0b", "gpt-4o-2024-08-06", 108, 51, 0.000159),
        "21441266a9f21251": ("Web-Search", "span", "c8a18a38a3a115cb", None, None, None, None),
    }),
    ("langfuse", "openai_agents_trace_export.json"): ("fee618f96dc31e0ca38b2f7b26eb8b29", "Agent workflow", 5, {
        "e5a76f27f51ad40e": ("Agent workflow", "agent", None, None, None, None, None),
        "90d94774e8e3724d": ("response", LLM, "d950b668796240b5", "gpt-4.1-2025-04-14", 85, 29, 0.000402),
        "98870087af69bf06": ("response", LLM, "d950b668796240b5", "gpt-4.1-2025-04-14", 55, 15, 0.00023),
        "5b99c3e3411ed17b": ("get_weather", "tool", "d950b668796240b5", None, None, None, None),
    }),
    ("langfuse", "pydantic_ai_tools_trace_export.json"): ("7a38edd8123db47ad8dcb8aa4c5e3926", "joke-generator", 12, {
        "00d3f40ee8e3b716": ("run_joke_generator", "span", None, None, None, None, None),
        "be64c23f44dd98be": ("chat gpt-4o-mini", LLM, "5b5c52d029f28206", "gpt-4o-mini-2024-07-18", 265, 73,
                             8.355e-05),
        "8976b072313c51f2": ("chat gpt-4o-mini", LLM, "49ae06cbfa06611f", "gpt-4o-mini-2024-07-18", 502, 14,
                             8.37e-05),
        "99ec63d0b5ecdbf5": ("running tool: get_pun_suggestion", "tool", "93d5543f7340c2e6", None, None, None, None),
    }),
    ("langsmith", "py_wrap_openai_run_post_patch.json"): ("d0d84d31-923d-4cb5-94a8-40a0a0087578", "ChatOpenAI", 1, {
        "d0d84d31-923d-4cb5-94a8-40a0a0087578": ("ChatOpenAI", LLM, None, "gpt-4o-mini-2024-07-18", 9, 9, None),
    }),
    ("langsmith", "js_wrap_openai_reasoning_run_post_patch.json"): ("e954b8e3-c337-4a05-bf0a-ca2baac3ba48",
                                                                     "ChatOpenAI", 1, {
        "e954b8e3-c337-4a05-bf0a-ca2baac3ba48": ("ChatOpenAI", LLM, None, "o1-mini-2024-09-12", 43, 1901, None),
    }),
}  # fmt: skip

TIMES = {
    ("langfuse", "openai_agents_trace_export.json", "90d94774e8e3724d"): ("2025-09-30T09:04:01.001Z",
                                                                          "2025-09-30T09:04:02.151Z"),
    ("langsmith", "py_wrap_openai_run_post_patch.json", "d0d84d31-923d-4cb5-94a8-40a0a0087578"): (
        "2024-10-11T20:58:23.298773+00:00", "2024-10-11T20:58:24.417106+00:00"),
    # the JS SDK sends epoch milliseconds, and its update carries no id (taken from dotted_order)
    ("langsmith", "js_wrap_openai_reasoning_run_post_patch.json", "e954b8e3-c337-4a05-bf0a-ca2baac3ba48"): (
        "2024-10-13T07:05:38.291000+00:00", "2024-10-13T07:05:48.730000+00:00"),
}  # fmt: skip


def _parse(connector: str, name: str) -> list[dict[str, Any]]:
    # what `evalsvc ingest FILE` hands a connector for a whole-document file: a one-item list
    doc = json.loads((FIXTURES / connector / name).read_text())
    return [r if isinstance(r, dict) else r.model_dump() for r in get_connector(connector).to_steps([doc])]


@needs_fixtures
@pytest.mark.parametrize(("connector", "name"), sorted(EXPECTED))
def test_every_trace_fixture_parses(connector: str, name: str) -> None:
    run_key, workflow, count, expected = EXPECTED[(connector, name)]
    recs = _parse(connector, name)
    assert len(recs) == count and len({r["step_key"] for r in recs}) == count
    assert {(r["source"], r["run_key"], r["workflow"]) for r in recs} == {(connector, run_key, workflow)}
    by_key = {r["step_key"]: r for r in recs}
    for key, (step_name, kind, parent, model, tokens_in, tokens_out, cost) in expected.items():
        rec = by_key[key]
        got = (rec["name"], rec["kind"], rec.get("parent_step_key"), rec.get("model"), rec.get("input_tokens"),
               rec.get("output_tokens"), rec.get("cost_usd"))  # fmt: skip
        assert got == (step_name, kind, parent, model, tokens_in, tokens_out, cost), key
    # every export here is a finished, error-free trace (SOURCES.md): all completed, attempt 1
    assert {(r["status"], r["attempt"]) for r in recs} == {("completed", 1)}
    assert all("error" not in r for r in recs)
    # parents are steps of the same run
    assert {r["parent_step_key"] for r in recs if r.get("parent_step_key")} <= set(by_key)


@needs_fixtures
def test_trace_fixture_times_inputs_and_outputs() -> None:
    for (connector, name, key), (start, end) in TIMES.items():
        rec = next(r for r in _parse(connector, name) if r["step_key"] == key)
        assert (rec["started_at"], rec["ended_at"]) == (start, end)
    gen = next(r for r in _parse("langfuse", "openai_agents_trace_export.json") if r["step_key"] == "90d94774e8e3724d")
    assert gen["input"][0] == {"content": "What's the weather in Tokyo?", "role": "user"}  # JSON text decoded
    assert gen["output"]["id"] == "resp_0f00ca5b7e22bb4c0068db9d0110d8819da676bd1f2dd03a40"
    joke = next(r for r in _parse("langfuse", "pydantic_ai_tools_trace_export.json") if r["kind"] == "span")
    assert joke["run_attributes"] == {"langfuse.tags": ["example", "joke-generator"], "langfuse.environment": "default"}
    ls = _parse("langsmith", "py_wrap_openai_run_post_patch.json")[0]
    assert ls["input"]["messages"] == [{"role": "user", "content": "howdy"}]
    assert ls["output"]["choices"][0]["message"]["content"] == "Howdy! How can I assist you today?"
    assert ls["attributes"]["langsmith.provider"] == "openai"


def test_errors_levels_and_parents_from_hand_made_payloads() -> None:
    # neither export format has a public example with an error, so these are built from the schema
    lf = get_connector("langfuse").to_steps({"trace": {"id": "t1", "name": "qa"}, "observations": [
        {"id": "o1", "type": "SPAN", "name": "root", "startTime": "2025-01-01T00:00:00Z"},
        {"id": "o2", "type": "TOOL", "name": "search", "parentObservationId": "o1", "level": "ERROR",
         "statusMessage": "HTTP 502 from search API", "startTime": "2025-01-01T00:00:00Z",
         "endTime": "2025-01-01T00:00:01Z"},
        {"id": "o3", "type": "EVENT", "name": "note", "level": "WARNING", "startTime": "2025-01-01T00:00:02Z"},
    ]})  # fmt: skip
    assert [(r["step_key"], r["status"]) for r in lf] == [("o1", "running"), ("o2", "failed"), ("o3", "completed")]
    assert lf[1]["error"] == {"type": "ERROR", "message": "HTTP 502 from search API"}
    assert lf[2]["attributes"]["langfuse.level"] == "WARNING" and lf[2]["ended_at"] == lf[2]["started_at"]

    ls = get_connector("langsmith").to_steps({"runs": [
        {"id": "a", "name": "agent", "run_type": "chain", "start_time": "2024-01-01T00:00:00",
         "dotted_order": "20240101T000000000000Za"},
        {"id": "b", "name": "lookup", "run_type": "tool", "start_time": 1704067200000, "end_time": 1704067201000,
         "error": "KeyError: 'sku'", "dotted_order": "20240101T000000000000Za.20240101T000000000001Zb"},
        {"id": "c", "name": "llm", "run_type": "llm", "parent_run_id": "b", "prompt_tokens": 5,
         "completion_tokens": 2, "total_cost": "0.00001", "extra": {"metadata": {"ls_model_name": "gpt-4o"}}},
    ]})  # fmt: skip
    assert [(r["run_key"], r.get("parent_step_key")) for r in ls] == [
        ("a", None), ("a", "a"), ("a", "b")]  # fmt: skip
    assert ls[0]["started_at"] == "2024-01-01T00:00:00+00:00" and ls[0]["status"] == "running"
    assert ls[1]["status"] == "failed" and ls[1]["error"]["message"] == "KeyError: 'sku'"
    assert (ls[2]["model"], ls[2]["input_tokens"], ls[2]["output_tokens"], ls[2]["cost_usd"]) == ("gpt-4o", 5, 2, 1e-05)
    assert {r["workflow"] for r in ls} == {"agent"}


@pytest.mark.parametrize(
    ("connector", "payload", "field"),
    [
        ("langfuse", [], "body"),
        ("langfuse", {"observations": []}, "trace"),
        ("langfuse", {"trace": {"id": "t"}, "observations": {}}, "observations"),
        ("langfuse", {"trace": {"name": "x"}, "observations": []}, "trace.id"),
        ("langfuse", {"trace": {"id": "t"}, "observations": [{"type": "SPAN"}]}, "observations.0.id"),
        (
            "langfuse",
            {"trace": {"id": "t"}, "observations": [{"id": "o", "traceId": "u", "type": "SPAN"}]},
            "observations.0.traceId",
        ),
        ("langfuse", [{"trace": {"id": "t"}, "observations": []}, "x"], "1"),
        ("langsmith", "runs", "body"),
        ("langsmith", {"post": {"id": "a"}}, "post"),
        ("langsmith", {"post": [{"name": "no id"}]}, "post.0.id"),
        ("langsmith", {"post": [{"id": "a", "start_time": "last tuesday"}]}, "runs.a.start_time"),
        ("langsmith", {"runs": [{"id": "a", "total_cost": "free"}]}, "runs.a.total_cost"),
    ],
)
def test_malformed_exports_are_rejected_naming_the_field(connector: str, payload: Any, field: str) -> None:
    with pytest.raises(PayloadRejected) as info:
        get_connector(connector).to_steps(payload)
    assert info.value.field == field, info.value.message


@needs_fixtures
def test_every_trace_fixture_imports_through_the_api(api: Api) -> None:
    for (connector, name), (run_key, workflow, count, expected) in sorted(EXPECTED.items()):
        body = (FIXTURES / connector / name).read_bytes()
        r = api.post(f"/v1/ingest/{connector}", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 200 and r.json()["accepted"] == count, r.text
        run = api.get(f"/v1/runs/{run_key}", params={"source": connector}).json()
        assert (run["workflow"], run["status"], len(run["steps"])) == (workflow, "completed", count)
        steps = {s["step_key"]: s for s in run["steps"]}
        for key, (_, kind, parent, model, tokens_in, tokens_out, _) in expected.items():
            got = steps[key]
            assert (got["kind"], got["parent_step_key"], got["model"], got["input_tokens"], got["output_tokens"]) == (
                kind, parent, model, tokens_in, tokens_out)  # fmt: skip
        again = api.post(f"/v1/ingest/{connector}", content=body, headers={"content-type": "application/json"})
        assert again.json()["duplicate"] == count
    bad = api.post("/v1/ingest/langfuse", json={"trace": {"id": "t-bad"}, "observations": [{"type": "SPAN"}]})
    assert (bad.status_code, bad.json()["field"]) == (422, "observations.0.id")
    assert api.get("/v1/runs/t-bad").status_code == 404


@needs_fixtures
@pytest.mark.parametrize(("connector", "name"), sorted(EXPECTED))
def test_every_trace_fixture_imports_through_the_cli(connector: str, name: str, tmp_path: Path) -> None:
    env = {"EVALSVC_HOME": str(tmp_path / "home"), "EVALSVC_DATABASE_URL": "", "EVALSVC_BROKER_URL": ""}
    run_key, workflow, count, _ = EXPECTED[(connector, name)]
    path = str(FIXTURES / connector / name)
    result = CliRunner().invoke(cli_app, ["ingest", path, "--connector", connector], env=env)
    assert result.exit_code == 0, result.output
    assert f"{count} accepted, 0 duplicate, 0 rejected" in result.output
    shown = CliRunner().invoke(cli_app, ["runs", "show", run_key, "--json"], env=env)
    assert shown.exit_code == 0, shown.output
    detail = json.loads(shown.output)
    assert (detail["workflow"], len(detail["steps"])) == (workflow, count)
    assert f"0 accepted, {count} duplicate" in CliRunner().invoke(
        cli_app, ["ingest", path, "--connector", connector], env=env).output  # fmt: skip
