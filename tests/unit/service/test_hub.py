"""The real `HuggingFaceHub`: its cache as huggingface_hub lays it out, the offline variables,
and its questions to a hub, asked of a stand-in hub served on loopback (``HF_ENDPOINT``) that
answers as the Hugging Face hub does (a 401 with ``X-Error-Code: RepoNotFound`` for a repo
that does not exist, ``GatedRepo`` for a gated one)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from llem_service.models.hub import HubAnswer, HuggingFaceHub, hub_cache_dir

#: path -> (status, X-Error-Code header or "")
ANSWERS = {
    "/api/models/gpt2": (200, ""),
    "/api/models/meta-llama/Llama-3.1-8B": (401, "GatedRepo"),
    "/api/models/org/missing": (401, "RepoNotFound"),
    "/api/models/gpt2/revision/nope": (404, "RevisionNotFound"),
    "/api/models/broken": (503, ""),
}


class _Hub(BaseHTTPRequestHandler):
    requests: list[str] = []  # noqa: RUF012 (one hub per test, reset by the fixture)

    def do_GET(self) -> None:
        type(self).requests.append(self.path)
        if self.path == "/api/models/slow":
            time.sleep(2)
        status, code = ANSWERS.get(self.path, (404, "RepoNotFound"))
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hub_url() -> Iterator[str]:
    _Hub.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_lookups_read_the_hubs_answers(hub_url: str) -> None:
    hub = HuggingFaceHub(environ={"HF_ENDPOINT": hub_url, "HF_HOME": "/nonexistent"})

    assert hub.lookup("gpt2", None).answer is HubAnswer.EXISTS
    assert hub.lookup("meta-llama/Llama-3.1-8B", None).answer is HubAnswer.EXISTS  # gated
    assert hub.lookup("org/missing", None).answer is HubAnswer.MISSING
    assert hub.lookup("gpt2", "nope").answer is HubAnswer.REVISION_MISSING
    broken = hub.lookup("broken", None)
    assert broken.answer is HubAnswer.UNREACHABLE
    assert broken.reason == f"{hub_url} answered 503"


def test_answers_are_remembered(hub_url: str) -> None:
    hub = HuggingFaceHub(environ={"HF_ENDPOINT": hub_url})

    for _ in range(3):
        hub.lookup("gpt2", None)

    assert _Hub.requests == ["/api/models/gpt2"]


def test_a_hub_that_does_not_answer_in_time_is_unreachable(hub_url: str) -> None:
    hub = HuggingFaceHub(timeout_s=0.2, environ={"HF_ENDPOINT": hub_url})

    started = time.monotonic()
    found = hub.lookup("slow", None)

    assert found.answer is HubAnswer.UNREACHABLE
    assert "did not answer" in found.reason
    assert time.monotonic() - started < 1.5


def test_a_closed_port_is_unreachable() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    hub = HuggingFaceHub(environ={"HF_ENDPOINT": f"http://127.0.0.1:{port}"})

    assert hub.lookup("gpt2", None).answer is HubAnswer.UNREACHABLE


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_offline_variables(variable: str) -> None:
    assert HuggingFaceHub(environ={variable: "1"}).offline_reason() == (
        f"{variable} is set on the server"
    )
    assert HuggingFaceHub(environ={variable: "0"}).offline_reason() is None


def test_the_cache_directory_follows_huggingface_hubs_variables(tmp_path: Path) -> None:
    assert hub_cache_dir({"HF_HUB_CACHE": "/a"}) == Path("/a")
    assert hub_cache_dir({"HF_HOME": "/h"}) == Path("/h/hub")
    assert hub_cache_dir({"XDG_CACHE_HOME": "/x"}) == Path("/x/huggingface/hub")


def test_cached_models_and_their_configs(tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    repo = cache / "models--org--tiny"
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({"max_position_embeddings": 256}))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    (cache / "models--half--done" / "snapshots").mkdir(parents=True)  # no snapshot yet
    hub = HuggingFaceHub(environ={"HF_HUB_CACHE": str(cache)})

    assert hub.cached_models() == ["org/tiny"]
    assert hub.cached_config("org/tiny", None) == {"max_position_embeddings": 256}
    assert hub.cached_config("org/tiny", "abc123") == {"max_position_embeddings": 256}
    assert hub.cached_config("org/tiny", "other") is None
    assert hub.cached_config("half/done", None) is None
