"""The models this server can run, and the check of a config's ``model`` at submit.

The rules are the runtime's (`llem_service.backends.sources.resolve_model`): a path-like name
must lie inside ``LLEM_MODEL_ROOTS``, a bare name that is a directory under a root is that
directory, anything else is a hub id. At submit the catalog also checks what the runtime would
only find out after the job waited its turn: that a local directory holds a model, that a hub
id is well formed, and that the hub has it (or, offline, that its cache does). A refusal says
what is there instead ("did you mean 'tiny-gpt2'?").
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from llem_service.backends.base import BackendError
from llem_service.backends.sources import resolve_model
from llem_service.models.hub import HubAnswer, ModelHub

#: A hub id as the hub accepts it: ``name`` or ``owner/name``, each part of letters, digits,
#: ``-``, ``_`` and ``.``, not starting or ending with ``-`` or ``.``; at most 96 characters
#: a part; neither ``--`` nor ``..`` anywhere (huggingface_hub's own rule).
_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
HUB_ID = re.compile(rf"^(?:{_PART}/)?{_PART}$")

#: Where a model in the catalog comes from.
ModelSource = Literal["local", "hub-cache"]


@dataclass(frozen=True)
class CatalogModel:
    """A model this server has: ``name`` is what a config's ``model`` says to run it."""

    name: str
    source: ModelSource
    context_tokens: int | None


@dataclass(frozen=True)
class ModelCheck:
    """A model accepted at submit, and its config when the server has it (for its context)."""

    config: Mapping[str, Any] | None


class ModelRefused(Exception):
    """The model cannot run here; the message says why and what is there instead."""


def hub_id_problem(repo_id: str) -> str | None:
    """Why ``repo_id`` is not a well-formed hub id, or None when it is."""
    if "--" in repo_id or ".." in repo_id:
        return "'--' and '..' are not allowed in a hub id"
    if repo_id.endswith(".git"):
        return "a hub id does not end in '.git'"
    if not HUB_ID.match(repo_id):
        return (
            "a hub id is 'name' or 'owner/name', each of letters, digits, '-', '_' and '.', "
            "not starting or ending with '-' or '.', at most 96 characters"
        )
    return None


def _read_config(directory: Path) -> Mapping[str, Any] | None:
    try:
        data = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class ModelCatalog:
    """Local models under ``roots`` and the hub (with its cache) behind ``hub``."""

    def __init__(self, roots: Sequence[Path], hub: ModelHub) -> None:
        self.roots = tuple(roots)
        self.hub = hub

    def local_models(self) -> dict[str, Path]:
        """Model directories (holding a ``config.json``) one or two levels under the roots,
        by the name a config gives them (``tiny-gpt2``, ``org/model``); the first root wins."""
        found: dict[str, Path] = {}
        for root in self.roots:
            for pattern in ("*/config.json", "*/*/config.json"):
                try:
                    for config in sorted(root.glob(pattern)):
                        name = config.parent.relative_to(root).as_posix()
                        found.setdefault(name, config.parent)
                except OSError:
                    continue
        return found

    def models(self) -> list[CatalogModel]:
        """Every model this server can run without the network: local ones, then cached."""
        from llem_service.models.context import context_limit

        listed = []
        for name, directory in sorted(self.local_models().items()):
            config = _read_config(directory)
            limit = context_limit(config) if config else None
            listed.append(CatalogModel(name, "local", limit[0] if limit else None))
        for repo_id in self.hub.cached_models():
            config = self.hub.cached_config(repo_id, None)
            limit = context_limit(config) if config else None
            listed.append(CatalogModel(repo_id, "hub-cache", limit[0] if limit else None))
        return listed

    def suggestion(self, model: str) -> str:
        """`` (did you mean 'x'?)`` for the known model names closest to ``model``, or ''."""
        known = list(self.local_models()) + self.hub.cached_models()
        close = difflib.get_close_matches(model, known, n=3, cutoff=0.6)
        if not close:
            return ""
        return " (did you mean " + " or ".join(repr(name) for name in close) + "?)"

    def _where(self) -> str:
        if not self.roots:
            return "this server has no LLEM_MODEL_ROOTS"
        return "it is not a model directory under LLEM_MODEL_ROOTS"

    def check(self, model: str, revision: str | None) -> ModelCheck:
        """Accept ``model`` if it can run here.

        Raises:
            ModelRefused: It cannot; the message says why and suggests a close name.
        """
        try:
            resolved = resolve_model(model, self.roots)
        except BackendError as exc:
            # "model '/etc' is outside...": the field is named where the refusal is shown.
            said = str(exc).removeprefix("model ")
            raise ModelRefused(f"{said}{self.suggestion(model)}") from None
        if resolved != model or model.startswith(("/", "./", "~")):
            directory = Path(resolved)
            if not directory.is_dir():
                raise ModelRefused(f"{model!r} is not a directory on the server")
            config = _read_config(directory)
            if config is None:
                raise ModelRefused(
                    f"{model!r} is a directory under LLEM_MODEL_ROOTS but holds no "
                    f"readable config.json, so it is not a model{self.suggestion(model)}"
                )
            return ModelCheck(config)
        return self._check_hub(model, revision)

    def _check_hub(self, repo_id: str, revision: str | None) -> ModelCheck:
        problem = hub_id_problem(repo_id)
        if problem is not None:
            raise ModelRefused(
                f"{repo_id!r} is not under LLEM_MODEL_ROOTS and is not a hub id: "
                f"{problem}{self.suggestion(repo_id)}"
            )
        cached = self.hub.cached_config(repo_id, revision)
        if cached is not None:
            return ModelCheck(cached)
        offline = self.hub.offline_reason()
        where = self._where()
        if offline is not None:
            raise ModelRefused(
                f"{repo_id!r}: {where}{self.suggestion(repo_id)}, and this server may "
                f"not fetch it from the hub ({offline}) nor has it in its hub cache"
            )
        found = self.hub.lookup(repo_id, revision)
        if found.answer is HubAnswer.EXISTS:
            return ModelCheck(None)
        if found.answer is HubAnswer.REVISION_MISSING:
            raise ModelRefused(f"{repo_id!r} has no revision {revision!r} on the hub")
        if found.answer is HubAnswer.MISSING:
            raise ModelRefused(
                f"{repo_id!r}: {where}{self.suggestion(repo_id)}, and the hub has no "
                "model of that name"
            )
        raise ModelRefused(
            f"{repo_id!r}: {where}{self.suggestion(repo_id)}, and this server cannot "
            f"reach the hub to fetch it ({found.reason}) nor has it in its hub cache"
        )
