"""``OPTIONS`` and ``405``: the ``Allow`` header lists every method of every route at the path.

Starlette answers a method that a path does not have from the first route that matches the path
alone, so ``Allow`` named that route's methods only (``POST`` for ``/v1/experiments``, which
also has ``GET``). This middleware answers ``OPTIONS`` itself (``204`` with the full ``Allow``)
and completes the ``Allow`` of any ``405``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def route_table(routes: Sequence[Any]) -> list[tuple[re.Pattern[str], frozenset[str]]]:
    """(path pattern, methods) of every route, routers included in the app flattened."""
    try:  # FastAPI >= 0.160 keeps included routers wrapped; this flattens them
        from fastapi.routing import iter_route_contexts
    except ImportError:  # pragma: no cover - older FastAPI lists the routes themselves
        contexts: list[Any] = list(routes)
    else:
        contexts = list(iter_route_contexts(routes))
    table = []
    for context in contexts:
        path, methods = getattr(context, "path", None), getattr(context, "methods", None)
        if path and methods:  # a Mount (static files) has no methods
            table.append((compile_path(path)[0], frozenset(methods)))
    return table


def allowed_methods(table: list[tuple[re.Pattern[str], frozenset[str]]], path: str) -> list[str]:
    """Every method the routes serve at ``path`` (OPTIONS included), sorted; empty when no
    route has the path."""
    found: set[str] = set()
    for pattern, methods in table:
        if pattern.match(path):
            found |= methods
    return sorted(found | {"OPTIONS"}) if found else []


class AllowHeader:
    """ASGI middleware: ``OPTIONS`` answered from the routes; ``405`` with the full ``Allow``.

    Args:
        app: The wrapped application.
        routes: The application's routes (read at the first request).
    """

    def __init__(self, app: ASGIApp, routes: Sequence[Any]) -> None:
        self.app = app
        self.routes = routes
        self._table: list[tuple[re.Pattern[str], frozenset[str]]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._table is None:  # built at the first request, when every route is there
            self._table = route_table(self.routes)
        allowed = allowed_methods(self._table, scope["path"])
        if scope["method"] == "OPTIONS" and allowed:
            await send(
                {
                    "type": "http.response.start",
                    "status": 204,
                    "headers": [(b"allow", ", ".join(allowed).encode())],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return

        async def send_with_allow(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 405 and allowed:
                headers = MutableHeaders(scope=message)
                headers["Allow"] = ", ".join(allowed)
            await send(message)

        await self.app(scope, receive, send_with_allow)
