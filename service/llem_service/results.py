"""Result files: one JSON file per experiment, written atomically (temp file, fsync, rename).

A reader never sees a half-written result, and a crash while writing leaves the previous
state (no file) rather than a truncated one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from llem_client import ExperimentResult

_TMP_PREFIX = ".tmp-"


class ResultFiles:
    """Stores results under one directory, named by experiment id."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        # A server killed mid-write leaves its temp file; no job points at it.
        for stale in directory.glob(f"{_TMP_PREFIX}*"):
            stale.unlink(missing_ok=True)

    def write(self, result: ExperimentResult) -> Path:
        """Write atomically; return the final path."""
        path = self.directory / f"{result.experiment_id}.json"
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=_TMP_PREFIX, suffix=".json")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(result.model_dump_json(indent=2).encode())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a power cut
        finally:
            os.close(dir_fd)
        return path

    @staticmethod
    def read_bytes(path: str | Path) -> bytes:
        return Path(path).read_bytes()
