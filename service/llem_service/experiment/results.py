"""Result files: per experiment a JSON result and, when power was sampled, a Parquet timeline
(served as Parquet, or as CSV converted on the way out).

Every file is written atomically (temp file, fsync, rename, fsync of the directory): a reader
never sees a half-written file, and a crash while writing leaves no file rather than a
truncated one.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from llem_client import ExperimentResult

from llem_service.energy.base import TIMELINE_COLUMNS
from llem_service.energy.timeseries import Columns

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
        """Write the result atomically; return the final path."""
        path = self.directory / f"{result.experiment_id}.json"
        data = result.model_dump_json(indent=2).encode()
        self._atomic(path, lambda tmp: tmp.write_bytes(data))
        return path

    def timeseries_path(self, experiment_id: str) -> Path:
        return self.directory / f"{experiment_id}.timeseries.parquet"

    def write_timeseries(self, experiment_id: str, columns: Columns) -> Path:
        """Write the power timeline as Parquet, atomically; return the final path."""
        path = self.timeseries_path(experiment_id)
        self._atomic(path, lambda tmp: write_parquet(columns, tmp))
        return path

    def _atomic(self, path: Path, write: Callable[[Path], object]) -> None:
        fd, name = tempfile.mkstemp(dir=self.directory, prefix=_TMP_PREFIX, suffix=path.suffix)
        os.close(fd)
        tmp = Path(name)
        try:
            write(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a power cut
        finally:
            os.close(dir_fd)

    @staticmethod
    def read_bytes(path: str | Path) -> bytes:
        return Path(path).read_bytes()

    def delete(self, experiment_id: str, result_path: str | None) -> None:
        """Remove an experiment's files (the result at ``result_path`` and its timeline);
        files already gone are no error."""
        if result_path is not None:
            Path(result_path).unlink(missing_ok=True)
        (self.directory / f"{experiment_id}.json").unlink(missing_ok=True)
        self.timeseries_path(experiment_id).unlink(missing_ok=True)

    @staticmethod
    def as_csv(parquet: bytes) -> bytes:
        """A stored timeline (Parquet bytes) as CSV."""
        return parquet_to_csv(parquet)


_SCHEMA_TYPES = {
    "t_s": "float64",
    "device_uuid": "string",
    "power_t_s": "float64",
    "power_w": "float64",
    "temperature_c": "int32",
    "sm_clock_mhz": "int32",
    "memory_used_bytes": "int64",
    "utilization_pct": "int32",
    "clock_event_reasons": "uint64",
    "phase": "string",
}


def write_parquet(columns: Columns, path: Path) -> None:
    """Write the table to ``path`` (the caller makes it atomic)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = [*TIMELINE_COLUMNS, "phase"]
    schema = pa.schema([(name, getattr(pa, _SCHEMA_TYPES[name])()) for name in names])
    table = pa.table({name: columns[name] for name in names}, schema=schema)
    pq.write_table(table, path, compression="zstd")


def parquet_to_csv(data: bytes) -> bytes:
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    out = io.BytesIO()
    pcsv.write_csv(table, out)
    return out.getvalue()
