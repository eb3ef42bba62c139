"""Failed evals act: webhooks signed and delivered exactly once, retried with backoff; reviews open."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from evalsvc.api.main import create_app
from evalsvc.demo.receiver import WebhookReceiver
from evalsvc.pipeline.remediate import dispatch_action, due_action_ids
from evalsvc.pipeline.webhooks import WebhookError, checked_addresses, send_webhook
from evalsvc.settings import Settings
from evalsvc.store.db import get_engine
from evalsvc.store.models import Action, table, utcnow

from .conftest import WEBHOOK_SECRET, Api, make_key
from .factories import record


def webhook_yaml(url: str) -> str:
    return f"""
evaluators:
  - name: total_is_number
    scorer: json_schema
    params: {{schema: {{type: object, required: [total], properties: {{total: {{type: number}}}}}}}}
    on_fail: {{action: webhook, url: "{url}"}}
  - name: total_is_present
    scorer: regex
    params: {{pattern: total}}
    on_fail: {{action: webhook, url: "{url}"}}
"""


def _wait(predicate: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_webhook_is_signed_delivered_once_and_audited(api: Api) -> None:
    with WebhookReceiver(WEBHOOK_SECRET) as receiver:
        api.apply(webhook_yaml(receiver.url))
        api.ingest([record("r1", "extract", output={"total": "12"}), record("r2", "extract")])
        actions = _wait(lambda: [a for a in api.get("/v1/actions").json() if a["status"] == "succeeded"])
        # a second ingest of the same record and a re-dispatch do not send again
        api.ingest([record("r1", "extract", output={"total": "12"})])
    assert receiver.rejected == 0 and receiver.repeats == 0
    assert len(receiver.received) == 1
    (payload,) = receiver.received
    assert payload["type"] == "eval.failed" and payload["evaluator"]["name"] == "total_is_number"
    assert payload["run"]["run_key"] == "r1" and payload["step"] == {
        "id": payload["step"]["id"], "step_key": "extract", "attempt": 1, "name": "extract"}  # fmt: skip
    assert payload["result"]["passed"] is False and "total" in payload["result"]["explanation"]
    (action,) = actions
    assert action["kind"] == "webhook" and action["attempts"] == 1
    assert action["response"]["status_code"] == 200
    assert action["idempotency_key"] == payload["id"]
    run = api.get("/v1/runs/r1").json()
    assert [a["id"] for a in run["actions"]] == [action["id"]]


def test_failing_receiver_is_retried_with_backoff_then_succeeds(settings: Settings) -> None:
    fast = settings.model_copy(update={"action_backoff_seconds": 0.05, "action_max_attempts": 5})
    with WebhookReceiver(WEBHOOK_SECRET, fail_first=2) as receiver, TestClient(create_app(fast)) as client:
        api = Api(client, make_key(fast, "default"))
        api.apply(webhook_yaml(receiver.url))
        api.ingest([record("r1", "extract", output={"total": "x"})])
        (action,) = _wait(lambda: [a for a in api.get("/v1/actions").json() if a["status"] == "succeeded"])
    assert action["attempts"] == 3  # 503, 503, 200
    assert len(receiver.received) == 1


def test_unreachable_receiver_gives_up_after_max_attempts(settings: Settings) -> None:
    fast = settings.model_copy(update={"action_backoff_seconds": 0.01, "action_max_attempts": 3})
    with TestClient(create_app(fast)) as client:
        api = Api(client, make_key(fast, "default"))
        api.apply(webhook_yaml("http://127.0.0.1:9/nothing-listens-here"))
        api.ingest([record("r1", "extract", output={"total": "x"})])
        (action,) = _wait(lambda: [a for a in api.get("/v1/actions").json() if a["status"] == "failed"])
    assert action["attempts"] == 3
    assert "ConnectError" in action["last_error"]


def test_private_targets_are_refused_unless_allowed(settings: Settings) -> None:
    strict = settings.model_copy(update={"webhook_allow_private": False})
    with TestClient(create_app(strict)) as client:
        api = Api(client, make_key(strict, "default"))
        r = api.post("/v1/evaluators", content=webhook_yaml("http://127.0.0.1:8080/hook"),
                     headers={"content-type": "application/yaml"})  # fmt: skip
        assert r.status_code == 422
        assert (
            r.json()["field"] == "evaluators.0.on_fail.url" and "EVALSVC_WEBHOOK_ALLOW_PRIVATE" in r.json()["message"]
        )


def test_crash_after_send_redelivers_with_the_same_id(api: Api, settings: Settings) -> None:
    """A worker that died after sending leaves the action 'dispatched'; after the lease another worker
    sends it again with the same webhook-id, which the receiver recognises as a repeat."""
    engine = get_engine(settings.resolved_database_url())
    with WebhookReceiver(WEBHOOK_SECRET) as receiver:
        api.apply(webhook_yaml(receiver.url))
        api.ingest([record("r1", "extract", output={"total": "x"})])
        (action,) = _wait(lambda: [a for a in api.get("/v1/actions").json() if a["status"] == "succeeded"])
        a = table(Action)
        # what a crash between the side effect and the record leaves behind
        with engine.begin() as conn:
            conn.execute(sa.update(a).where(a.c.id == action["id"]).values(
                status="dispatched", claimed_at=utcnow() - timedelta(seconds=settings.lease_seconds + 1)))  # fmt: skip
        assert due_action_ids(engine=engine, settings=settings) == [action["id"]]
        outcome = dispatch_action(engine=engine, settings=settings, action_id=action["id"])
        assert outcome.status == "succeeded"
        # a fresh claim is not stolen: nothing is due any more
        assert due_action_ids(engine=engine, settings=settings) == []
        assert dispatch_action(engine=engine, settings=settings, action_id=action["id"]).status == "skipped"
    assert len(receiver.received) == 1 and receiver.repeats == 1


def test_review_on_fail_opens_one_item_and_records_the_action(api: Api) -> None:
    api.apply("""
evaluators:
  - {name: not_blank, scorer: not_empty, on_fail: review}
  - {name: is_json_obj, scorer: json_schema, params: {schema: {type: object}}, on_fail: {action: review, assignee: ana}}
""")
    api.ingest([record("r1", "reply", output=""), record("r2", "reply", output="fine")])
    reviews = api.get("/v1/reviews").json()
    # "" fails both (one review of the step, naming both); "fine" is not blank but is not a JSON object
    assert sorted(r["run_key"] for r in reviews) == ["r1", "r2"]
    assert {r["run_key"]: r["evaluator"] for r in reviews}["r2"] == "is_json_obj"
    actions = api.get("/v1/actions?kind=review").json()
    assert len(actions) == len(reviews) and all(a["status"] == "succeeded" for a in actions)
    reasons = {a["run_id"]: a["reason"] for a in actions}
    r1 = next(r for r in reviews if r["run_key"] == "r1")
    assert reasons[r1["run_id"]] in ("failed: not_blank, is_json_obj", "failed: is_json_obj, not_blank")
    assert api.get("/v1/actions?kind=review&run_key=r2").json()[0]["reason"] == "failed: is_json_obj"


def test_retry_without_an_adapter_is_recorded_not_dropped(api: Api) -> None:
    api.apply("evaluators:\n  - {name: not_blank, scorer: not_empty, on_fail: {action: retry, max_attempts: 3}}\n")
    api.ingest([record("r1", "reply", output=" ")])
    (action,) = api.get("/v1/actions").json()
    assert action["kind"] == "retry" and action["status"] == "failed"
    assert "no orchestrator adapter" in action["last_error"] and "'json'" in action["last_error"]


class _Hop:
    """A local HTTP endpoint on ``host`` that either redirects every POST to ``redirect_to`` or
    records it (a stand-in for a receiver and for a receiver that moved)."""

    def __init__(self, host: str, redirect_to: str | None = None) -> None:
        self.hits: list[dict[str, str]] = []
        hop = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                hop.hits.append({k.lower(): v for k, v in self.headers.items()})
                if hop.redirect_to:
                    self.send_response(307)
                    self.send_header("location", hop.redirect_to)
                else:
                    self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.redirect_to = redirect_to
        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self) -> _Hop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _deliver(settings: Settings, url: str) -> dict[str, Any]:
    return send_webhook(url=url, payload={"type": "test"}, msg_id="evalsvc-test-1", settings=settings)


def test_private_targets_are_refused_at_connect_time_too(settings: Settings) -> None:
    """A URL saved while private targets were allowed is refused when sent under the strict setting."""
    strict = settings.model_copy(update={"webhook_allow_private": False, "action_max_attempts": 1})
    with WebhookReceiver(WEBHOOK_SECRET) as receiver:
        with TestClient(create_app(settings)) as client:  # allow_private: the URL is accepted when saved
            Api(client, make_key(settings, "default")).apply(webhook_yaml(receiver.url))
        with TestClient(create_app(strict)) as client:
            api = Api(client, make_key(strict, "default"))
            api.ingest([record("r1", "extract", output={"total": "x"})])
            (action,) = _wait(lambda: [a for a in api.get("/v1/actions").json() if a["status"] == "failed"])
    assert receiver.received == [] and receiver.repeats == 0
    assert action["attempts"] == 1 and "non-public address 127.0.0.1" in action["last_error"]


def test_redirects_are_checked_hop_by_hop(settings: Settings) -> None:
    with _Hop("127.0.0.2") as inner, _Hop("127.0.0.1", redirect_to=inner.url) as outer:
        only_outer = settings.model_copy(
            update={"webhook_allow_private": False, "webhook_allow_networks": ["127.0.0.1/32"]}
        )
        with pytest.raises(WebhookError, match=r"^redirect refused: 127\.0\.0\.2 resolves to the non-public") as exc:
            _deliver(only_outer, outer.url)
        assert exc.value.retryable is False
        assert len(outer.hits) == 1 and inner.hits == []  # the private hop was never connected to

        both = only_outer.model_copy(update={"webhook_allow_networks": ["127.0.0.0/8"]})
        answer = _deliver(both, outer.url)
        assert answer["status_code"] == 200 and answer["redirects"] == [inner.url]
        (hit,) = inner.hits
        assert hit["webhook-id"] == "evalsvc-test-1" and hit["host"] == inner.url.split("/")[2]

        loop = settings.model_copy(update={"webhook_max_redirects": 0})
        with pytest.raises(WebhookError, match="more than 0 redirects"):
            _deliver(loop, outer.url)


def test_names_are_resolved_and_pinned_at_send_time(settings: Settings) -> None:
    """``localhost`` resolves to loopback: refused unless allowed; when allowed, the connection goes to
    the checked address while the Host header keeps the name."""
    with _Hop("127.0.0.1") as hop:
        url = hop.url.replace("127.0.0.1", "localhost")
        strict = settings.model_copy(update={"webhook_allow_private": False})
        with pytest.raises(WebhookError, match="localhost resolves to the non-public address"):
            _deliver(strict, url)
        assert hop.hits == []
        allowed = strict.model_copy(update={"webhook_allow_networks": ["127.0.0.0/8", "::1/128"]})
        addrs = checked_addresses(url, allow_private=False, allow_networks=allowed.webhook_allow_networks)
        if str(addrs[0]) != "127.0.0.1":
            pytest.skip(f"localhost resolves to {addrs[0]} first on this machine; the receiver listens on 127.0.0.1")
        assert _deliver(allowed, url)["status_code"] == 200
        assert hop.hits[0]["host"] == f"localhost:{hop.server.server_port}"
