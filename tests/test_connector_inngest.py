"""The Inngest connector: run histories (every fixture, asserted), the system events, and the signed
webhook ``POST /v1/webhooks/inngest`` through the API on both stores (signature, fallback key,
stale and replayed requests, malformed payloads), plus ``evalsvc ingest --connector inngest``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from pydantic import SecretStr
from typer.testing import CliRunner

from connectors import get as get_connector
from evalsvc.api.main import create_app
from evalsvc.cli import app as cli_app
from evalsvc.errors import PayloadRejected, Unauthorized
from evalsvc.pipeline.signed_webhooks import sign_inngest, strip_key_prefix, verify_inngest_signature
from evalsvc.settings import Settings
from evalsvc.store.db import get_engine

from .conftest import Api, make_key
from .serve_process import free_port as _free_port

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "inngest"
needs_fixtures = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"shared fixtures not found at {FIXTURES}")

KEY = "signkey-prod-" + "ab" * 32
FALLBACK = "signkey-prod-" + "cd" * 32
FN = "local-dev-send-welcome-email"

# fixture → (run_key, workflow, run_status, [(name, kind, attempt, status, error type), ...] in group order)
EXPECTED: dict[str, tuple[str, str, str, list[tuple[str, str, int, str, str | None]]]] = {
    "history_succeeds_with_2_steps.json": ("01HAW21TS3576VV7F2K0JWX4A8", FN, "completed", [
        ("First step", "step", 1, "completed", None),
        ("Second step", "step", 1, "completed", None),
        ("execution", "execution", 1, "completed", None),
        (FN, "function", 1, "completed", None),
    ]),
    "history_fails_without_steps_3_attempts.json": ("01HAZDBCTKWEBE4F9YWHDAK0GM", FN, "failed", [
        ("execution", "execution", 1, "failed", "StepErrored"),
        ("execution", "execution", 2, "failed", "StepErrored"),
        ("execution", "execution", 3, "failed", "StepFailed"),
        (FN, "function", 1, "failed", "FunctionFailed"),
    ]),
    "history_parallel_steps.json": ("01HAZ7X74ZWA6GAAVPDADECQBJ", FN, "completed", [
        ("a", "step", 1, "completed", None),
        ("execution", "execution", 1, "completed", None),
        ("b2", "step", 1, "completed", None),
        ("b1", "step", 1, "completed", None),
        ("execution", "execution", 1, "completed", None),
        ("execution", "execution", 1, "completed", None),
        (FN, "function", 1, "completed", None),
    ]),
    "history_sleeps.json": ("01HAZ8Y0S3J9A2D0NT3C0XA628", FN, "completed", [
        ("10s", "sleep", 1, "completed", None),
        ("execution", "execution", 1, "completed", None),
        (FN, "function", 1, "completed", None),
    ]),
    "history_waits_for_event_fulfilled.json": ("01HBGTGM0M3WVQ72K194KW25M9", "local-dev-waits-for-event", "completed", [
        ("bar", "wait_for_event", 1, "completed", None),
        ("execution", "execution", 1, "completed", None),
        ("local-dev-waits-for-event", "function", 1, "completed", None),
    ]),
    "history_cancelled_during_sleep.json": ("01HAWKYXND6E929N5P3GJYMQ1D", FN, "cancelled", [
        ("1m", "sleep", 1, "cancelled", None),
        (FN, "function", 1, "cancelled", "FunctionCancelled"),
    ]),
}  # fmt: skip


def _load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


# ---- translation ---------------------------------------------------------------------------------


@needs_fixtures
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_history_fixture_parses(name: str) -> None:
    run_key, workflow, run_status, steps = EXPECTED[name]
    recs = get_connector("inngest").to_steps(_load(name))
    got = [(r["name"], r["kind"], r["attempt"], r["status"], (r.get("error") or {}).get("type")) for r in recs]
    assert got == steps
    assert {(r["source"], r["run_key"], r["workflow"], r["run_status"]) for r in recs} == {
        ("inngest", run_key, workflow, run_status)
    }
    # one step per groupID (attempts share it); the run's end is the step "function"
    keys = [r["step_key"] for r in recs]
    assert keys[-1] == "function" and all(len(k) == 36 for k in keys[:-1])
    for rec in recs:
        assert rec["started_at"] is not None
        if rec["status"] != "running":
            assert rec["ended_at"] >= rec["started_at"]


@needs_fixtures
def test_history_times_attempts_sleeps_and_waits() -> None:
    conn = get_connector("inngest")
    fails = conn.to_steps(_load("history_fails_without_steps_3_attempts.json"))
    assert [(r["started_at"], r["ended_at"]) for r in fails[:3]] == [
        ("2023-09-22T21:39:50.739918+00:00", "2023-09-22T21:39:50.759820+00:00"),
        ("2023-09-22T21:40:19.706878+00:00", "2023-09-22T21:40:19.713300+00:00"),
        ("2023-09-22T21:41:12.752221+00:00", "2023-09-22T21:41:12.759701+00:00"),
    ]
    assert {r["step_key"] for r in fails[:3]} == {"a9248006-b21c-43ff-bad8-9de756fad4ff"}
    assert [r["error"]["retryable"] for r in fails[:3]] == [True, True, False]

    sleep = conn.to_steps(_load("history_sleeps.json"))[0]
    assert sleep["ended_at"] == "2023-09-22T20:22:48.136637+00:00"  # woke at sleep.until
    assert sleep["attributes"]["inngest.sleep_until"] == sleep["ended_at"]

    wait = conn.to_steps(_load("history_waits_for_event_fulfilled.json"))[0]
    assert wait["output"] == {"event_id": "01HBGTGVQP0VE0X29D04GTWYAJ", "timed_out": False}
    assert wait["attributes"]["inngest.wait_for_event"] == {
        "event_name": "bar", "expression": None, "timeout": "2023-09-29T11:57:58.808601-04:00"}  # fmt: skip

    cancelled = conn.to_steps(_load("history_cancelled_during_sleep.json"))
    assert cancelled[0]["ended_at"] == cancelled[1]["ended_at"] == "2023-09-21T19:37:45.720719+00:00"
    assert cancelled[1]["attributes"]["inngest.cancel"] == {"eventID": "01HAWKZ4BD4MHGCXSWTXHTJVGN"}

    parallel = conn.to_steps(_load("history_parallel_steps.json"))
    assert {r["name"]: r["started_at"] for r in parallel if r["name"] in ("b1", "b2")} == {
        "b1": "2023-09-22T20:04:43.587741+00:00", "b2": "2023-09-22T20:04:43.587580+00:00"}  # fmt: skip


@needs_fixtures
def test_wrapped_history_keys_on_the_real_run_id_and_meets_the_webhook_event() -> None:
    history = _load("history_succeeds_with_2_steps.json")
    conn = get_connector("inngest")
    wrapped = conn.to_steps({"data": {"functionRun": {"id": "01HRUN", "functionID": "shop-receipts",
                                                      "history": list(reversed(history)), "output": {"ok": 1}}}})  # fmt: skip
    assert {r["run_key"] for r in wrapped} == {"01HRUN"} and wrapped[-1]["output"] == {"ok": 1}
    assert [r["name"] for r in wrapped] == ["First step", "Second step", "execution", "shop-receipts"]  # time order
    event = conn.to_steps(_event("inngest/function.finished", run_id="01HRUN", function_id="shop-receipts"))
    assert (event[0]["run_key"], event[0]["step_key"], event[0]["attempt"]) == ("01HRUN", "function", 1)


def test_invoke_steps_and_runs_still_going() -> None:
    t = "2026-11-01T10:00:0{}Z"
    history = [
        {"type": "FunctionStarted", "id": "01HSTART", "groupID": "g1", "createdAt": t.format(0)},
        {"type": "StepStarted", "groupID": "g1", "stepName": "step", "createdAt": t.format(1)},
        {"type": "StepCompleted", "groupID": "g1", "stepName": "charge", "createdAt": t.format(2)},
        {"type": "StepInvoking", "groupID": "g1", "stepName": "charge", "createdAt": t.format(3)},
    ]
    recs = get_connector("inngest").to_steps({"run_id": "01HRUN2", "function_id": "shop-checkout", "history": history})
    assert [(r["name"], r["kind"], r["status"], r["ended_at"]) for r in recs] == [
        ("charge", "invoke", "running", None),
        ("shop-checkout", "function", "running", None),
    ]
    assert {r["run_status"] for r in recs} == {"running"}


def _event(name: str, *, run_id: str = "01JRUNAAAAAAAAAAAAAAAAAAAA", function_id: str = "shop-send-receipt",
           ts: int = 1763800000000, **data: Any) -> dict[str, Any]:  # fmt: skip
    trigger = {"id": "01JEVT", "name": "shop/order.paid", "data": {"order": 7}, "ts": ts - 5000}
    return {"id": f"01JSYS{run_id[-6:]}", "name": name, "ts": ts,
            "data": {"function_id": function_id, "run_id": run_id, "event": trigger, "events": [trigger], **data}}  # fmt: skip


def test_system_events_map_to_the_runs_end() -> None:
    conn = get_connector("inngest")
    done = conn.to_steps(_event("inngest/function.finished", result={"sent": True}))[0]
    assert (done["status"], done["run_status"], done["output"], done["kind"]) == ("completed", "completed",
                                                                                   {"sent": True}, "function")  # fmt: skip
    assert done["input"]["name"] == "shop/order.paid" and done["ended_at"] == "2025-11-22T08:26:40+00:00"
    error = {"__serialized": True, "error": "invalid status code: 500", "message": "already a member",
             "name": "Error", "stack": "Error: already a member\n    at handler (fn.ts:3:9)"}  # fmt: skip
    failed = conn.to_steps(_event("inngest/function.failed", error=error))[0]
    assert (failed["status"], failed["run_status"]) == ("failed", "failed")
    assert failed["error"] == {"type": "Error", "message": "already a member", "stack": error["stack"],
                               "cause": "invalid status code: 500"}  # fmt: skip
    finished_failed = conn.to_steps(_event("inngest/function.finished", error={"name": "TypeError", "message": "x"}))
    assert finished_failed[0]["status"] == "failed"
    cancelled = conn.to_steps(_event("inngest/function.cancelled", error={"name": "Error",
                                                                           "message": "function cancelled"}))  # fmt: skip
    assert cancelled[0]["status"] == "cancelled"
    two = conn.to_steps([_event("inngest/function.finished", run_id="R1"), _event("inngest/function.failed",
                                                                                    run_id="R2")])  # fmt: skip
    assert [r["run_key"] for r in two] == ["R1", "R2"]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ([], "body"),
        ({"name": "app/user.created", "data": {}}, "name"),
        ({"name": "inngest/function.finished", "data": {"function_id": "f"}}, "data.run_id"),
        ({"name": "inngest/function.finished", "data": {"run_id": "r"}}, "data.function_id"),
        ({"name": "inngest/function.failed", "data": "oops"}, "data"),
        ({"name": "inngest/function.finished", "ts": "yesterday", "data": {"run_id": "r", "function_id": "f"}}, "ts"),
        ([{"type": "StepStarted", "groupID": "g", "createdAt": "not a time"}], "0.createdAt"),
        ([{"type": "StepTeleported", "groupID": "g", "createdAt": "2023-09-21T10:24:39Z"}], "0.type"),
        ([{"type": "StepStarted", "groupID": "g", "createdAt": "2023-09-21T10:24:39Z", "attempt": -1}], "0.attempt"),
        ({"run_id": "r", "history": "none"}, "history"),
        ([{"type": "StepStarted", "groupID": "g", "createdAt": "2023-09-21T10:24:39Z"}], "run_id"),
        ([_event("inngest/function.finished"), {"unrelated": True}], "1"),
    ],
)
def test_malformed_payloads_are_rejected_naming_the_field(payload: Any, field: str) -> None:
    with pytest.raises(PayloadRejected) as info:
        get_connector("inngest").to_steps(payload)
    assert info.value.field == field, info.value.message


# ---- the signature -------------------------------------------------------------------------------


def test_signature_matches_inngests_own_test_vector() -> None:
    # inngest-js InngestCommHandler tests: this key, body and header come from a real Inngest server
    key = "signkey-test-f00f3005a3666b359a79c2bc3380ce2715e62727ac461ae1a2618f8766029c9f"
    event = {"data": {}, "id": "", "name": "inngest/scheduled.timer", "ts": 1674082830001, "user": {}, "v": "1"}
    body = {"ctx": {"fn_id": "local-testing-local-cron", "run_id": "01GQ3HTEZ01M7R8Z9PR1DMHDN1", "step_id": "step"},
            "event": event, "events": [event], "steps": {}, "use_api": False}  # fmt: skip
    header = "t=1687306735&s=70312c7815f611a4aa0b6f985910a85a6c232c845838d7f49f1d05fd8b2b0779"
    raw = orjson.dumps(body)
    assert sign_inngest(raw, key, ts=1687306735) == header
    assert verify_inngest_signature(body=raw, header=header, keys=[key], now=1687306735 + 60).key_index == 0
    # a pretty-printed body is checked in its compact form too, as the SDKs do
    pretty = json.dumps(body, indent=2).encode()
    assert verify_inngest_signature(body=pretty, header=header, keys=[key], now=1687306735).ts == 1687306735
    with pytest.raises(Unauthorized, match="stale signature"):
        verify_inngest_signature(body=raw, header=header, keys=[key], now=1687306735 + 301)
    with pytest.raises(Unauthorized, match="in the future"):
        verify_inngest_signature(body=raw, header=header, keys=[key], now=1687306735 - 301)
    assert strip_key_prefix(key) == key.removeprefix("signkey-test-")
    assert strip_key_prefix("branch-key") == "branch-key"


# ---- through the API and the CLI ------------------------------------------------------------------


def _webhook_settings(settings: Settings, **extra: Any) -> Settings:
    update: dict[str, Any] = {"inngest_signing_key": SecretStr(KEY), "inngest_project": "shop"}
    update.update(extra)
    return settings.model_copy(update=update)


@pytest.fixture
def hook(settings: Settings) -> Iterator[tuple[TestClient, Api]]:
    s = _webhook_settings(settings, inngest_signing_key_fallback=SecretStr(FALLBACK))
    with TestClient(create_app(s)) as client:
        yield client, Api(client, make_key(s, "shop"))


def _post(client: TestClient, payload: Any, *, key: str | None = KEY, ts: int | None = None,
          header: str | None = None) -> httpx.Response:  # fmt: skip
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    headers = {"content-type": "application/json"}
    if header is not None:
        headers["x-inngest-signature"] = header
    elif key is not None:
        headers["x-inngest-signature"] = sign_inngest(body, key, ts=ts)
    return client.post("/v1/webhooks/inngest", content=body, headers=headers)


RECEIPT_RULE = """
evaluators:
  - name: receipt_sent
    scorer: json_schema
    target: {source: inngest, kind: function, status: completed}
    params: {schema: {type: object, required: [sent], properties: {sent: {const: true}}}}
"""


def test_signed_events_are_stored_and_scored(hook: tuple[TestClient, Api]) -> None:
    client, api = hook
    api.apply(RECEIPT_RULE)
    r = _post(client, [_event("inngest/function.finished", run_id="R-OK", result={"sent": True}),
                       _event("inngest/function.finished", run_id="R-BAD", result={"sent": False})])  # fmt: skip
    assert r.status_code == 200, r.text
    assert (r.json()["accepted"], r.json()["project"]) == (2, "shop")
    failed = _post(
        client, _event("inngest/function.failed", run_id="R-ERR", error={"name": "Error", "message": "boom"})
    )
    assert failed.status_code == 200, failed.text
    api.wait_idle()

    def verdict(run_key: str) -> tuple[str, list[Any]]:
        run = api.get(f"/v1/runs/{run_key}").json()
        step = run["steps"][0]
        return run["status"], [(e["evaluator"], e["passed"]) for e in step["verdicts"]]

    assert verdict("R-OK") == ("completed", [("receipt_sent", True)])
    assert verdict("R-BAD") == ("completed", [("receipt_sent", False)])
    status, evals = verdict("R-ERR")
    assert status == "failed" and evals == []
    err = api.get("/v1/runs/R-ERR").json()["steps"][0]["error"]
    assert err["message"] == "boom"


def test_refused_requests_get_401_and_store_nothing(hook: tuple[TestClient, Api], settings: Settings) -> None:
    client, api = hook
    event = _event("inngest/function.finished", run_id="R-X", result={"sent": True})
    body = orjson.dumps(event)
    cases = {
        "unsigned": _post(client, event, key=None),
        "wrong key": _post(client, event, key="signkey-prod-" + "ef" * 32),
        "stale": _post(client, event, ts=int(time.time()) - 400),
        "malformed header": _post(client, event, header="sha256=deadbeef"),
        "tampered body": _post(client, body.replace(b"R-X", b"R-Y"), header=sign_inngest(body, KEY)),
    }
    messages = {name: (r.status_code, r.json()["message"]) for name, r in cases.items()}
    assert {name: code for name, (code, _) in messages.items()} == dict.fromkeys(cases, 401)
    assert "missing X-Inngest-Signature" in messages["unsigned"][1]
    assert "does not match" in messages["wrong key"][1]
    assert "stale signature" in messages["stale"][1]
    assert "malformed X-Inngest-Signature" in messages["malformed header"][1]
    assert "does not match" in messages["tampered body"][1]
    assert {r.json()["field"] for r in cases.values()} == {"x-inngest-signature"}
    assert api.get("/v1/runs").json() == []

    # a replay of an accepted request is refused, and stores nothing more
    header = sign_inngest(body, KEY)
    first = _post(client, body, header=header)
    assert first.status_code == 200 and first.json()["accepted"] == 1
    again = _post(client, body, header=header)
    assert again.status_code == 401 and "replayed request" in again.json()["message"]
    # a fresh signature of the same event (Inngest's retry) is fine: idempotent, a duplicate (its
    # timestamp well apart from the first's: now - 1 could fall in the first's second, a replay)
    retry = _post(client, body, ts=int(time.time()) - 30)
    assert retry.status_code == 200 and retry.json()["duplicate"] == 1
    assert [r["run_key"] for r in api.get("/v1/runs").json()] == ["R-X"]
    # during a key rotation the fallback key is accepted
    rotated = _post(client, _event("inngest/function.finished", run_id="R-FB"), key=FALLBACK)
    assert rotated.status_code == 200 and rotated.json()["accepted"] == 1
    engine = get_engine(settings.resolved_database_url())
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT key FROM connector_state WHERE connector = 'inngest'")).scalars().all()
    assert len(rows) == 3 and all(k.startswith("webhook.signature:") for k in rows)


def test_malformed_payloads_get_422_and_store_nothing(hook: tuple[TestClient, Api]) -> None:
    client, api = hook
    cases = [
        (b"{not json", "body"),
        (orjson.dumps({"name": "inngest/function.finished", "data": {"function_id": "f"}}), "data.run_id"),
        (orjson.dumps({"name": "app/signup", "data": {}}), "name"),
        (orjson.dumps(_event("inngest/function.finished", function_id="x" * 300)), "records.0.name"),
    ]
    for body, field in cases:
        header = sign_inngest(body, KEY)
        for _ in range(2):  # a refused delivery does not burn its signature: the same request gets 422 again
            r = _post(client, body, header=header)
            assert (r.status_code, r.json()["field"]) == (422, field), r.text
    assert api.get("/v1/runs").json() == []


def test_no_signing_key_configured_refuses_everything(settings: Settings) -> None:
    with TestClient(create_app(settings.model_copy(update={"inngest_signing_key": SecretStr("")}))) as client:
        r = _post(client, _event("inngest/function.finished"))
    assert r.status_code == 401 and "no Inngest signing key is configured" in r.json()["message"]


def test_replay_is_refused_by_another_process(sqlite_settings: Settings, tmp_path: Path) -> None:
    """The replay record lives in the store: a second `evalsvc serve` on the same store refuses it."""
    s = _webhook_settings(sqlite_settings)
    body = orjson.dumps(_event("inngest/function.finished", run_id="R-PROC", result={"sent": True}))
    header = sign_inngest(body, KEY)
    with TestClient(create_app(s)) as client:
        assert _post(client, body, header=header).status_code == 200
    env = {**os.environ, "EVALSVC_HOME": str(s.home), "EVALSVC_DATABASE_URL": "", "EVALSVC_BROKER_URL": "",
           "EVALSVC_INNGEST_SIGNING_KEY": KEY, "EVALSVC_INNGEST_PROJECT": "shop"}  # fmt: skip
    port = _free_port()
    with (tmp_path / "serve.log").open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "evalsvc.cli", "serve", "--port", str(port)], env=env,
                                stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
                time.sleep(0.1)
            headers = {"x-inngest-signature": header, "content-type": "application/json"}
            replay = httpx.post(f"{base}/v1/webhooks/inngest", content=body, headers=headers, timeout=30)
            assert replay.status_code == 401 and "replayed request" in replay.json()["message"]
            fresh = httpx.post(f"{base}/v1/webhooks/inngest", content=body, timeout=30,
                               headers={**headers, "x-inngest-signature": sign_inngest(body, KEY)})  # fmt: skip
            assert fresh.status_code == 200 and fresh.json()["duplicate"] == 1
        finally:
            proc.terminate()
            proc.wait(timeout=30)


@needs_fixtures
def test_every_fixture_imports_through_the_ingest_api(api: Api) -> None:
    for name, (run_key, workflow, run_status, steps) in EXPECTED.items():
        r = api.post("/v1/ingest/inngest", content=(FIXTURES / name).read_bytes(),
                     headers={"content-type": "application/json"})  # fmt: skip
        assert r.status_code == 200 and r.json()["accepted"] == len(steps), r.text
        run = api.get(f"/v1/runs/{run_key}").json()
        assert (run["workflow"], run["status"], len(run["steps"])) == (workflow, run_status, len(steps))
    again = api.post("/v1/ingest/inngest", content=(FIXTURES / "history_sleeps.json").read_bytes())
    assert again.status_code == 200 and again.json()["duplicate"] == 3
    bad = api.post("/v1/ingest/inngest", json={"name": "inngest/function.finished", "data": {"function_id": "f"}})
    assert (bad.status_code, bad.json()["field"]) == (422, "data.run_id")


@needs_fixtures
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_fixture_imports_through_the_cli(name: str, tmp_path: Path) -> None:
    env = {"EVALSVC_HOME": str(tmp_path / "home"), "EVALSVC_DATABASE_URL": "", "EVALSVC_BROKER_URL": ""}
    run_key, workflow, run_status, steps = EXPECTED[name]
    result = CliRunner().invoke(cli_app, ["ingest", str(FIXTURES / name), "--connector", "inngest"], env=env)
    assert result.exit_code == 0, result.output
    assert f"{len(steps)} accepted, 0 duplicate, 0 rejected" in result.output
    shown = CliRunner().invoke(cli_app, ["runs", "show", run_key, "--json"], env=env)
    assert shown.exit_code == 0, shown.output
    detail = json.loads(shown.output)
    assert (detail["workflow"], detail["status"]) == (workflow, run_status)
    again = CliRunner().invoke(cli_app, ["ingest", str(FIXTURES / name), "--connector", "inngest"], env=env)
    assert f"0 accepted, {len(steps)} duplicate" in again.output
