"""Where a model and a prompt file may come from: hub ids, or paths inside configured roots.

A local path is resolved (symlinks followed) before the check, so neither ``..`` nor a link
can lead outside the roots.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from llem_service.backends.base import ConfigError

_LOCAL_PREFIXES = ("/", "./", "../", "~")


def _inside(path: Path, roots: Sequence[Path]) -> bool:
    real = os.path.realpath(path)
    for root in roots:
        real_root = os.path.realpath(root)
        if os.path.commonpath([real, real_root]) == real_root:
            return True
    return False


def resolve_local(path_text: str, roots: Sequence[Path], what: str) -> Path:
    """A local path that must lie inside ``roots``; `ConfigError` otherwise."""
    try:
        path = Path(path_text).expanduser()
    except RuntimeError:  # "~someone/..." for a user this server does not have
        raise ConfigError(f"{what} {path_text!r} names no home directory on the server") from None
    if not roots:
        raise ConfigError(
            f"{what} {path_text!r} is a local path, and this server allows none: set "
            "LLEM_MODEL_ROOTS to the directories it may read"
        )
    if not path.is_absolute():
        path = Path(roots[0]) / path
    if not _inside(path, roots):
        allowed = ", ".join(str(r) for r in roots)
        raise ConfigError(f"{what} {path_text!r} is outside the allowed roots ({allowed})")
    if not path.exists():
        raise ConfigError(f"{what} {path_text!r} does not exist on the server")
    return path


def resolve_model(model: str, roots: Sequence[Path]) -> str:
    """A hub id as is, or the path of a local model directory.

    Absolute and ``./``-style paths must be inside ``roots``; a bare name that names a
    directory under a root is that directory (``tiny-gpt2`` -> ``/models/tiny-gpt2``);
    anything else is a hub id.
    """
    if model.startswith(_LOCAL_PREFIXES):
        return str(resolve_local(model, roots, "model"))
    if ".." in Path(model).parts:
        raise ConfigError(f"model {model!r}: '..' is not allowed in a model name")
    for root in roots:
        candidate = Path(root) / model
        if candidate.is_dir() and _inside(candidate, roots):
            return str(candidate)
    if os.path.exists(model):
        # transformers would load a hub id that exists relative to the server's working
        # directory from there: a local path outside the roots under another name.
        raise ConfigError(
            f"model {model!r} is not under the allowed roots but names a path on the server; "
            "give a hub id, or a directory under LLEM_MODEL_ROOTS"
        )
    return model
