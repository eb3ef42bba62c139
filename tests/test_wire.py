"""The JSON connector's fast lane (evalsvc/wire.py) accepts only what StepRecord accepts, with the
same values; everything else takes the usual way and gets the usual answer."""

from __future__ import annotations

import doctest
from datetime import UTC, datetime
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import evalsvc.wire
from evalsvc.pipeline.ingest import _partial
from evalsvc.schemas import StepRecord
from evalsvc.wire import WireRecord, decode_record, record_partial

from .conftest import Api


def test_doctests() -> None:
    assert doctest.testmod(evalsvc.wire).failed == 0


def _fast(item: dict[str, Any]) -> WireRecord | None:
    return decode_record(msgspec.Raw(msgspec.json.encode(item)))  # any integer, unlike orjson


def _slow(item: dict[str, Any]) -> StepRecord | None:
    try:
        return StepRecord.model_validate({"source": "json", **item} if "source" not in item else item)
    except ValidationError:
        return None


TYPICAL = {
    "source": "json",
    "run_key": "run-1",
    "step_key": "extract",
    "attempt": 2,
    "name": "extract_invoice",
    "kind": "llm",
    "status": "completed",
    "started_at": "2026-11-01T10:00:00.250000Z",
    "ended_at": "2026-11-01T10:00:01.5+00:00",
    "input": {"text": "invoice 42", "n": [1, 2.5, None, True]},
    "output": '{"total": 12.5}',
    "expected": {"total": 12.5},
    "parent_step_key": "root",
    "model": "gpt-4o-mini",
    "input_tokens": 301,
    "output_tokens": 41,
    "cost_usd": 0.0002,
    "attributes": {"tenant": "t0", "n": 3},
    "workflow": "invoice-agent",
    "run_status": "running",
    "run_attributes": {"region": "eu"},
}


def _same(fast: WireRecord, slow: StepRecord) -> None:
    a, b = record_partial(fast), _partial(slow)
    assert a == b
    for name in ("source", "run_key", "step_key", "attempt", "workflow", "run_status", "run_attributes"):
        assert getattr(fast, name) == getattr(slow, name), name
    for name in ("started_at", "ended_at"):  # the same instant and the same wall clock
        if name in a:
            assert a[name].utcoffset() == b[name].utcoffset()


def test_the_typical_record_takes_the_fast_lane_with_the_same_values() -> None:
    fast, slow = _fast(TYPICAL), _slow(TYPICAL)
    assert fast is not None and slow is not None
    _same(fast, slow)
    assert record_partial(fast)["started_at"].tzinfo is UTC  # formatted by the store in one call


@pytest.mark.parametrize(
    "change",
    [
        {"error": "boom"},  # StepError normalises errors
        {"error": {"message": "boom", "type": "E"}},
        {"step_key": "__run__"},  # reserved: pydantic's message
        {"attempt": 0},
        {"attempt": "2"},  # pydantic's lax mode takes it
        {"attempt": 2.0},
        {"input_tokens": 3.0},
        {"surprise": 1},
        {"source": "has space"},
        {"source": "abc\n"},  # Python's $ would let it through
        {"started_at": "2026-11-01T10:00:00.1234567Z"},  # pydantic truncates, msgspec would round
        {"started_at": 1_700_000_000},  # a Unix time
        {"started_at": "2026-11-01"},
        {"started_at": "2026-11-01T24:00:00Z"},
        {"started_at": "2026-11-01T10:00:03Z", "ended_at": "2026-11-01T10:00:01Z"},
        {"kind": None},
        {"kind": ""},
        {"run_status": "exploded"},
    ],
)
def test_what_the_fast_lane_leaves_gets_the_usual_answer(change: dict[str, Any]) -> None:
    item = {**TYPICAL, **change}
    fast, slow = _fast(item), _slow(item)
    if fast is not None:  # taken only when pydantic takes it too, with the same values
        assert slow is not None
        _same(fast, slow)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)  # fmt: skip
TIMESTAMPS = st.one_of(
    st.none(),
    st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2100, 1, 1)).map(lambda d: d.isoformat()),
    st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2100, 1, 1)).map(
        lambda d: d.isoformat(timespec="milliseconds") + "Z"
    ),
    st.sampled_from(["2026-11-01T10:00:00+05:30", "2026-11-01 10:00:00Z", "2026-11-01T10:00:00.9999999Z",
                     "2026-11-01T10:00", "x", "2026-02-30T00:00:00Z", "2026-11-01T24:00:00Z",
                     "2026-11-01T23:59:60Z", "2026-11-01t10:00:00z", "2026-11-01T10:00:00.Z"]),
    st.integers(0, 2_000_000_000),
    # the shape wire._timestamp reads without its regex, one character changed: the lane and
    # pydantic must still agree
    st.tuples(st.sampled_from(["2026-11-01T10:00:00Z", "2026-11-01T10:00:00.5Z", "2026-11-01T10:00:00.123456Z"]),
              st.integers(0, 26), st.sampled_from([*"09T:-.Z +zt,", "\u0663", "\uff12"])).map(
        lambda t: t[0][: t[1]] + t[2] + t[0][t[1] + 1 :]
    ),
)  # fmt: skip
FIELDS: dict[str, Any] = {
    "source": st.sampled_from(["json", "otel", "a b", "", "x" * 65]),
    "run_key": st.text(max_size=3) | st.integers(),
    "step_key": st.text(max_size=3) | st.sampled_from(["__run__", "a" * 257]),
    "attempt": st.integers(-1, 10_001) | st.sampled_from([1.0, 2.5, "3", True]),
    "name": st.none() | st.text(max_size=3) | st.integers(),
    "kind": st.none() | st.sampled_from(["step", "llm", "", "k" * 65]),
    "status": st.none() | st.sampled_from(["completed", "running", "failed", "nope", 1]),
    "started_at": TIMESTAMPS,
    "ended_at": TIMESTAMPS,
    "input": JSON_VALUES,
    "output": JSON_VALUES,
    "expected": JSON_VALUES,
    "error": st.none() | st.text(max_size=3),
    "model": st.none() | st.text(max_size=3),
    "input_tokens": st.none() | st.integers(-2, 5) | st.floats(0, 3, allow_nan=False),
    "cost_usd": st.none() | st.floats(-1, 1, allow_nan=False) | st.integers(-1, 3),
    "attributes": st.dictionaries(st.text(max_size=3), JSON_VALUES, max_size=3) | st.none(),
    "workflow": st.none() | st.text(max_size=3),
    "run_status": st.none() | st.sampled_from(["completed", "paused", "bad"]),
    "run_attributes": st.dictionaries(st.text(max_size=3), JSON_VALUES, max_size=2),
    "surprise": st.integers(),
}


@st.composite
def records(draw: Any) -> dict[str, Any]:
    item = {"run_key": "r1", "step_key": "s1"}
    for name in draw(st.lists(st.sampled_from(sorted(FIELDS)), max_size=8, unique=True)):
        item[name] = draw(FIELDS[name])
    return item


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records())
def test_the_fast_lane_never_disagrees_with_step_record(item: dict[str, Any]) -> None:
    fast = _fast(item)
    if fast is not None:
        slow = _slow(item)
        assert slow is not None, item
        _same(fast, slow)


def _stored(api: Api, run_key: str) -> list[dict[str, Any]]:
    r = api.get(f"/v1/runs/{run_key}")
    assert r.status_code == 200, r.text
    return [{k: v for k, v in s.items() if k not in ("id", "run_id", "created_at", "updated_at", "evals")}
            for s in r.json()["steps"]]  # fmt: skip


def test_a_json_array_and_the_same_records_as_json_lines_store_the_same_rows(api: Api, other_api: Api) -> None:
    """The array takes the fast lane (where it can); JSON lines take the usual way."""
    items: list[Any] = [
        {**TYPICAL, "run_key": "r", "step_key": "a"},
        {**TYPICAL, "run_key": "r", "step_key": "b", "error": "boom", "status": None},
        {**TYPICAL, "run_key": "r", "step_key": "c", "started_at": "2026-11-01T10:00:00.1234567"},
        {"run_key": "r", "step_key": "d", "status": "running", "input": {"big": 2**70}},
        {"run_key": "r", "step_key": "d", "ended_at": "2026-11-01T10:00:09Z", "output": "done"},  # completes d
        {**TYPICAL, "run_key": "r", "step_key": "e", "attempt": 0},
        {**TYPICAL, "run_key": "r", "step_key": "a"},  # a duplicate
        "not a record",
        {"run_key": "r", "step_key": "f", "input": {"spaced": [1, 2]}, "attributes": {"k": "v"}, "kind": "step"},
    ]
    body = msgspec.json.encode(items).replace(b'"spaced":[1,2]', b'"spaced" : [ 1 , 2 ]')
    fast = api.post("/v1/ingest/json", content=body, headers={"content-type": "application/json"})
    lines = b"\n".join(msgspec.json.encode(i) for i in items)
    slow = other_api.post("/v1/ingest/json", content=lines, headers={"content-type": "application/x-ndjson"})
    assert fast.status_code == slow.status_code == 207
    assert fast.json() == slow.json()
    assert [i["status"] for i in fast.json()["items"]] == [
        "accepted", "accepted", "accepted", "accepted", "accepted", "rejected", "duplicate", "rejected", "accepted",
    ]  # fmt: skip
    api.wait_idle()
    other_api.wait_idle()
    assert _stored(api, "r") == _stored(other_api, "r")
    steps = {s["step_key"]: s for s in _stored(api, "r")}
    assert steps["d"]["status"] == "completed" and steps["d"]["input"] == {"big": float(2**70)}  # as orjson reads it
    assert steps["c"]["started_at"].startswith("2026-11-01T10:00:00.123456")


def test_a_number_orjson_cannot_read_is_refused_as_before(api: Api) -> None:
    body = b'[{"run_key": "r", "step_key": "a", "input": 1e400}]'
    r = api.post("/v1/ingest/json", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "body" and "not valid JSON" in r.json()["message"]
    assert api.get("/v1/runs/r").status_code == 404  # nothing of it stored


def test_the_connector_reads_an_array_in_the_fast_lane_and_hands_the_rest_on() -> None:
    from connectors.generic_json import JsonConnector

    conn = JsonConnector(max_record_bytes=2000)
    items = [TYPICAL, {**TYPICAL, "error": "boom"}, {**TYPICAL, "input": "x" * 1500}, 7]
    got = conn.from_bytes(orjson.dumps(items))
    assert got is not None
    assert [type(i).__name__ for i in got] == ["WireRecord", "dict", "dict", "int"]
    assert got[1]["source"] == "json" and got[1]["error"] == "boom"  # as to_steps hands it on
    assert conn.from_bytes(b'{"records": []}') is None  # other shapes: the caller decodes them
    assert conn.from_bytes(b"[1, 2") is None  # and words the error


def test_long_digit_strings_stay_in_the_fast_lane_and_big_integers_leave_it() -> None:
    trace_id = "0" * 31 + "1"  # zero-padded ids are digits only
    assert _fast({**TYPICAL, "run_key": trace_id, "step_key": "0" * 16}) is not None
    assert _fast({**TYPICAL, "attributes": {"n": 2**64 - 1}}) is not None  # orjson keeps it an integer
    assert _fast({**TYPICAL, "attributes": {"n": 2**64}}) is None  # orjson makes it a float
    assert _fast({**TYPICAL, "output": [{"deep": [-(2**63) - 1]}]}) is None
