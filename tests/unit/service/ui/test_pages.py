"""The dashboard's page and assets: served by the service itself, locked down, vendored."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from llem_service.ui.routes import CONTENT_SECURITY_POLICY, STATIC_DIR

from tests.conftest import build_app

VENDOR = STATIC_DIR / "vendor"


@pytest.fixture
def http(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(build_app(tmp_path / "data")) as client:
        yield client


def test_the_root_redirects_to_the_dashboard(http: TestClient) -> None:
    response = http.get("/", follow_redirects=False)

    assert response.status_code == 307
    assert response.headers["location"] == "/ui"


@pytest.mark.parametrize("path", ["/ui", "/ui/", "/ui/experiments/abc", "/ui/compare", "/ui/x/y"])
def test_every_view_is_the_same_locked_down_page(http: TestClient, path: str) -> None:
    response = http.get(path)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY
    assert response.headers["x-content-type-options"] == "nosniff"
    assert '<main id="main"' in response.text


def test_the_page_loads_nothing_from_another_origin() -> None:
    sources = [STATIC_DIR / "index.html", *STATIC_DIR.glob("js/**/*.js"), STATIC_DIR / "app.css"]
    for source in sources:
        text = source.read_text()
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", text), source
        assert not re.search(r"""(import|from)\s*\(?\s*["'](https?:)?//""", text), source
        assert 'fetch("http' not in text, source


def test_vendored_assets_match_their_manifest_with_licences(http: TestClient) -> None:
    manifest = json.loads((VENDOR / "VENDORED.json").read_text())

    assert manifest, "nothing vendored?"
    for name, entry in manifest.items():
        folder = VENDOR / entry["directory"]
        assert entry["version"] in entry["directory"], name
        assert (folder / entry["license_file"]).is_file(), name
        assert entry["license"] == "MIT", name  # compatible with the project's Apache-2.0
        for file, digest in entry["sha256"].items():
            assert hashlib.sha256((folder / file).read_bytes()).hexdigest() == digest, file
            served = http.get(f"/ui/static/vendor/{entry['directory']}/{file}")
            assert served.status_code == 200
    page = http.get("/ui").text
    for entry in manifest.values():
        assert f"/ui/static/vendor/{entry['directory']}/" in page
