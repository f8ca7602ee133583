"""One Slurm job's directory on the filesystem the service and the compute nodes share.

Results come back this way, not through a callback to the service: a cluster always has a
shared filesystem between its login and compute nodes (the batch script and its output need
one anyway), while compute nodes often cannot open connections to the login node, and a
callback would need a token on every node and a service that is up when the job ends. A file
waits: a service restarted hours later still finds the outcome of a job that ended meanwhile.

``<LLEM_SLURM_SHARED_DIR>/jobs/<job id>/`` (mode 0700: the run file holds pickled objects):

====================  =============  ================================================
file                  written by     what
====================  =============  ================================================
``run.pickle``        service        the experiment: config, backend, meter, baselines
``job.sh``            service        the batch script
``slurm-<id>.out``    Slurm          the job's stdout and stderr
``started.json``      node           host, GPUs, pid, Slurm job id, restart count
``progress.json``     node           the latest `JobProgress`
``<job id>.json``     node           the result (`ResultFiles`, atomic)
``<job id>.timeseries.parquet``      the power timeline (`ResultFiles`, atomic)
``outcome.json``      node           last: status and error; its presence means "ended"
====================  =============  ================================================

Every file is replaced atomically (temp file, fsync, rename, directory fsync for the durable
ones), so a reader on another host never sees half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llem_client import ExperimentConfig, ExperimentResult, JobProgress, JobStatus, ProblemDetail

from llem_service.backends.base import InferenceBackend
from llem_service.energy.base import Baseline, EnergyMeter
from llem_service.energy.timeseries import Columns
from llem_service.executors.base import RunOutcome
from llem_service.experiment.results import ResultFiles

#: How an outcome file says that Slurm stopped the job (SIGTERM) before the experiment ended:
#: why (time limit, preemption, scancel) is Slurm's to say.
TERMINATED = "terminated"


@dataclass(frozen=True)
class NodeRun:
    """What the node needs to run the experiment exactly as a local child would."""

    job_id: str
    config_json: str
    backend: InferenceBackend
    meter: EnergyMeter
    baselines: tuple[Baseline, ...]
    timeout_s: float | None
    cancel_grace_s: float

    @property
    def config(self) -> ExperimentConfig:
        return ExperimentConfig.model_validate_json(self.config_json)


@dataclass(frozen=True)
class Started:
    """The node's word that the experiment started: where, on what, when."""

    host: str
    gpus: tuple[str, ...]
    pid: int
    started_at: float
    slurm_job_id: str | None
    restarts: int


@dataclass(frozen=True)
class NodeOutcome:
    """How the node's run ended: a `RunOutcome`, or terminated by Slurm."""

    outcome: RunOutcome
    terminated: bool = False


class JobDir:
    """The directory of one job (see the module docstring)."""

    RUN = "run.pickle"
    SCRIPT = "job.sh"
    STARTED = "started.json"
    PROGRESS = "progress.json"
    OUTCOME = "outcome.json"

    def __init__(self, path: Path, job_id: str) -> None:
        self.path = path
        self.job_id = job_id

    @classmethod
    def under(cls, shared_dir: Path, job_id: str) -> JobDir:
        return cls(shared_dir / "jobs" / job_id, job_id)

    def output(self, slurm_job_id: str) -> Path:
        return self.path / f"slurm-{slurm_job_id}.out"

    # -- the service's side --------------------------------------------------------------------

    def create(self, run: NodeRun, script: str) -> None:
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._atomic(self.RUN, pickle.dumps(run), durable=True, mode=0o600)
        self._atomic(self.SCRIPT, script.encode(), durable=True, mode=0o700)

    def started(self) -> Started | None:
        data = self._json(self.STARTED)
        if data is None:
            return None
        return Started(
            host=str(data["host"]),
            gpus=tuple(data.get("gpus", ())),
            pid=int(data["pid"]),
            started_at=float(data["started_at"]),
            slurm_job_id=data.get("slurm_job_id"),
            restarts=int(data.get("restarts", 0)),
        )

    def progress(self) -> JobProgress | None:
        data = self._json(self.PROGRESS)
        return JobProgress.model_validate(data) if data is not None else None

    def outcome(self) -> NodeOutcome | None:
        """The node's outcome, or None while there is none (or the result it names is not
        readable yet: a shared filesystem may show the outcome first)."""
        data = self._json(self.OUTCOME)
        if data is None:
            return None
        status = str(data["status"])
        error = ProblemDetail.model_validate(data["error"]) if data.get("error") else None
        if status == TERMINATED:
            return NodeOutcome(RunOutcome(JobStatus.FAILED, error=error), terminated=True)
        if status != JobStatus.SUCCEEDED.value:
            return NodeOutcome(RunOutcome(JobStatus(status), error=error))
        try:
            result = ExperimentResult.model_validate_json(
                (self.path / f"{self.job_id}.json").read_bytes()
            )
        except FileNotFoundError:
            return None
        timeseries = None
        if data.get("timeseries"):
            timeseries = _read_columns(self.path / f"{self.job_id}.timeseries.parquet")
            if timeseries is None:
                return None
        return NodeOutcome(RunOutcome(JobStatus.SUCCEEDED, result=result, timeseries=timeseries))

    def output_tail(self, slurm_job_id: str | None, max_bytes: int = 2000) -> str | None:
        """The end of the job's output, for an error message."""
        if slurm_job_id is None:
            return None
        try:
            with open(self.output(slurm_job_id), "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - max_bytes))
                return f.read().decode(errors="replace").strip() or None
        except OSError:
            return None

    # -- the node's side -----------------------------------------------------------------------

    def read_run(self) -> NodeRun:
        with open(self.path / self.RUN, "rb") as f:
            run = pickle.load(f)  # written by the service, in a 0700 directory of its own
        if not isinstance(run, NodeRun):
            raise TypeError(f"{self.path / self.RUN} does not hold a NodeRun")
        return run

    def begin_attempt(self, started: Started) -> None:
        """A new attempt (the first, or after a requeue): forget the last one's files."""
        for name in (self.OUTCOME, self.PROGRESS):
            with contextlib.suppress(FileNotFoundError):
                (self.path / name).unlink()
        self._atomic(self.STARTED, json.dumps(started.__dict__).encode(), durable=True)

    def write_progress(self, progress: JobProgress) -> None:
        # Not durable: the next one replaces it within seconds, and a lost one costs nothing.
        self._atomic(self.PROGRESS, progress.model_dump_json().encode(), durable=False)

    def write_outcome(self, outcome: NodeOutcome) -> None:
        """The result and timeline first, the outcome last: once it is there, all is."""
        data: dict[str, Any] = {
            "status": TERMINATED if outcome.terminated else outcome.outcome.status.value,
            "error": outcome.outcome.error.model_dump(mode="json")
            if outcome.outcome.error
            else None,
            "timeseries": outcome.outcome.timeseries is not None,
        }
        if outcome.outcome.result is not None:
            files = ResultFiles(self.path)
            if outcome.outcome.timeseries is not None:
                files.write_timeseries(self.job_id, outcome.outcome.timeseries)
            files.write(outcome.outcome.result)
        self._atomic(self.OUTCOME, json.dumps(data).encode(), durable=True)

    # -- files --------------------------------------------------------------------------------

    def _json(self, name: str) -> dict[str, Any] | None:
        try:
            data = json.loads((self.path / name).read_bytes())
        except (FileNotFoundError, ValueError):
            return None  # not there yet (a rename is atomic: never half of one)
        return data if isinstance(data, dict) else None

    def _atomic(self, name: str, data: bytes, *, durable: bool, mode: int = 0o600) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=f".{name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                if durable:
                    f.flush()
                    os.fsync(f.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, self.path / name)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        if durable:
            dir_fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


def _read_columns(path: Path) -> Columns | None:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, ValueError):
        return None
    columns: Columns = {name: list(values) for name, values in table.to_pydict().items()}
    return columns
