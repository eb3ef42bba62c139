"""Every /v1 route needs a project key, and a key of one project sees nothing of another."""

from __future__ import annotations

from fastapi.testclient import TestClient

from .conftest import Api
from .factories import SCHEMA_YAML, record


def _v1_routes(client: TestClient) -> set[tuple[str, str]]:
    """Every /v1 operation the app publishes (from its OpenAPI document)."""
    paths = client.get("/openapi.json").json()["paths"]
    return {(m.upper(), p) for p, ops in paths.items() if p.startswith("/v1") for m in ops}


def _seed(api: Api) -> int:
    """Project A: an evaluator, a run with a failed eval and its review item."""
    api.apply(SCHEMA_YAML)
    api.ingest([record("secret-run", "extract", output={"total": "oops"})])
    (review,) = api.get("/v1/reviews").json()
    return int(review["id"])


# routes that orchestrators call with their own signature instead of a project key
SIGNED = {("POST", "/v1/webhooks/inngest"): "x-inngest-signature"}


def test_every_v1_route_needs_a_key(client: TestClient) -> None:
    routes = _v1_routes(client)
    assert len(routes) >= 10
    for method, path in routes:
        url = (
            path.replace("{connector}", "json")
            .replace("{run_key}", "r1")
            .replace("{review_id}", "1")
            .replace("{step_key}", "s1")
        )
        for headers in ({}, {"authorization": "Bearer esk_not_a_key"}, {"authorization": "Basic abc"}):
            r = client.request(method, url, headers=headers, json=[])
            assert r.status_code == 401, (method, url, headers, r.text)
            assert r.json()["field"] == SIGNED.get((method, path), "authorization")


def test_other_project_sees_nothing(api: Api, other_api: Api, client: TestClient) -> None:
    review_id = _seed(api)
    a_eval = api.get("/v1/evals").json()[0]
    assert a_eval["passed"] is False

    # reads: 404 for A's objects, empty lists for collections
    assert other_api.get("/v1/runs/secret-run").status_code == 404
    assert other_api.get("/v1/runs/secret-run?source=json").status_code == 404
    for path in ("/v1/runs", "/v1/evals", "/v1/evals?passed=false", "/v1/evaluators", "/v1/actions",
                 "/v1/reviews", "/v1/reviews?status=all"):  # fmt: skip
        r = other_api.get(path)
        assert r.status_code == 200 and r.json() == [], (path, r.text)
    # writes on A's objects: 404, and A's item stays open
    for verb in ("approve", "reject"):
        r = other_api.post(f"/v1/reviews/{review_id}/{verb}", json={"comment": "not mine"})
        assert r.status_code == 404, r.text
    assert api.get("/v1/reviews").json()[0]["status"] == "open"
    assert other_api.get(f"/v1/reviews/{review_id}").status_code == 404
    assert other_api.get("/v1/runs/secret-run/steps/extract/verdict").status_code == 404
    assert other_api.get("/v1/drift/reports").json() == []
    # SQL sees the caller's project only
    sql = {"sql": "SELECT count(*) AS n FROM evals"}
    assert api.post("/v1/query", json=sql).json()["rows"] == [[1]]
    assert other_api.post("/v1/query", json=sql).json()["rows"] == [[0]]
    # B's writes land in B only
    other_api.ingest([record("secret-run", "extract")])
    assert len(api.get("/v1/runs/secret-run").json()["steps"]) == 1
    assert other_api.get("/v1/evals").json() == []  # B has no evaluators; A's do not run on B's steps
    assert api.get("/v1/evals").json()[0]["id"] == a_eval["id"]

    # every v1 route is covered above
    covered = {("GET", "/v1/runs"), ("GET", "/v1/runs/{run_key}"), ("GET", "/v1/evals"), ("GET", "/v1/evaluators"),
               ("POST", "/v1/evaluators"), ("GET", "/v1/actions"), ("GET", "/v1/reviews"),
               ("POST", "/v1/reviews/{review_id}/approve"), ("POST", "/v1/reviews/{review_id}/reject"),
               ("POST", "/v1/ingest/{connector}"), ("GET", "/v1/reviews/{review_id}"),
               ("GET", "/v1/runs/{run_key}/steps/{step_key}/verdict"), ("GET", "/v1/drift/reports"),
               ("POST", "/v1/query"),
               # writes whose project is the caller's, covered by their own tests
               ("POST", "/v1/traces"), ("POST", "/v1/webhooks/inngest")}  # fmt: skip
    assert _v1_routes(client) <= covered, _v1_routes(client) - covered


def test_revoked_key_is_refused(api: Api, client: TestClient) -> None:
    from evalsvc.pipeline.projects import get_project, revoke_key
    from evalsvc.store.db import get_engine, session_scope

    assert api.get("/v1/runs").status_code == 200
    engine = get_engine(client.app.state.settings.resolved_database_url())  # type: ignore[attr-defined]
    with session_scope(engine) as session:
        revoke_key(session=session, project=get_project(session=session, name="default"), prefix=api.key[:12])
    r = api.get("/v1/runs")
    assert r.status_code == 401 and "revoked" in r.json()["message"]


def test_unknown_routes_answer_in_the_error_shape(client: TestClient) -> None:
    r = client.get("/v1/nothing-here")
    assert r.status_code == 404 and r.json() == {"error": "not_found", "message": "Not Found", "field": None}
    r = client.delete("/healthz")
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"
