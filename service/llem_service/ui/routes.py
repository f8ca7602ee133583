"""The dashboard: one HTML page and its static assets under ``/ui``, and its sign-in.

The page is static: it holds no data and no secret, and reads everything from the /v1 API in
the browser. Every path under ``/ui`` but ``/ui/static`` and ``/ui/session`` answers the same
page, whose script shows the view the path names (``/ui/experiments/<id>``, ...), so links to
views can be shared and reloaded. Assets are vendored in ``ui/static`` (no CDN: GPU clusters
are often air-gapped); ``ui/static/vendor/VENDORED.json`` lists their versions and licences.
"""

from __future__ import annotations

import hmac
import time
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Body, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, SecretStr

from llem_service.deps import SettingsDep
from llem_service.errors import CsrfRejected, NotAuthenticated
from llem_service.ui.session import COOKIE_NAME, CSRF_HEADER, SESSION_S, SessionKeys

STATIC_DIR = Path(__file__).resolve().parent / "static"

#: No inline script or style, nothing from another origin, never framed (clickjacking).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


class SessionState(BaseModel):
    """What the page needs to know about its sign-in."""

    auth_required: bool = Field(description="The server has LLEM_API_TOKEN set.")
    authenticated: bool
    csrf_token: str | None = Field(
        default=None, description=f"Send as {CSRF_HEADER} on state-changing requests."
    )


class SignIn(BaseModel):
    token: SecretStr = Field(max_length=4096)


def _keys(settings: SettingsDep) -> SessionKeys | None:
    if settings.api_token is None:
        return None
    return SessionKeys(settings.api_token.get_secret_value())


@router.get("/", response_class=RedirectResponse)
def root() -> RedirectResponse:
    return RedirectResponse("/ui", status_code=307)


@router.get("/favicon.ico", response_class=FileResponse)
def favicon() -> FileResponse:
    """Browsers ask for it on every page of the server, the JSON ones too."""
    return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml")


@router.get("/ui/session", response_model=SessionState)
def session_state(request: Request, settings: SettingsDep) -> SessionState:
    keys = _keys(settings)
    if keys is None:
        return SessionState(auth_required=False, authenticated=True)
    value = request.cookies.get(COOKIE_NAME)
    if value is None or not keys.valid(value, time.time()):
        return SessionState(auth_required=True, authenticated=False)
    return SessionState(auth_required=True, authenticated=True, csrf_token=keys.csrf_token(value))


@router.post("/ui/session", response_model=SessionState)
def sign_in(
    sign: Annotated[SignIn, Body()], request: Request, response: Response, settings: SettingsDep
) -> SessionState:
    """Exchange the API token for a session cookie (the token travels in the body only)."""
    keys = _keys(settings)
    if keys is None or settings.api_token is None:
        return SessionState(auth_required=False, authenticated=True)
    expected = settings.api_token.get_secret_value().encode()
    if not hmac.compare_digest(sign.token.get_secret_value().strip().encode(), expected):
        raise NotAuthenticated(
            "that is not this server's token (LLEM_API_TOKEN); check for a typo or an old token"
        )
    value = keys.issue(time.time())
    response.set_cookie(
        COOKIE_NAME,
        value,
        max_age=SESSION_S,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return SessionState(auth_required=True, authenticated=True, csrf_token=keys.csrf_token(value))


@router.delete("/ui/session", status_code=204)
def sign_out(request: Request, settings: SettingsDep) -> Response:
    """End the session: the cookie is cleared (a session that carries a CSRF token only)."""
    keys = _keys(settings)
    value = request.cookies.get(COOKIE_NAME)
    if (
        keys is not None
        and value is not None
        and keys.valid(value, time.time())
        and not keys.csrf_ok(value, request.headers.get(CSRF_HEADER))
    ):
        raise CsrfRejected(f"signing out needs the session's {CSRF_HEADER} header")
    response = Response(status_code=204)
    response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="strict")
    return response


def _page() -> HTMLResponse:
    return HTMLResponse((STATIC_DIR / "index.html").read_bytes(), headers=PAGE_HEADERS)


@router.get("/ui", response_class=HTMLResponse)
def page() -> HTMLResponse:
    return _page()


@router.get("/ui/{view:path}", response_class=HTMLResponse)
def view_page(view: str) -> HTMLResponse:
    """Any view of the dashboard: the same page, which routes by its path."""
    return _page()


def static_files() -> StaticFiles:
    return StaticFiles(directory=STATIC_DIR, check_dir=True)
