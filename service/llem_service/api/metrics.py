"""``/metrics``: the service's Prometheus metrics (`llem_service.monitoring.registry`).

Behind the API token like every /v1 route (a bearer token, or a dashboard session), unless
``LLEM_METRICS_PUBLIC=true`` opens it for a Prometheus on a trusted network.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from llem_service.deps import SettingsDep, require_token
from llem_service.monitoring.registry import ServiceMetrics

router = APIRouter(tags=["service"])


@router.get("/metrics", include_in_schema=False)
def get_metrics(request: Request, settings: SettingsDep) -> Response:
    """The Prometheus text exposition of every metric."""
    if not settings.metrics_public:
        require_token(request, settings)
    metrics: ServiceMetrics = request.app.state.metrics
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
