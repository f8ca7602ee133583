"""Power samples as typed columns: in memory (`Timeline`), and on disk between the sampler's
process and the session (`ColumnWriter` / `ColumnReader`).

The sampler runs in a process of its own. Each round it appends one row per GPU to typed
arrays (``array.array``: 67 bytes a row, 66 in the session's `Timeline`), and writes them to one
file per column once ``flush_rows`` rows have gathered, or when the session asks for what it has
(a baseline, the end of the run). The sampler's memory stays bounded however long the run: an
hour at 10 ms on 8 GPUs is 2.9 million rows, about 190 MB on disk, and never more than
``flush_rows`` rows in its memory. The session reads each column file straight into an array;
only the power columns get a pass per row (`Timeline.extend_raw` keeps the fresh readings).

A missing value (a field the GPU does not support, a failed read) is NaN in a float column and
a sentinel in an integer column; the `Timeline`'s columns give it back as ``None``.
"""

from __future__ import annotations

import math
import os
from array import array
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar, overload

#: What became of a power reading (the ``power_flag`` column).
FRESH = 0  # a new reading: kept
REPEAT = 1  # the same reading as the one before (same sensor timestamp, or same value within
# the field's refresh period): dropped before integrating, as Zeus does
NONPOSITIVE = 2  # 0 W or less: not a real reading, dropped
FAILED = 3  # the read failed (a gap in the curve, never a 0)
NO_FIELD = 4  # no power field left on this GPU

MISSING_INT = -(2**63)

T = TypeVar("T", int, float)


class _Column(Sequence[T | None], Generic[T]):
    """A typed array seen as a sequence in which missing values are ``None``."""

    __slots__ = ("_a",)
    typecode = "d"

    def __init__(self, values: Iterable[T | None] = ()) -> None:
        self._a: array[Any] = array(self.typecode)
        self.extend(values)

    @classmethod
    def wrap(cls, raw: array[Any]) -> _Column[T]:
        """A column over ``raw`` (not copied)."""
        column = cls()
        column._a = raw
        return column

    def _is_missing(self, value: T) -> bool:
        raise NotImplementedError

    def _missing(self) -> T:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self._a)

    @overload
    def __getitem__(self, index: int) -> T | None: ...
    @overload
    def __getitem__(self, index: slice) -> list[T | None]: ...
    def __getitem__(self, index: int | slice) -> T | list[T | None] | None:
        if isinstance(index, slice):
            return [None if self._is_missing(v) else v for v in self._a[index]]
        value: T = self._a[index]
        return None if self._is_missing(value) else value

    def __iter__(self) -> Iterator[T | None]:
        missing = self._is_missing
        return (None if missing(v) else v for v in self._a)

    def append(self, value: T | None) -> None:
        self._a.append(self._missing() if value is None else value)

    def extend(self, values: Iterable[T | None]) -> None:
        missing = self._missing()
        self._a.extend(missing if v is None else v for v in values)

    def take(self, rows: Sequence[int]) -> _Column[T]:
        raw = self._a
        return type(self).wrap(array(self.typecode, [raw[i] for i in rows]))

    @property
    def raw(self) -> array[Any]:
        return self._a

    @property
    def nbytes(self) -> int:
        return len(self._a) * self._a.itemsize


class FloatColumn(_Column[float]):
    """float64; NaN stands for a missing value."""

    __slots__ = ()
    typecode = "d"

    def _is_missing(self, value: float) -> bool:
        return math.isnan(value)

    def _missing(self) -> float:
        return math.nan


class IntColumn(_Column[int]):
    """int64; `MISSING_INT` stands for a missing value."""

    __slots__ = ()
    typecode = "q"

    def _is_missing(self, value: int) -> bool:
        return value == MISSING_INT

    def _missing(self) -> int:
        return MISSING_INT


class Times(Sequence[float]):
    """float64 values that are never missing (when each row was sampled)."""

    __slots__ = ("_a",)

    def __init__(self, values: Iterable[float] = ()) -> None:
        self._a: array[float] = array("d", values)

    def __len__(self) -> int:
        return len(self._a)

    @overload
    def __getitem__(self, index: int) -> float: ...
    @overload
    def __getitem__(self, index: slice) -> list[float]: ...
    def __getitem__(self, index: int | slice) -> float | list[float]:
        if isinstance(index, slice):
            return list(self._a[index])
        return self._a[index]

    def __iter__(self) -> Iterator[float]:
        return iter(self._a)

    def append(self, value: float) -> None:
        self._a.append(value)

    def take(self, rows: Sequence[int]) -> Times:
        raw = self._a
        return Times([raw[i] for i in rows])

    @property
    def raw(self) -> array[float]:
        return self._a

    @property
    def nbytes(self) -> int:
        return len(self._a) * self._a.itemsize


class LabelColumn(Sequence[str]):
    """Strings from a small set (GPU UUIDs), stored as 2-byte indices into ``labels``."""

    __slots__ = ("_a", "labels")

    def __init__(self, labels: Sequence[str] = ()) -> None:
        self.labels = list(labels)
        self._a: array[int] = array("H")

    def __len__(self) -> int:
        return len(self._a)

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...
    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self.labels[i] for i in self._a[index]]
        return self.labels[self._a[index]]

    def __iter__(self) -> Iterator[str]:
        labels = self.labels
        return (labels[i] for i in self._a)

    def code(self, label: str) -> int:
        if label not in self.labels:
            self.labels.append(label)
        return self.labels.index(label)

    def append(self, label: str) -> None:
        self._a.append(self.code(label))

    def extend_codes(self, codes: Iterable[int]) -> None:
        self._a.extend(codes)

    def rows_of(self, label: str) -> list[int]:
        if label not in self.labels:
            return []
        code = self.labels.index(label)
        return [i for i, c in enumerate(self._a) if c == code]

    @property
    def nbytes(self) -> int:
        return len(self._a) * self._a.itemsize


#: Timeline columns, in file order. ``t_s`` is the session clock (the round's start); the rest
#: are per GPU. ``power_t_s`` is when the power reading was taken: NVML's own timestamp mapped
#: onto the session clock where the field carries one, else the read time.
TIMELINE_COLUMNS = (
    "t_s",
    "device_uuid",
    "power_t_s",
    "power_w",
    "temperature_c",
    "sm_clock_mhz",
    "memory_used_bytes",
    "utilization_pct",
    "clock_event_reasons",
)
_FLOATS = ("power_t_s", "power_w")
_INTS = (
    "temperature_c",
    "sm_clock_mhz",
    "memory_used_bytes",
    "utilization_pct",
    "clock_event_reasons",
)


class Timeline:
    """Power samples as typed columns (one row per GPU per sampling round).

    ``power_w`` holds only the readings kept for integration (fresh and above 0 W); a repeated,
    non-positive or failed reading is ``None`` there. Other fields are ``None`` where a GPU
    does not support them or the read failed.
    """

    def __init__(self, devices: Sequence[str] = ()) -> None:
        self.t_s = Times()
        self.device_uuid = LabelColumn(devices)
        self.power_t_s = FloatColumn()
        self.power_w = FloatColumn()
        self.temperature_c = IntColumn()
        self.sm_clock_mhz = IntColumn()
        self.memory_used_bytes = IntColumn()
        self.utilization_pct = IntColumn()
        self.clock_event_reasons = IntColumn()

    def __len__(self) -> int:
        return len(self.t_s)

    def append(
        self,
        t_s: float,
        device_uuid: str,
        power_w: float | None,
        *,
        power_t_s: float | None = None,
        temperature_c: int | None = None,
        sm_clock_mhz: int | None = None,
        memory_used_bytes: int | None = None,
        utilization_pct: int | None = None,
        clock_event_reasons: int | None = None,
    ) -> None:
        """Add one row (for code that builds a timeline by hand)."""
        self.t_s.append(t_s)
        self.device_uuid.append(device_uuid)
        self.power_w.append(power_w)
        self.power_t_s.append(power_t_s if power_t_s is not None or power_w is None else t_s)
        self.temperature_c.append(temperature_c)
        self.sm_clock_mhz.append(sm_clock_mhz)
        self.memory_used_bytes.append(memory_used_bytes)
        self.utilization_pct.append(utilization_pct)
        self.clock_event_reasons.append(clock_event_reasons)

    def extend_raw(self, raw: dict[str, array[Any]]) -> None:
        """Append rows read from the sampler's column files (`SAMPLE_COLUMNS`)."""
        flags = raw["power_flag"]
        self.t_s.raw.extend(raw["t_s"])
        self.device_uuid.extend_codes(raw["device"])
        keep = [p if f == FRESH else math.nan for p, f in zip(raw["power_w"], flags, strict=True)]
        self.power_w.raw.extend(keep)
        self.power_t_s.raw.extend(
            t if f == FRESH else math.nan for t, f in zip(raw["power_t_s"], flags, strict=True)
        )
        for name in _INTS:
            getattr(self, name).raw.extend(raw[name])

    def power_points(self) -> tuple[list[float], list[float]]:
        """The kept power readings as (when taken, watts): what is integrated."""
        times: list[float] = []
        watts: list[float] = []
        for t, p in zip(self.power_t_s.raw, self.power_w.raw, strict=True):
            if not math.isnan(p):
                times.append(t)
                watts.append(p)
        return times, watts

    def device(self, uuid: str) -> Timeline:
        """The rows of one GPU, in time order."""
        rows = self.device_uuid.rows_of(uuid)
        out = Timeline([uuid])
        out.t_s = self.t_s.take(rows)
        for name in (*_FLOATS, *_INTS):
            setattr(out, name, getattr(self, name).take(rows))
        out.device_uuid.extend_codes(array("H", bytes(2 * len(rows))))
        return out

    def columns(self) -> dict[str, list[object]]:
        """Every column as a list (``None`` where missing)."""
        return {name: list(getattr(self, name)) for name in TIMELINE_COLUMNS}

    @property
    def nbytes(self) -> int:
        """Memory the columns hold, bytes."""
        return sum(getattr(self, name).nbytes for name in TIMELINE_COLUMNS)


#: What the sampler writes per GPU per round: (column, array typecode).
SAMPLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("t_s", "d"),
    ("device", "H"),
    ("power_t_s", "d"),
    ("power_w", "d"),
    ("power_flag", "B"),
    ("temperature_c", "q"),
    ("sm_clock_mhz", "q"),
    ("memory_used_bytes", "q"),
    ("utilization_pct", "q"),
    ("clock_event_reasons", "q"),
)
#: What the sampler writes per round: when it began, its wall time and the CPU it took.
ROUND_COLUMNS: tuple[tuple[str, str], ...] = (("t_s", "d"), ("cost_s", "d"), ("cpu_s", "d"))


class ColumnWriter:
    """Typed columns gathered in memory and appended to one file per column.

    Args:
        directory: Where the column files go (``{prefix}{name}.bin``).
        columns: (name, typecode) pairs.
        flush_rows: Write to disk once this many rows have gathered.
    """

    def __init__(
        self,
        directory: Path,
        columns: Sequence[tuple[str, str]],
        *,
        prefix: str,
        flush_rows: int = 4096,
    ) -> None:
        self.names = [name for name, _ in columns]
        self._buffers: list[array[Any]] = [array(code) for _, code in columns]
        self._paths = [directory / f"{prefix}{name}.bin" for name in self.names]
        self.flush_rows = flush_rows
        self.rows_written = 0
        self.bytes_written = 0
        for path in self._paths:
            path.touch()

    def append(self, row: Sequence[float | int]) -> None:
        for buffer, value in zip(self._buffers, row, strict=True):
            buffer.append(value)
        if len(self._buffers[0]) >= self.flush_rows:
            self.flush()

    @property
    def buffered_rows(self) -> int:
        return len(self._buffers[0])

    def flush(self) -> None:
        """Append what has gathered to the files (each column's file in turn)."""
        rows = len(self._buffers[0])
        if not rows:
            return
        for buffer, path in zip(self._buffers, self._paths, strict=True):
            with open(path, "ab") as f:
                buffer.tofile(f)
            self.bytes_written += len(buffer) * buffer.itemsize
            del buffer[:]
        self.rows_written += rows


class ColumnReader:
    """Reads the rows a `ColumnWriter` has flushed since the last read.

    Columns are written one file after another, so a read during a flush can see more rows
    in one file than another: only the rows every file has are taken.
    """

    def __init__(self, directory: Path, columns: Sequence[tuple[str, str]], *, prefix: str):
        self._columns = [(name, code, directory / f"{prefix}{name}.bin") for name, code in columns]
        self.rows_read = 0

    def read_new(self) -> dict[str, array[Any]]:
        sizes = []
        for _, code, path in self._columns:
            try:
                sizes.append(os.path.getsize(path) // array(code).itemsize)
            except FileNotFoundError:
                sizes.append(0)
        rows = min(sizes) - self.rows_read
        out: dict[str, array[Any]] = {}
        for name, code, path in self._columns:
            column: array[Any] = array(code)
            if rows > 0:
                with open(path, "rb") as f:
                    f.seek(self.rows_read * column.itemsize)
                    column.fromfile(f, rows)
            out[name] = column
        self.rows_read += max(rows, 0)
        return out
