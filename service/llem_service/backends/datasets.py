"""Prompts from a Hugging Face dataset (``prompts.source: hf``), through the ``datasets``
library (the ``hf`` extra).

A hub id is loaded with ``load_dataset``; a local path (or a bare name that is a directory
under a root) must lie inside ``LLEM_MODEL_ROOTS``, as models do, and is loaded with
``load_from_disk``. From there the same code picks the text: the ``field`` column, a string,
or, for chat datasets, the first user turn of a list of turns (``{"role": "user", "content":
...}`` as in OpenAI-style sets, ``{"from": "human", "value": ...}`` as in ShareGPT).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llem_client import HfPrompts

from llem_service.backends.base import BackendError
from llem_service.backends.sources import resolve_local

_USER_ROLES = frozenset({"user", "human"})


def read_hf_prompts(source: HfPrompts, roots: Sequence[Path], n: int) -> list[str]:
    """The first ``n`` prompts of the dataset's split (fewer when it has fewer rows)."""
    try:
        import datasets
    except ImportError as exc:
        raise BackendError(
            "prompts.source 'hf' needs the datasets package on the server: install llem[hf]"
        ) from exc
    local = _local_path(source.dataset, roots)
    try:
        if local is not None:
            loaded: Any = datasets.load_from_disk(str(local))
            if isinstance(loaded, datasets.DatasetDict):
                if source.split not in loaded:
                    splits = ", ".join(sorted(loaded))
                    raise BackendError(
                        f"dataset {source.dataset!r} has no split {source.split!r} ({splits})"
                    )
                loaded = loaded[source.split]
        else:
            loaded = datasets.load_dataset(
                source.dataset, source.subset, split=source.split, revision=source.revision
            )
    except (OSError, ValueError, FileNotFoundError) as exc:
        raise BackendError(f"could not load dataset {source.dataset!r}: {exc}") from exc
    if source.field not in loaded.column_names:
        columns = ", ".join(loaded.column_names)
        raise BackendError(
            f"dataset {source.dataset!r} has no column {source.field!r} (it has {columns})"
        )
    rows = loaded.select(range(min(n, len(loaded))))[source.field]
    prompts = [_text(value, number) for number, value in enumerate(rows)]
    if not prompts:
        raise BackendError(f"dataset {source.dataset!r} split {source.split!r} has no rows")
    return prompts


def _local_path(dataset: str, roots: Sequence[Path]) -> Path | None:
    """The dataset's directory when it is a local one, checked against the roots."""
    if dataset.startswith(("/", "./", "../", "~")):
        return resolve_local(dataset, roots, "dataset")
    if ".." in Path(dataset).parts:
        raise BackendError(f"dataset {dataset!r}: '..' is not allowed in a dataset name")
    for root in roots:
        if (Path(root) / dataset).is_dir():
            return resolve_local(str(Path(root) / dataset), roots, "dataset")
    return None


def _text(value: Any, row: int) -> str:
    """A row's prompt: the string itself, or a chat's first user turn."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, Sequence) and not isinstance(value, str):
        for turn in value:
            if not isinstance(turn, Mapping):
                break
            role = turn.get("role", turn.get("from"))
            text = turn.get("content", turn.get("value"))
            if role in _USER_ROLES and isinstance(text, str) and text:
                return text
        raise BackendError(f"dataset row {row}: no user turn with text in its chat")
    raise BackendError(f"dataset row {row}: the prompt is not a non-empty string or a chat")
