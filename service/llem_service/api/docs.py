"""``/docs`` (Swagger UI) and ``/redoc``, with their scripts and styles served by the service
itself from `llem_service/ui/vendor` (versions and licences in its README), so the pages work
on a host that cannot reach a CDN. Both are open, like ``/openapi.json``: they describe the API
and call it only with the token the reader types in, kept in the page, not in the browser's
storage."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

VENDOR_DIR = Path(__file__).resolve().parent.parent / "ui" / "vendor"
ASSETS_URL = "/docs/assets"


def install_docs(app: FastAPI) -> None:
    """Add ``/docs``, ``/redoc`` and their assets under ``/docs/assets`` (none in the schema)."""
    title = f"{app.title} {app.version}"
    openapi_url = app.openapi_url or "/openapi.json"
    favicon = f"{ASSETS_URL}/swagger-ui/favicon-32x32.png"

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{title} - Swagger UI",
            swagger_js_url=f"{ASSETS_URL}/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui/swagger-ui.css",
            swagger_favicon_url=favicon,
            # No persistAuthorization: it keeps the token typed into "Authorize" in the
            # browser's localStorage, readable by any script of this origin (the dashboard's
            # too) and left on the disk of a shared machine. The token lives in the page only.
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{title} - ReDoc",
            redoc_js_url=f"{ASSETS_URL}/redoc/redoc.standalone.js",
            redoc_favicon_url=favicon,
            with_google_fonts=False,
        )

    app.mount(ASSETS_URL, StaticFiles(directory=VENDOR_DIR), name="docs-assets")
