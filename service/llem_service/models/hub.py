"""The model hub as the server sees it at submit: the `ModelHub` seam and its real
implementation over the Hugging Face hub's HTTP API and its local cache.

At submit the service asks three things: is the model in the hub cache (then it loads without
the network), may the hub be reached at all (offline mode), and does the hub know the model.
The last is one quick request with a short timeout, so a typo is refused in seconds instead
of being queued to retry the hub for a minute when it runs.
"""

from __future__ import annotations

import enum
import json
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

_TRUE = {"1", "on", "yes", "true"}


class HubAnswer(enum.Enum):
    """What the hub said about a model."""

    EXISTS = "exists"
    MISSING = "missing"
    REVISION_MISSING = "revision-missing"
    UNREACHABLE = "unreachable"


@dataclass(frozen=True)
class HubLookup:
    """The hub's answer, and why it could not be asked (``reason``) when unreachable."""

    answer: HubAnswer
    reason: str = ""


class ModelHub(Protocol):
    """The model hub and the server's cache of it."""

    def offline_reason(self) -> str | None:
        """Why the server must not contact the hub (an offline setting), or None."""
        ...

    def cached_models(self) -> list[str]:
        """Every model id with a snapshot in the cache."""
        ...

    def cached_config(self, repo_id: str, revision: str | None) -> Mapping[str, Any] | None:
        """The model's cached ``config.json`` (of ``revision`` when cached), or None."""
        ...

    def lookup(self, repo_id: str, revision: str | None) -> HubLookup:
        """Ask the hub whether it has the model (and revision)."""
        ...


def hub_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where huggingface_hub keeps its cache, by the same variables it reads."""
    env = os.environ if environ is None else environ
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(key):
            return Path(env[key]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    cache = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return cache / "huggingface" / "hub"


class HuggingFaceHub:
    """`ModelHub` over the Hugging Face hub (``HF_ENDPOINT``, ``HF_TOKEN``) and its cache.

    Answers are remembered for ``answer_ttl_s`` (an unreachable hub for ``unreachable_ttl_s``
    only), so a burst of submits costs the hub one request per model.

    Args:
        timeout_s: Longest wait for the hub's answer.
        environ: The environment to read (default: the process's).
    """

    def __init__(
        self,
        timeout_s: float = 3.0,
        environ: Mapping[str, str] | None = None,
        *,
        answer_ttl_s: float = 300.0,
        unreachable_ttl_s: float = 30.0,
    ) -> None:
        self.timeout_s = timeout_s
        self._env = dict(os.environ if environ is None else environ)
        self.endpoint = self._env.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
        self.cache_dir = hub_cache_dir(self._env)
        self._answer_ttl_s = answer_ttl_s
        self._unreachable_ttl_s = unreachable_ttl_s
        self._lock = threading.Lock()
        self._answers: dict[tuple[str, str | None], tuple[float, HubLookup]] = {}

    def offline_reason(self) -> str | None:
        for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            if self._env.get(key, "").strip().lower() in _TRUE:
                return f"{key} is set on the server"
        return None

    def _repo_dir(self, repo_id: str) -> Path:
        return self.cache_dir / f"models--{repo_id.replace('/', '--')}"

    def _snapshot(self, repo_id: str, revision: str | None) -> Path | None:
        repo = self._repo_dir(repo_id)
        snapshots = repo / "snapshots"
        ref = repo / "refs" / (revision or "main")
        try:
            if ref.is_file():
                named = snapshots / ref.read_text(encoding="utf-8").strip()
                if named.is_dir():
                    return named
            if revision is not None and (snapshots / revision).is_dir():
                return snapshots / revision  # a commit hash given as the revision
            if revision is None and snapshots.is_dir():
                found = sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime)
                return found[-1] if found else None
        except OSError:
            return None
        return None

    def cached(self, repo_id: str) -> bool:
        snapshot = self._snapshot(repo_id, None)
        return snapshot is not None and (snapshot / "config.json").is_file()

    def cached_models(self) -> list[str]:
        try:
            entries = sorted(self.cache_dir.iterdir())
        except OSError:
            return []
        names = []
        for entry in entries:
            if entry.name.startswith("models--"):
                repo_id = entry.name.removeprefix("models--").replace("--", "/", 1)
                if self.cached(repo_id):
                    names.append(repo_id)
        return names

    def cached_config(self, repo_id: str, revision: str | None) -> Mapping[str, Any] | None:
        snapshot = self._snapshot(repo_id, revision)
        if snapshot is None:
            return None
        try:
            data = json.loads((snapshot / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def lookup(self, repo_id: str, revision: str | None) -> HubLookup:
        key = (repo_id, revision)
        now = time.monotonic()
        with self._lock:
            remembered = self._answers.get(key)
        if remembered is not None and remembered[0] > now:
            return remembered[1]
        found = self._ask(repo_id, revision)
        ttl = (
            self._unreachable_ttl_s if found.answer is HubAnswer.UNREACHABLE else self._answer_ttl_s
        )
        with self._lock:
            self._answers[key] = (now + ttl, found)
        return found

    def _ask(self, repo_id: str, revision: str | None) -> HubLookup:
        import httpx

        url = f"{self.endpoint}/api/models/{repo_id}"
        if revision is not None:
            url += f"/revision/{revision}"
        headers = {}
        token = self._env.get("HF_TOKEN") or self._env.get("HUGGING_FACE_HUB_TOKEN")
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            response = httpx.get(url, headers=headers, timeout=self.timeout_s)
        except httpx.HTTPError as exc:
            return HubLookup(HubAnswer.UNREACHABLE, f"{self.endpoint} did not answer ({exc})")
        # The hub answers 401 for a missing repo too (so as not to reveal private names); its
        # X-Error-Code header tells the cases apart, as huggingface_hub reads it.
        code = response.headers.get("X-Error-Code", "")
        if response.status_code == 200 or code == "GatedRepo":
            return HubLookup(HubAnswer.EXISTS)
        if code == "RevisionNotFound":
            return HubLookup(HubAnswer.REVISION_MISSING)
        if code == "RepoNotFound" or response.status_code == 404:
            return HubLookup(HubAnswer.MISSING)
        if response.status_code in (401, 403):
            return HubLookup(HubAnswer.EXISTS)  # private or gated: HF_TOKEN decides at load
        return HubLookup(HubAnswer.UNREACHABLE, f"{self.endpoint} answered {response.status_code}")
