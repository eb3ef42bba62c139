"""``GET /metrics``: Prometheus text, counted from the store at scrape time (docs/metrics.md).

Open unless ``EVALSVC_METRICS_TOKEN`` is set; then ``Authorization: Bearer <token>`` is required.
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request, Response

from evalsvc.errors import Unauthorized

from ..deps import EngineDep, SettingsDep

router = APIRouter()


@router.get("/metrics", tags=["health"], response_class=Response, summary="Prometheus metrics (text format)")
def metrics(request: Request, engine: EngineDep, settings: SettingsDep) -> Response:
    if settings.metrics_token is not None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        expected = settings.metrics_token.get_secret_value()
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
            raise Unauthorized("send 'Authorization: Bearer <EVALSVC_METRICS_TOKEN>'", field="authorization")
    # prometheus_client loads on the first scrape, not with the service (idle memory)
    from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

    from evalsvc.pipeline.metrics import metrics_registry, render_metrics

    registry = getattr(request.app.state, "metrics_registry", None)
    if registry is None:
        registry = request.app.state.metrics_registry = metrics_registry(engine=engine)
    return Response(render_metrics(registry=registry), media_type=CONTENT_TYPE_PLAIN_0_0_4)
