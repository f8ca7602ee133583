"""HTTP request metrics, as a plain ASGI middleware (no per-request task or body buffering).

Each request is counted under its route's path template (``/v1/experiments/{job_id}``), never
its concrete path, so job ids do not multiply the series; requests that match no route count as
``unmatched``. Latency is measured to the response's start: an event stream lasts as long as
its job, which says nothing about the server's speed.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llem_service.monitoring.registry import ServiceMetrics

UNMATCHED = "unmatched"


class RequestMetrics:
    """Counts and times every HTTP request into ``metrics``."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        answered: list[Any] = []

        async def send_observed(message: Message) -> None:
            if message["type"] == "http.response.start" and not answered:
                answered.append(message["status"])
                self._observe(scope, message["status"], time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        except BaseException:
            if not answered:  # the error handler answers outside this middleware: a 500
                self._observe(scope, 500, time.perf_counter() - started)
            raise

    def _observe(self, scope: Scope, status: int, duration_s: float) -> None:
        template = route_template(scope)
        method = scope.get("method", "")
        self.metrics.http_requests.labels(template, method, str(status)).inc()
        self.metrics.http_duration.labels(template, method).observe(duration_s)


def route_template(scope: Scope) -> str:
    """The matched route's path template, from the request path with each path parameter's
    value put back as ``{name}``; `UNMATCHED` when no route matched.

    Rebuilt from the path rather than read from the route object, whose ``path`` lacks the
    prefix of an included router in some FastAPI versions."""
    if scope.get("endpoint") is None and scope.get("route") is None:
        return UNMATCHED
    if "app_root_path" in scope:  # inside a Mount (the static files): its prefix
        return f"{scope.get('root_path', '')}/{{path}}"
    path: str = scope.get("path", "")
    params = scope.get("path_params")
    if not params:
        return path
    # Segment by segment, no regular expression: a pattern per job id would miss re's cache
    # and compile on every request.
    segments = path.split("/")
    for name, value in params.items():
        parts = str(value).split("/")
        width = len(parts)
        for i in range(len(segments) - width, 0, -1):  # parameters come last: search back
            if segments[i : i + width] == parts:
                segments[i : i + width] = [f"{{{name}}}"]
                break
    return "/".join(segments)
