"""POST /v1/ingest/json through the real app: per-item answers, idempotency, merging, limits."""

from __future__ import annotations

import gzip
import itertools
import random
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from evalsvc.api.main import create_app
from evalsvc.settings import Settings

from .conftest import Api, make_key
from .factories import SCHEMA_YAML, record


def _steps(api: Api, run_key: str) -> list[dict[str, Any]]:
    r = api.get(f"/v1/runs/{run_key}")
    assert r.status_code == 200, r.text
    steps: list[dict[str, Any]] = r.json()["steps"]
    return steps


def test_batch_answers_each_item(api: Api) -> None:
    body = [
        record("r1", "a"),
        record("r1", "b", attempt=0),
        record("r1", "c", started_at="2026-11-01T10:00:05Z", ended_at="2026-11-01T10:00:01Z"),
        "not an object",
        record("r1", "d", surprise=1),
        record("r1", "a"),
    ]
    r = api.post("/v1/ingest/json", json=body)
    assert r.status_code == 207
    data = r.json()
    assert (data["accepted"], data["duplicate"], data["rejected"]) == (1, 1, 4)
    items = {i["index"]: i for i in data["items"]}
    assert items[0] == {"index": 0, "status": "accepted", "op": "created"}
    assert items[1]["status"] == "rejected" and items[1]["field"] == "attempt"
    assert "greater than or equal to 1" in items[1]["reason"]
    assert items[2]["field"] == "ended_at" and "before started_at" in items[2]["reason"]
    assert items[3]["field"] is None and "JSON object" in items[3]["reason"]
    assert items[4]["field"] == "surprise" and "Extra inputs" in items[4]["reason"]
    assert items[5]["status"] == "duplicate"
    # nothing accepted was lost: the one good step is stored once
    assert [(s["step_key"], s["attempt"]) for s in _steps(api, "r1")] == [("a", 1)]


def test_same_record_twice_is_stored_once(api: Api) -> None:
    first = api.ingest([record("r1", "a"), record("r1", "b")])
    second = api.ingest([record("r1", "a"), record("r1", "b")])
    assert first["accepted"] == 2
    assert second == {"accepted": 0, "duplicate": 2, "rejected": 0,
                      "items": [{"index": 0, "status": "duplicate"}, {"index": 1, "status": "duplicate"}]}  # fmt: skip
    assert len(_steps(api, "r1")) == 2


def test_end_after_start_completes_the_row(api: Api) -> None:
    start = {k: v for k, v in record("r1", "a").items() if k not in ("ended_at", "output")} | {"status": "running"}
    end = {"source": "json", "run_key": "r1", "step_key": "a", "status": "completed",
           "ended_at": "2026-11-01T10:00:02Z", "output": {"total": 3}}  # fmt: skip
    api.ingest([start])
    (step,) = _steps(api, "r1")
    assert step["status"] == "running" and step["output"] is None
    assert api.get("/v1/runs/r1").json()["status"] == "running"
    answer = api.ingest([end])
    assert answer["items"] == [{"index": 0, "status": "accepted", "op": "updated"}]
    (step,) = _steps(api, "r1")
    assert step["status"] == "completed"
    assert step["output"] == {"total": 3}
    assert step["kind"] == "llm"  # kept from the start record, which the end record did not repeat
    assert step["latency_ms"] == 2000.0
    assert api.get("/v1/runs/r1").json()["status"] == "completed"


def _lifecycle(run_key: str) -> list[dict[str, Any]]:
    """A run's records: a step's start and end, a failed first attempt and its retry."""
    return [
        {"source": "json", "run_key": run_key, "step_key": "classify", "status": "running", "kind": "llm",
         "started_at": "2026-11-01T10:00:00Z", "input": "mail", "workflow": "wf"},
        {"source": "json", "run_key": run_key, "step_key": "classify", "status": "completed",
         "ended_at": "2026-11-01T10:00:01Z", "output": "invoice", "attributes": {"model_version": "2"}},
        {"source": "json", "run_key": run_key, "step_key": "extract", "attempt": 1, "status": "failed",
         "started_at": "2026-11-01T10:00:01Z", "ended_at": "2026-11-01T10:00:02Z", "error": "timeout"},
        {"source": "json", "run_key": run_key, "step_key": "extract", "attempt": 2, "status": "running",
         "started_at": "2026-11-01T10:00:03Z"},
        {"source": "json", "run_key": run_key, "step_key": "extract", "attempt": 2, "status": "completed",
         "ended_at": "2026-11-01T10:00:04Z", "output": {"total": 1}},
    ]  # fmt: skip


def _state(api: Api, run_key: str) -> Any:
    run = api.get(f"/v1/runs/{run_key}").json()
    steps = sorted(
        (s["step_key"], s["attempt"], s["status"], s["kind"], s["input"], s["output"], s["error"], s["started_at"],
         s["ended_at"], orjson.dumps(s["attributes"], option=orjson.OPT_SORT_KEYS))
        for s in run["steps"]
    )  # fmt: skip
    return run["status"], run["workflow"], run["started_at"], run["ended_at"], steps


def test_any_order_converges_to_the_same_rows(api: Api) -> None:
    records = _lifecycle("base")
    api.ingest(records)
    expected = _state(api, "base")
    assert expected[0] == "completed"
    orders = list(itertools.permutations(range(len(records))))
    for n, order in enumerate(random.Random(5).sample(orders, 12)):
        key = f"perm{n}"
        recs = [dict(records[i], run_key=key) for i in order]
        # in one batch, one record at a time, and each record twice
        if n % 3 == 0:
            api.ingest(recs)
        else:
            for rec in recs:
                api.ingest([rec])
            if n % 3 == 2:
                answer = api.ingest(recs)
                assert answer["duplicate"] == len(recs)
        assert _state(api, key)[1:] == expected[1:] and _state(api, key)[0] == expected[0], order


def test_jsonl_body_and_records_envelope(api: Api) -> None:
    lines = b"\n".join(orjson.dumps(record("r1", k)) for k in ("a", "b"))
    r = api.post("/v1/ingest/json", content=lines, headers={"content-type": "application/x-ndjson"})
    assert r.status_code == 200 and r.json()["accepted"] == 2
    r = api.post("/v1/ingest/json", json={"records": [record("r2", "a")]})
    assert r.status_code == 200 and r.json()["accepted"] == 1
    r = api.post("/v1/ingest/json", json={"run_key": "r3", "step_key": "a"})  # one record, source defaults
    assert r.status_code == 200 and r.json()["accepted"] == 1
    assert api.get("/v1/runs/r3").json()["source"] == "json"


@pytest.mark.parametrize(
    ("body", "ctype", "field", "fragment"),
    [
        (b"", "application/json", "body", "empty"),
        (b"[{]", "application/json", "body", "not valid JSON"),
        (b'{"a": 1}\n{oops', "application/x-ndjson", "body.line.2", "line 2"),
        (b'{"records": 5}', "application/json", "records", "JSON array"),
        (b"42", "application/json", "records", "expected a JSON array"),
    ],
)
def test_malformed_bodies_name_the_problem(api: Api, body: bytes, ctype: str, field: str, fragment: str) -> None:
    r = api.post("/v1/ingest/json", content=body, headers={"content-type": ctype})
    assert r.status_code in (400, 422), r.text
    err = r.json()
    assert err["field"] == field and fragment in err["message"], err


def test_limits(settings: Settings) -> None:
    small = settings.model_copy(update={"max_batch_records": 3, "max_body_bytes": 4096, "max_record_bytes": 600})
    with TestClient(create_app(small)) as client:
        api = Api(client, make_key(small, "default"))
        r = api.post("/v1/ingest/json", json=[record("r", str(i)) for i in range(4)])
        assert r.status_code == 413 and r.json()["field"] == "records" and "limit is 3" in r.json()["message"]
        r = api.post("/v1/ingest/json", content=b"[" + b" " * 5000 + b"]", headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["field"] == "body"
        big = record("r", "big", output="x" * 700)
        r = api.post("/v1/ingest/json", json=[record("r", "ok"), big])
        assert r.status_code == 207
        assert r.json()["items"][1]["status"] == "rejected" and "over the limit" in r.json()["items"][1]["reason"]
        assert [s["step_key"] for s in api.get("/v1/runs/r").json()["steps"]] == ["ok"]


def test_unknown_connector_is_404_naming_the_known_ones(api: Api) -> None:
    r = api.post("/v1/ingest/nope", json=[])
    assert r.status_code == 404
    assert r.json()["field"] == "connector" and "json" in r.json()["message"]


def test_ingest_schedules_and_scores_finished_steps_only(api: Api) -> None:
    api.apply(SCHEMA_YAML)
    start = {k: v for k, v in record("r1", "extract").items() if k not in ("ended_at", "output")}
    api.ingest([start | {"status": "running"}])
    assert api.get("/v1/evals").json() == []  # a running step is not judged
    api.ingest([record("r1", "extract", output={"total": "12"})])
    (ev,) = api.get("/v1/evals").json()
    assert ev["status"] == "completed" and ev["passed"] is False
    assert ev["run_key"] == "r1" and ev["step_key"] == "extract" and ev["attempt"] == 1
    assert "total" in ev["explanation"]


def test_gzip_is_not_silently_misread(api: Api) -> None:
    body = gzip.compress(orjson.dumps([record()]))
    r = api.post("/v1/ingest/json", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["field"] == "body"


def test_same_run_key_in_two_sources_needs_the_source(api: Api) -> None:
    api.ingest([record("shared", "a"), record("shared", "a", source="celery")])
    r = api.get("/v1/runs/shared")
    assert r.status_code == 409 and r.json()["field"] == "source" and "celery" in r.json()["message"]
    assert api.get("/v1/runs/shared?source=celery").json()["source"] == "celery"
    assert api.get("/v1/runs/shared?source=temporal").status_code == 404


@pytest.mark.parametrize("value", [42, 3.5, True, "text", None, [1, 2], {"a": 1}, "42"])
def test_any_json_value_round_trips_and_is_scored(api: Api, value: Any) -> None:
    api.apply("evaluators:\n  - {name: not_blank, scorer: not_empty}\n")
    api.ingest([record("r1", "a", output=value, input=value, expected=value)])
    (step,) = _steps(api, "r1")
    assert (step["output"], step["input"], step["expected"]) == (value, value, value)
    (ev,) = api.get("/v1/evals").json()
    assert ev["status"] == "completed" and ev["passed"] is (value not in (None, [], "")), ev


def test_token_counts_fit_their_column_or_are_rejected(api: Api) -> None:
    # PostgreSQL keeps token counts in 32-bit integers, and the binary COPY of ingest would not
    # check them: the record's bounds do, on both lanes (an array takes the fast lane, JSON lines
    # the pydantic one), and the largest count that fits is stored exactly
    top = 2**31 - 1
    records = [
        record("r1", "a", model="m", input_tokens=top, output_tokens=0),
        record("r1", "b", model="m", input_tokens=top + 1),
        record("r1", "c", model="m", output_tokens=2**40),
    ]
    for body, ctype in ((orjson.dumps(records), "application/json"),
                        (b"\n".join(orjson.dumps(r) for r in records), "application/x-ndjson")):  # fmt: skip
        r = api.post("/v1/ingest/json", content=body, headers={"content-type": ctype})
        assert r.status_code == 207, r.text
        items = r.json()["items"]
        assert items[0]["status"] in ("accepted", "duplicate")
        assert (items[1]["status"], items[1]["field"]) == ("rejected", "input_tokens")
        assert (items[2]["status"], items[2]["field"]) == ("rejected", "output_tokens")
        assert "less than or equal to 2147483647" in items[1]["reason"]
    (step,) = _steps(api, "r1")
    assert (step["input_tokens"], step["output_tokens"]) == (top, 0)
