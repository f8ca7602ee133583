"""Which container image this service runs in, for the result's environment snapshot.

The image is identified by what its build wrote into it (``/etc/llem/image.json``: name,
version, build id, source revision) and, when the deployment says so, the reference it was
started from (env ``LLEM_IMAGE``, e.g. ``registry/llem:0.1.0``; compose sets it). A running
container cannot learn its own registry digest without the Docker socket, which it must not
have, so the build id stands in for it: ``docker/Dockerfile`` makes one per build.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

IMAGE_INFO_PATH = Path("/etc/llem/image.json")
"""Written by ``docker/Dockerfile``; absent outside the image."""


def image_identity(
    environ: Mapping[str, str] | None = None, info_path: Path | None = None
) -> str | None:
    """``"<reference> (version <v>, build <id>, revision <sha>)"``, or None outside a container.

    Parts the build or deployment did not provide are left out. ``LLEM_IMAGE_INFO`` names
    another info file (tests use it).
    """
    environ = os.environ if environ is None else environ
    if info_path is None:
        info_path = Path(environ.get("LLEM_IMAGE_INFO") or IMAGE_INFO_PATH)
    info = _read_info(info_path)
    reference = environ.get("LLEM_IMAGE") or info.get("name")
    details = [
        f"{label} {info[key]}"
        for label, key in (("version", "version"), ("build", "build_id"), ("revision", "revision"))
        if info.get(key)
    ]
    if not reference and not details:
        return None
    reference = reference or "unnamed image"
    return f"{reference} ({', '.join(details)})" if details else reference


def _read_info(path: Path) -> dict[str, str]:
    """The info file's string fields; empty when it is missing or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): str(v) for k, v in data.items() if isinstance(v, (str, int)) and str(v)}
