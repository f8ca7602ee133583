"""Every refusal the service makes to protect its host, each tested on its own."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from llem_client import Client
from llem_service.__main__ import main as service_main
from llem_service.backends.base import BackendError
from llem_service.backends.prompts import read_jsonl
from llem_service.backends.pytorch import PytorchBackend
from llem_service.backends.sources import resolve_local, resolve_model
from llem_service.settings import Settings
from pydantic import ValidationError

from tests.conftest import LiveServer, build_app, make_config
from tests.fakes import ScriptedBackend

PROBLEM = "application/problem+json"
TOKEN = "tok-0123456789abcdef"
#: Routes outside /v1 that are open on purpose: liveness, the API's own description, and the
#: dashboard's page, assets and sign-in (they hold no data: the page reads /v1 in the browser).
OPEN_ROUTES = {
    "/healthz",
    "/openapi.json",
    "/docs",
    "/docs/assets",
    "/redoc",
    "/",
    "/favicon.ico",
    "/ui",
    "/ui/{view:path}",
    "/ui/static",
    "/ui/session",
}
#: Outside /v1 and behind the token all the same (unless LLEM_METRICS_PUBLIC=true).
TOKEN_ROUTES_OUTSIDE_V1 = {"/metrics"}


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(build_app(tmp_path / "data", token=TOKEN)) as http:
        yield http


def _app_routes(http: TestClient) -> list[tuple[str, set[str]]]:
    """(path, methods) of every route the app serves, included routers flattened."""
    routes: list[Any] = http.app.routes  # type: ignore[attr-defined]
    try:  # FastAPI >= 0.160 wraps included routers; this flattens them
        from fastapi.routing import iter_route_contexts
    except ImportError:  # pragma: no cover - older FastAPI lists the routes themselves
        contexts: list[Any] = routes
    else:
        contexts = list(iter_route_contexts(routes))
    return [(c.path, set(c.methods or ())) for c in contexts if c.path]


def _v1_routes(http: TestClient) -> list[tuple[str, str]]:
    return [
        (method, path.replace("{job_id}", "0" * 32))
        for path, methods in _app_routes(http)
        if path.startswith("/v1")
        for method in sorted(methods - {"HEAD"})
    ]


def test_the_route_list_is_the_whole_api(secured: TestClient) -> None:
    documented = set(secured.get("/openapi.json").json()["paths"])

    assert {path for path, _ in _app_routes(secured)} == (
        documented | OPEN_ROUTES | TOKEN_ROUTES_OUTSIDE_V1
    )


def test_every_v1_route_of_the_app_answers_401_without_the_token(secured: TestClient) -> None:
    routes = _v1_routes(secured)

    assert ("GET", f"/v1/experiments/{'0' * 32}/events") in routes  # SSE is covered too
    for method, path in routes:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            response = secured.request(method, path, headers=headers, json={"model": "m"})
            assert response.status_code == 401, (method, path, headers)
            assert response.headers["content-type"] == PROBLEM
            assert response.headers["www-authenticate"].startswith("Bearer")


def test_with_the_token_every_v1_route_gets_past_auth(secured: TestClient) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    for method, path in _v1_routes(secured):
        response = secured.request(method, path, headers=headers, json={"model": "m"})
        assert response.status_code != 401, (method, path)


def test_no_route_outside_v1_but_health_and_the_api_description(secured: TestClient) -> None:
    paths = {path for path, _ in _app_routes(secured)}

    assert {p for p in paths if not p.startswith("/v1")} <= OPEN_ROUTES | TOKEN_ROUTES_OUTSIDE_V1
    assert secured.get("/healthz").status_code == 200


def test_metrics_need_the_token_unless_made_public(secured: TestClient, tmp_path: Path) -> None:
    assert secured.get("/metrics").status_code == 401
    assert secured.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    authorised = secured.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert authorised.status_code == 200
    assert authorised.headers["content-type"].startswith("text/plain")
    with TestClient(build_app(tmp_path / "open", token=TOKEN, metrics_public=True)) as http:
        assert http.get("/metrics").status_code == 200
        assert http.get("/v1/info").status_code == 401  # only /metrics opens


def test_an_empty_token_is_refused_as_a_setting() -> None:
    with pytest.raises(ValidationError, match="set but empty"):
        Settings(api_token="  ")


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_without_a_token_loopback_addresses_are_allowed(host: str) -> None:
    assert Settings(host=host).exposure_problem() is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "gpu-host.example"])
def test_without_a_token_other_addresses_are_refused(host: str) -> None:
    problem = Settings(host=host).exposure_problem()

    assert problem is not None
    assert "LLEM_ALLOW_UNAUTHENTICATED" in problem
    assert Settings(host=host, api_token=TOKEN).exposure_problem() is None
    assert Settings(host=host, allow_unauthenticated=True).exposure_problem() is None


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("LLEM_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env file


@pytest.mark.usefixtures("clean_env")
def test_llem_service_refuses_to_start_open_on_a_public_address() -> None:
    with pytest.raises(SystemExit) as exit_info:
        service_main(["--host", "0.0.0.0"])

    message = str(exit_info.value.code)
    assert message.startswith("llem-service: refusing to listen on 0.0.0.0 without a token")
    assert "\n" not in message


@pytest.mark.usefixtures("clean_env")
def test_llem_service_reports_a_bad_setting_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLEM_API_TOKEN", "")

    with pytest.raises(SystemExit) as exit_info:
        service_main([])

    assert str(exit_info.value.code) == (
        "llem-service: invalid setting api_token: LLEM_API_TOKEN is set but empty; "
        "set a real token or unset it"
    )


def test_the_llem_service_process_exits_non_zero_with_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLEM_")}
    done = subprocess.run(
        [sys.executable, "-m", "llem_service", "--host", "0.0.0.0", "--port", "1"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "refusing to listen on 0.0.0.0" in done.stderr


# -- request bodies ------------------------------------------------------------------------


@pytest.fixture
def small_limit(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(build_app(tmp_path / "data", max_body_bytes=2000)) as http:
        yield http


def _config_bytes(size: int) -> bytes:
    config = make_config(prompts={"source": "inline", "prompts": ["x" * size]})
    return config.model_dump_json().encode()


def _chunks(data: bytes, size: int = 100) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_a_declared_length_over_the_limit_is_413(small_limit: TestClient) -> None:
    response = small_limit.post("/v1/experiments", content=_config_bytes(3000))

    assert response.status_code == 413
    assert response.headers["content-type"] == PROBLEM
    assert "limit is 2000 bytes" in response.json()["detail"]


def test_a_chunked_body_over_the_limit_is_413(small_limit: TestClient) -> None:
    response = small_limit.post(
        "/v1/experiments",
        content=_chunks(_config_bytes(3000)),
        headers={"content-type": "application/json"},
    )

    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert response.headers["content-type"] == PROBLEM


def test_a_chunked_body_within_the_limit_is_accepted(small_limit: TestClient) -> None:
    response = small_limit.post(
        "/v1/experiments",
        content=_chunks(_config_bytes(10)),
        headers={"content-type": "application/json"},
    )

    assert response.status_code == 202, response.text


# -- models and datasets ---------------------------------------------------------------------


def test_trust_remote_code_is_refused_unless_the_server_allows_it() -> None:
    config = make_config(pytorch={"trust_remote_code": True})

    with pytest.raises(BackendError, match="trust_remote_code is refused"):
        PytorchBackend(allow_remote_code=False).load(config)


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    """(root, outside): a model root with a model in it, and a directory beside it."""
    root, outside = tmp_path / "models", tmp_path / "outside"
    (root / "good").mkdir(parents=True)
    (outside / "secret").mkdir(parents=True)
    (outside / "data.jsonl").write_text('{"prompt": "hi"}\n')
    return root, outside


def test_dot_dot_cannot_leave_the_roots(roots: tuple[Path, Path]) -> None:
    root, _ = roots

    with pytest.raises(BackendError, match="outside the allowed roots"):
        resolve_model(f"{root}/../outside/secret", [root])
    with pytest.raises(BackendError, match="outside the allowed roots"):
        resolve_local("../outside/data.jsonl", [root], "prompt file")
    with pytest.raises(BackendError, match=r"'\.\.' is not allowed"):
        resolve_model("good/../../outside/secret", [root])


def test_a_symlink_cannot_leave_the_roots(roots: tuple[Path, Path]) -> None:
    root, outside = roots
    (root / "link").symlink_to(outside / "secret")
    (root / "data.jsonl").symlink_to(outside / "data.jsonl")

    with pytest.raises(BackendError, match="outside the allowed roots"):
        resolve_model(f"{root}/link", [root])
    with pytest.raises(BackendError, match="outside the allowed roots"):
        resolve_local("data.jsonl", [root], "prompt file")
    assert resolve_model("link", [root]) == "link"  # not a local model: a hub id at most


def test_a_name_that_is_a_path_outside_the_roots_is_refused(
    roots: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, outside = roots
    monkeypatch.chdir(outside)  # transformers would load "secret" from here

    with pytest.raises(BackendError, match="names a path on the server"):
        resolve_model("secret", [root])
    assert resolve_model("good", [root]) == str(root / "good")
    assert resolve_model("org/hub-model", [root]) == "org/hub-model"


def test_without_roots_no_local_path_is_allowed(roots: tuple[Path, Path]) -> None:
    _, outside = roots

    with pytest.raises(BackendError, match="allows none"):
        resolve_model(str(outside / "secret"), [])


def test_a_dataset_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    path.write_text('{"prompt": "hello"}\n' * 100)

    with pytest.raises(BackendError, match="larger than the server's limit of 1000 bytes"):
        read_jsonl(path, "prompt", max_bytes=1000)
    assert len(read_jsonl(path, "prompt", max_bytes=10_000)) == 100


def test_a_dataset_must_be_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)  # reading it would block the experiment forever

    with pytest.raises(BackendError, match="not a regular file"):
        read_jsonl(fifo, "prompt")


def test_dataset_lines_split_only_on_newlines(tmp_path: Path) -> None:
    path = tmp_path / "sep.jsonl"
    path.write_text('{"prompt": "a\u2028b"}\n\n{"prompt": "c"}\n', encoding="utf-8")

    assert read_jsonl(path, "prompt") == ["a\u2028b", "c"]


def test_the_limit_reaches_the_backend_from_the_settings() -> None:
    backend = PytorchBackend.from_settings(Settings(max_dataset_bytes=1234))

    assert backend.max_dataset_bytes == 1234
    assert backend.__getstate__()["max_dataset_bytes"] == 1234


# -- secrets -----------------------------------------------------------------------------------

HF_SECRET = "hf_secretvalue0123456789"


def test_secrets_never_reach_logs_results_or_the_api(
    start_server: Callable[..., LiveServer],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("HF_TOKEN", HF_SECRET)
    caplog.set_level(logging.DEBUG)
    server = start_server(backend=ScriptedBackend(), token=TOKEN, log_level="debug")
    seen: list[str] = []

    with Client(server.base_url, token=TOKEN) as client:
        ok = client.wait(client.submit(make_config()).id, timeout=30)
        seen.append(client.result(ok.id).model_dump_json())
        crashed = client.submit(make_config(tags={"fake.fault": "exit"}))
        seen.append(client.wait(crashed.id, timeout=30).model_dump_json())
        seen.append(client.info().model_dump_json())
        seen.append(client.list().model_dump_json())
    seen.append(repr(server.app.state.settings))
    seen.append(str(server.app.state.settings.model_dump()))
    # results and timeseries (Parquet is binary; a secret in it would still be readable text)
    seen.extend(
        p.read_bytes().decode("utf-8", "replace") for p in (server.data_dir / "results").iterdir()
    )
    seen.append(caplog.text)
    out, err = capfd.readouterr()
    seen.extend([out, err])

    for text in seen:
        assert TOKEN not in text
        assert HF_SECRET not in text


@pytest.mark.usefixtures("clean_env")
def test_the_uvicorn_factory_refuses_what_it_can_see(monkeypatch: pytest.MonkeyPatch) -> None:
    from llem_service.app import create_app_from_env

    monkeypatch.setenv("LLEM_HOST", "0.0.0.0")
    with pytest.raises(RuntimeError, match=r"refusing to listen on 0\.0\.0\.0"):
        create_app_from_env()
    monkeypatch.setenv("LLEM_API_TOKEN", TOKEN)
    assert create_app_from_env().state.settings.host == "0.0.0.0"
