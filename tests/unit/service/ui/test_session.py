"""The dashboard's sign-in: the token exchanged for an HttpOnly, SameSite=Strict cookie, and
CSRF protection on every state-changing request made on that cookie."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from llem_service.ui.session import COOKIE_NAME, SESSION_S, SessionKeys

from tests.conftest import build_app, make_config

TOKEN = "ui-token-0123456789abcdef"
PROBLEM = "application/problem+json"


@pytest.fixture
def http(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(build_app(tmp_path / "data", token=TOKEN)) as client:
        yield client


def sign_in(http: TestClient, token: str = TOKEN) -> str:
    response = http.post("/ui/session", json={"token": token})
    assert response.status_code == 200, response.text
    return str(response.json()["csrf_token"])


def body() -> dict[str, object]:
    return make_config().model_dump(mode="json", exclude_unset=True)


def test_the_right_token_gives_an_httponly_strict_cookie_and_a_csrf_token(http: TestClient) -> None:
    assert http.get("/ui/session").json() == {
        "auth_required": True,
        "authenticated": False,
        "csrf_token": None,
    }

    response = http.post("/ui/session", json={"token": TOKEN})

    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE_NAME}=v1.")
    for attribute in ("HttpOnly", "SameSite=strict", "Path=/", f"Max-Age={SESSION_S}"):
        assert attribute in cookie
    assert "Secure" not in cookie  # plain HTTP (an SSH tunnel): a Secure cookie would be dropped
    assert TOKEN not in cookie
    state = response.json()
    assert state["authenticated"] is True
    assert http.get("/ui/session").json() == state


def test_a_wrong_token_is_refused_with_a_clear_message_and_no_cookie(http: TestClient) -> None:
    response = http.post("/ui/session", json={"token": "wrong"})

    assert response.status_code == 401
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["detail"] == (
        "that is not this server's token (LLEM_API_TOKEN); check for a typo or an old token"
    )
    assert "set-cookie" not in response.headers


def test_the_session_reads_the_api_and_writes_only_with_its_csrf_token(http: TestClient) -> None:
    csrf = sign_in(http)

    assert http.get("/v1/info").status_code == 200
    missing = http.post("/v1/experiments", json=body())
    wrong = http.post("/v1/experiments", json=body(), headers={"X-CSRF-Token": "forged"})
    right = http.post("/v1/experiments", json=body(), headers={"X-CSRF-Token": csrf})

    assert missing.status_code == wrong.status_code == 403
    assert missing.json()["type"] == "urn:llem:problem:csrf-rejected"
    assert right.status_code == 202
    job_id = right.json()["id"]
    cancel = http.post(f"/v1/experiments/{job_id}/cancel")
    assert cancel.status_code == 403


def test_a_wrong_bearer_token_is_not_rescued_by_a_session(http: TestClient) -> None:
    sign_in(http)

    response = http.get("/v1/info", headers={"Authorization": "Bearer wrong"})

    assert response.status_code == 401


@pytest.mark.parametrize(
    "value",
    [
        "v1.9999999999.nonce.forged-mac",
        "garbage",
        "",
        SessionKeys("another-token").issue(now_s=1e9 + 1e6),  # made with another token
        SessionKeys(TOKEN).issue(now_s=1_000_000.0),  # long expired
    ],
)
def test_a_forged_expired_or_foreign_session_is_refused(http: TestClient, value: str) -> None:
    http.cookies.set(COOKIE_NAME, value)

    response = http.get("/v1/info")

    assert response.status_code == 401
    assert http.get("/ui/session").json()["authenticated"] is False


def test_a_session_ends_when_the_token_changes(tmp_path: Path) -> None:
    with TestClient(build_app(tmp_path / "data", token=TOKEN)) as first:
        sign_in(first)
        cookie = first.cookies[COOKIE_NAME]
    with TestClient(build_app(tmp_path / "data", token="rotated-token-0123456789")) as second:
        second.cookies.set(COOKIE_NAME, cookie)
        assert second.get("/v1/info").status_code == 401
    with TestClient(build_app(tmp_path / "data", token=TOKEN)) as restarted:
        restarted.cookies.set(COOKIE_NAME, cookie)
        assert restarted.get("/v1/info").status_code == 200  # survives a restart


def test_signing_out_clears_the_cookie_and_needs_the_csrf_token(http: TestClient) -> None:
    csrf = sign_in(http)

    assert http.delete("/ui/session").status_code == 403
    response = http.delete("/ui/session", headers={"X-CSRF-Token": csrf})

    assert response.status_code == 204
    assert f'{COOKIE_NAME}=""' in response.headers["set-cookie"]
    assert http.get("/v1/info").status_code == 401


def test_without_a_token_the_page_needs_no_sign_in(tmp_path: Path) -> None:
    with TestClient(build_app(tmp_path / "data")) as http:
        assert http.get("/ui/session").json()["auth_required"] is False
        assert http.post("/ui/session", json={"token": "anything"}).json() == {
            "auth_required": False,
            "authenticated": True,
            "csrf_token": None,
        }


def test_the_token_is_never_logged_nor_in_a_page(
    http: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    http.post("/ui/session", json={"token": "wrong-" + TOKEN})
    sign_in(http)
    pages = [http.get(path).text for path in ("/ui", "/ui/experiments/x", "/ui/session")]

    assert TOKEN not in caplog.text
    assert not any(TOKEN in text for text in pages)
