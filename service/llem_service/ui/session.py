"""Dashboard sessions: the API token, typed once, exchanged for an HttpOnly cookie.

Why a cookie rather than the token in session storage: page scripts never hold the token (a
script injected into the page could not read it out), and the browser sends the cookie by
itself on the requests a script cannot add a header to: the ``EventSource`` of the live event
streams, and the download links of results and timeseries.

The cookie is ``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other site's page makes
the browser send it), ``Path=/``, and ``Secure`` when the page came over HTTPS. Its value is
stateless: ``v1.<expiry>.<nonce>.<mac>``, the MAC an HMAC-SHA256 under a key derived from the
API token, so a session survives a server restart and ends when the token changes.

Cross-site request forgery: besides SameSite, every state-changing request on a session (any
method but GET, HEAD and OPTIONS) must carry ``X-CSRF-Token``, a second MAC of the session value
that the page learns from ``/ui/session`` and keeps in memory. Another site can neither read
it nor (without a CORS preflight this server never grants) send the header.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

COOKIE_NAME = "llem_session"
CSRF_HEADER = "X-CSRF-Token"
#: A session lasts this long; then the page asks for the token again.
SESSION_S = 12 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


class SessionKeys:
    """Issues and checks session cookies and their CSRF tokens for one API token."""

    def __init__(self, api_token: str) -> None:
        self._key = hmac.new(api_token.encode(), b"llem-ui-session-v1", hashlib.sha256).digest()

    def _mac(self, text: str) -> str:
        return _b64(hmac.new(self._key, text.encode(), hashlib.sha256).digest())

    def issue(self, now_s: float) -> str:
        """A new session value, valid for `SESSION_S` from ``now_s`` (epoch seconds)."""
        body = f"v1.{int(now_s + SESSION_S)}.{secrets.token_urlsafe(16)}"
        return f"{body}.{self._mac(body)}"

    def valid(self, value: str, now_s: float) -> bool:
        """Whether ``value`` is a session this key issued that has not expired."""
        body, _, mac = value.rpartition(".")
        parts = body.split(".")
        if len(parts) != 3 or parts[0] != "v1" or not parts[1].isdigit():
            return False
        if not hmac.compare_digest(mac.encode(), self._mac(body).encode()):
            return False
        return int(parts[1]) > now_s

    def csrf_token(self, value: str) -> str:
        """The CSRF token of a session value."""
        return self._mac(f"csrf.{value}")

    def csrf_ok(self, value: str, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(
            given.encode(), self.csrf_token(value).encode()
        )
