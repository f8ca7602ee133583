"""The power sampler: a process of its own that reads every metered GPU at a fixed interval.

A process, not a thread: the experiment's decode loop is Python-heavy, and a sampling thread
beside it competes for the GIL, stealing time from the workload and getting its rounds late
(Zeus polls from separate processes for the same reason). The process is started by the
meter's session (inside the experiment's process) before the measured window and stopped
after it; ``benchmarks/sampler_cost.py`` measures what each way costs the workload.

Each round reads every GPU's power (`PowerReader`: repeats and readings <= 0 W flagged, a
failed read a gap), temperature, SM clock, memory, utilisation and clock-event reasons, and
appends one typed row per GPU to the column files (`samples.ColumnWriter`). About once a
second it also lists the GPUs' compute processes (`ProcessTracker`) and reads the host's
RAPL counters (for their wrap-arounds). Rounds run on absolute deadlines (start + k x
interval), so a slow round delays only itself.

The process talks to the session over two one-way pipes: the session sends ``flush`` (when it
wants the samples so far, e.g. for a baseline; numbered, and answered with its number, so a
late answer never stands for the next; unanswered within ``reply_timeout_s``, a `MeterError`)
and ``stop``; the sampler answers ``ready``, ``flushed``, ``error`` (a lost GPU, at once, so
``on_failure`` can stop a run stuck on the dead device) and, last, ``report`` (what it saw
besides the samples). It exits by itself if the experiment's process dies.

``mode="thread"`` runs the same loop in a thread of the experiment's process (kept to measure
what the process saves); ``mode="manual"`` takes rounds only when `PowerSampler.sample_once`
is called (tests on a manual clock).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
from array import array
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal

from llem_service.energy.base import MeterError
from llem_service.energy.field_readers import Clock
from llem_service.energy.nvml import GpuDevice, Nvml
from llem_service.energy.sampler_engine import (
    OPTIONAL_FIELDS,
    DeviceReadReport,
    SamplerEngine,
    SamplerReport,
    SamplerSpec,
    process_main,
    run_loop,
)
from llem_service.energy.samples import ROUND_COLUMNS, SAMPLE_COLUMNS, ColumnReader, Timeline

__all__ = [
    "DeviceReadReport",
    "PowerSampler",
    "SamplerEngine",
    "SamplerMode",
    "SamplerReport",
    "SamplerSpec",
    "make_directory",
    "run_loop",
]

SamplerMode = Literal["process", "thread", "manual"]

#: How long the session waits for the sampler's process to start, answer or stop.
START_TIMEOUT_S = 60.0
REPLY_TIMEOUT_S = 5.0


class PowerSampler:
    """The session's handle on the sampler: start, flush, stop, and what it recorded.

    Args:
        spec: What to sample (``spec.directory`` is made here when empty).
        mode: ``process`` (the default), ``thread``, or ``manual``.
        clock: The session's clock. The process samples on ``time.perf_counter``, so a
            session with a process sampler must use it too.
        wall: Wall-clock seconds (for ageing NVML's timestamps in manual mode).
        devices: The session's GPUs, for ``manual`` mode (other modes open their own).
        on_failure: Called from the sampler's listener thread as soon as sampling fails.
        reply_timeout_s: How long a flush waits for the sampler's answer.
    """

    def __init__(
        self,
        spec: SamplerSpec,
        *,
        mode: SamplerMode = "process",
        clock: Clock = time.perf_counter,
        wall: Clock = time.time,
        devices: Sequence[GpuDevice] = (),
        on_failure: Callable[[MeterError], None] | None = None,
        reply_timeout_s: float = REPLY_TIMEOUT_S,
    ) -> None:
        if mode == "process" and clock is not time.perf_counter:
            raise ValueError("a process sampler shares only time.perf_counter with its session")
        self.mode = mode
        self.spec = spec
        self.interval_s = spec.interval_s
        self.clock = clock
        self.on_failure = on_failure
        self.error: MeterError | None = None
        self.report: SamplerReport | None = None
        self.pid: int | None = None
        self._directory = Path(spec.directory)
        self._timeline = Timeline(spec.device_uuids)
        self._samples = ColumnReader(self._directory, SAMPLE_COLUMNS, prefix="sample_")
        self._rounds = ColumnReader(self._directory, ROUND_COLUMNS, prefix="round_")
        self._round_columns: dict[str, list[float]] = {name: [] for name, _ in ROUND_COLUMNS}
        self.reply_timeout_s = reply_timeout_s
        # Flushes are numbered: an answer names the flush it answers, so one that comes late
        # is never taken for the answer to the next.
        self._answers = threading.Condition()
        self._flushes_sent = 0
        self._flushes_answered = 0
        self._finished = False  # the report came, or the process ended: no more answers
        self._reading = threading.RLock()
        self._reported = threading.Event()
        self._ready = threading.Event()
        self._engine: SamplerEngine | None = None
        self._worker: Any = None
        self._control: Connection | None = None
        self._listener: threading.Thread | None = None
        self._stopped = False
        if mode == "manual":
            self._engine = SamplerEngine(devices, spec, clock, wall)

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self.mode == "manual":
            return
        control_read, control_write = multiprocessing.Pipe(duplex=False)
        events_read, events_write = multiprocessing.Pipe(duplex=False)
        if self.mode == "process":
            context = multiprocessing.get_context("spawn")
            self._worker = context.Process(
                target=process_main,
                args=(self.spec, control_read, events_write, os.getpid()),
                name="llem-power-sampler",
                daemon=False,
            )
            self._worker.start()
            control_read.close()
            events_write.close()
        else:
            nvml = Nvml(self.spec.library()).open()
            devices = [nvml.device(uuid) for uuid in self.spec.device_uuids]
            engine = SamplerEngine(devices, self.spec, self.clock, time.time)

            def loop() -> None:
                events_write.send(("ready", os.getpid()))
                try:
                    run_loop(engine, control_read, events_write)
                finally:
                    nvml.close()

            self._worker = threading.Thread(target=loop, name="llem-power-sampler", daemon=True)
            self._worker.start()
        self._control = control_write
        self._listener = threading.Thread(
            target=self._listen, args=(events_read,), name="llem-sampler-listener", daemon=True
        )
        self._listener.start()
        if not self._ready.wait(START_TIMEOUT_S) and self.error is None:
            self._fail(MeterError(f"the power sampler did not start within {START_TIMEOUT_S} s"))
        # A sampler that failed (a GPU lost as it started) is reported like one that fails
        # later: through on_failure now, and by the session's next mark.

    def _listen(self, events: Connection) -> None:
        """Blocks on the sampler's messages (releasing the GIL while it waits)."""
        while True:
            try:
                message = events.recv()
            except (EOFError, OSError):
                if not self._reported.is_set() and not self._stopped:
                    self._fail(MeterError("the power sampler's process ended unexpectedly"))
                self._reported.set()
                self._answered(finished=True)
                self._ready.set()
                return
            kind = message[0]
            if kind == "ready":
                self.pid = message[1]
                self._ready.set()
            elif kind == "flushed":
                self._answered(flush=message[1])
            elif kind == "error":
                self._fail(MeterError(f"power sampling failed: {message[1]}"))
                self._ready.set()
            elif kind == "report":
                self.report = message[1]
                self._reported.set()
                self._answered(finished=True)

    def _answered(self, *, flush: int = 0, finished: bool = False) -> None:
        with self._answers:
            self._flushes_answered = max(self._flushes_answered, flush)
            self._finished = self._finished or finished
            self._answers.notify_all()

    def _fail(self, error: MeterError) -> None:
        if self.error is None:
            self.error = error
            if self.on_failure is not None:
                self.on_failure(error)

    def sample_once(self) -> None:
        """One round now (``manual`` mode)."""
        if self._engine is None:
            raise RuntimeError("sample_once is for a manual sampler")
        self._engine.sample_once()
        self._engine.poll_slow()

    def _flush(self) -> None:
        """Make every row sampled so far readable from the files."""
        if self._engine is not None:
            self._engine.flush()
            return
        if self._control is None or self._reported.is_set():
            return
        with self._answers:
            self._flushes_sent += 1
            number = self._flushes_sent
        try:
            self._control.send(("flush", number))
        except (BrokenPipeError, OSError):
            return
        with self._answers:
            answered = self._answers.wait_for(
                lambda: self._flushes_answered >= number or self._finished, self.reply_timeout_s
            )
        if not answered:
            # Reading on would hand out a record missing what was sampled lately, as if
            # nothing had been: an error the caller sees instead.
            raise MeterError(
                f"the power sampler did not answer within {self.reply_timeout_s:g} s (stuck "
                "inside NVML?): the samples so far cannot be read"
            )

    def stop(self, timeout_s: float = REPLY_TIMEOUT_S) -> bool:
        """Stop sampling and collect the report. A process stuck inside NVML is killed after
        ``timeout_s``; a stuck thread is left behind (returns False then)."""
        if self._stopped:
            return True
        self._stopped = True
        if self._engine is not None:
            self._engine.flush()
            self.report = self._engine.report()
            return True
        if self._control is not None:
            with self._reading, contextlib.suppress(BrokenPipeError, OSError):
                self._control.send("stop")  # not while a monitoring thread sends a flush
        self._reported.wait(timeout_s)
        worker = self._worker
        if isinstance(worker, threading.Thread):
            worker.join(timeout_s)
            return not worker.is_alive()
        if worker is not None:
            worker.join(timeout_s)
            if worker.is_alive():
                worker.kill()
                worker.join()
        return True

    def close(self) -> None:
        """Remove the column files (after `result`)."""
        shutil.rmtree(self._directory, ignore_errors=True)

    # -- what it recorded ---------------------------------------------------------------------

    def _read_new(self) -> None:
        # Callers hold self._reading: the session's thread and a monitoring thread may both
        # ask for what has been sampled.
        raw = self._samples.read_new()
        if raw["t_s"]:
            self._timeline.extend_raw(raw)
        rounds = self._rounds.read_new()
        for name, column in rounds.items():
            self._round_columns[name].extend(column)

    def snapshot(self) -> Timeline:
        """The samples so far (flushed on request; the session's own copy grows)."""
        with self._reading:
            self._flush()
            self._read_new()
            return self._timeline

    def rounds(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Start time and wall cost of every round so far."""
        with self._reading:
            self._flush()
            self._read_new()
            return tuple(self._round_columns["t_s"]), tuple(self._round_columns["cost_s"])

    def latest(self) -> list[tuple[str, float, dict[str, float | int | None]]]:
        """Each GPU's newest row as (uuid, time, columns), for live monitoring; empty before
        the first round. ``power_w`` is the newest kept reading (a repeat of NVML's previous
        reading is not a new one). Each call asks the sampler's process to flush (a pipe round
        trip): fine at a monitoring pace, about once a second."""
        timeline = self.snapshot()
        with self._reading:
            wanted = set(self.spec.device_uuids)
            rows: dict[str, int] = {}
            power: dict[str, float | None] = {}
            i = len(timeline)
            while i > 0 and (len(rows) < len(wanted) or len(power) < len(wanted)):
                i -= 1
                uuid = timeline.device_uuid[i]
                rows.setdefault(uuid, i)
                if uuid not in power and timeline.power_w[i] is not None:
                    power[uuid] = timeline.power_w[i]
                if len(timeline) - i > 1000 * len(wanted):
                    break  # no kept reading for a long while: report none
            names = [column for column in OPTIONAL_FIELDS]
            return [
                (
                    uuid,
                    timeline.t_s[row],
                    {
                        "power_w": power.get(uuid),
                        **{name: getattr(timeline, name)[row] for name in names},
                    },
                )
                for uuid in self.spec.device_uuids
                if (row := rows.get(uuid)) is not None
            ]

    def round_cpu_s(self) -> list[float]:
        return list(self._round_columns["cpu_s"])

    @property
    def samples_bytes(self) -> int:
        """Bytes of samples read from the sampler's files so far."""
        row = sum(array(code).itemsize for _, code in SAMPLE_COLUMNS)
        return self._samples.rows_read * row


def make_directory(parent: str | None = None) -> str:
    """A fresh directory for one session's column files."""
    return tempfile.mkdtemp(prefix="llem-samples-", dir=parent)
