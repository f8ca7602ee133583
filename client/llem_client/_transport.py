"""The one translation of httpx's transport errors into the client's errors."""

from __future__ import annotations

import httpx

from llem_client._exceptions import APIConnectionError, APITimeoutError


def transport_error(exc: httpx.TransportError, base_url: str) -> APIConnectionError:
    """`APITimeoutError` for a timeout, else `APIConnectionError`, naming the server."""
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(f"timed out talking to {base_url}: {exc}")
    return APIConnectionError(f"cannot reach the llem server at {base_url}: {exc}")
