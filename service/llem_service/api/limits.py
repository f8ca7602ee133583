"""Request body limit, enforced on the bytes received, not on what ``Content-Length`` claims.

A chunked request has no ``Content-Length`` and a lying client can send more than it declared,
so the middleware counts the body as it arrives and answers ``413`` as soon as it passes the
limit, without handing any of it to the app. Bodies within the limit are buffered (the API's
bodies are JSON documents of a few KiB) and replayed to the app unchanged.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llem_service.api.problems import problem_response
from llem_service.errors import PayloadTooLarge


class BodySizeLimit:
    """ASGI middleware: refuse HTTP requests whose body exceeds ``max_bytes`` with a 413 problem.

    Args:
        app: The wrapped application.
        max_bytes: Largest accepted body, bytes.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send, f"the request body is {int(declared)} bytes")
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, _replay([message], receive), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                what = f"the request body has passed {self.max_bytes} bytes"
                await self._refuse(scope, receive, send, what)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([body], receive), send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, what: str) -> None:
        error = PayloadTooLarge(f"{what}; the limit is {self.max_bytes} bytes")
        response = problem_response(error.problem(scope.get("path")))
        await response(scope, receive, send)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A receive that gives ``messages`` first, then whatever ``receive`` gives."""
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed
