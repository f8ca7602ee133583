"""Slurm as llem talks to it: the `SlurmApi` seam and its implementation over Slurm's commands
(``sbatch``, ``squeue``, ``sacct``, ``scontrol``, ``scancel``, ``sinfo``).

Every call has a timeout, and a Slurm that cannot be reached raises `SlurmUnreachable`, never
an answer that looks like "no such job": a job is only ever taken for gone when Slurm itself
said it does not know it.

Status comes from ``squeue --states=all``, which lists pending, running and recently ended jobs
(for ``MinJobAge`` after they end, 300 s by default) with their state and reason. A job squeue no
longer lists is looked up with ``sacct`` when the cluster keeps accounting; where it does not,
the job's own outcome file on the shared filesystem is what tells how it ended.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, get_args

from pydantic import SecretStr

from llem_service.settings import Settings

#: States in which a job may still run (or run again, after a requeue).
ACTIVE_STATES = frozenset(
    {
        "PENDING",
        "CONFIGURING",
        "RUNNING",
        "COMPLETING",
        "SUSPENDED",
        "REQUEUED",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "RESIZING",
        "SIGNALING",
        "STAGE_OUT",
        "STOPPED",
        "RESV_DEL_HOLD",
        "SPECIAL_EXIT",
    }
)


def _secret_variables() -> frozenset[str]:
    """The variables of every secret setting (``SecretStr``: the API token, the slurmrestd
    token, any added later), upper-cased: settings are read from them in any case."""
    prefix = str(Settings.model_config.get("env_prefix") or "")
    return frozenset(
        f"{prefix}{name}".upper()
        for name, field in Settings.model_fields.items()
        if field.annotation is SecretStr or SecretStr in get_args(field.annotation)
    )


#: Environment variables never handed to Slurm's commands: ``sbatch`` exports the environment
#: it runs with into the job (slurmctld keeps it with the job; every process of the job, the
#: user's code included, sees it), and the experiment needs none of the service's secrets.
PRIVATE_ENV = _secret_variables()

_SQUEUE_FORMAT = "%i|%T|%r|%N|%l|%M"


class SlurmError(Exception):
    """Slurm answered, and refused (an sbatch option it rejects, say); the message is Slurm's."""


class SlurmUnreachable(SlurmError):
    """Slurm's commands are missing, or slurmctld does not answer."""


@dataclass(frozen=True)
class SlurmJobState:
    """One job as Slurm reports it.

    Attributes:
        job_id: Slurm's id.
        state: ``PENDING``, ``RUNNING``, ``COMPLETED``, ``TIMEOUT``, ``NODE_FAIL``, ...
        reason: Slurm's reason for the state (``Resources``, ``TimeLimit``, ``None``, ...).
        node: The node list, once it has one.
        time_limit: As Slurm prints it (``1:00``, ``UNLIMITED``).
        run_time: How long it has run, as Slurm prints it.
        exit_code: ``<code>:<signal>`` when known (scontrol, sacct).
        source: Which command said so.
    """

    job_id: str
    state: str
    reason: str = ""
    node: str = ""
    time_limit: str = ""
    run_time: str = ""
    exit_code: str = ""
    source: str = "squeue"

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    def describe(self) -> str:
        """Slurm's account of the job in one phrase, for error messages."""
        parts = [f"Slurm job {self.job_id} is {self.state}"]
        if self.reason and self.reason not in {"None", "(null)"}:
            parts.append(f"(reason: {self.reason})")
        if self.exit_code:
            parts.append(f"with exit code {self.exit_code}")
        if self.node:
            parts.append(f"on {self.node}")
        if self.run_time:
            parts.append(f"after {self.run_time}")
        if self.time_limit:
            parts.append(f"of its {self.time_limit} time limit")
        return " ".join(parts)


class SlurmApi(Protocol):
    """What llem asks of Slurm."""

    def ping(self) -> str | None:
        """None if slurmctld answers; otherwise why not, in words a user can act on."""
        ...

    def submit(self, script: Path, args: Sequence[str]) -> str:
        """``sbatch`` the script with ``args``; Slurm's job id."""
        ...

    def states(self, job_ids: Sequence[str]) -> dict[str, SlurmJobState]:
        """The jobs Slurm still knows among ``job_ids`` (others are missing from the answer)."""
        ...

    def details(self, job_id: str) -> SlurmJobState | None:
        """One job in full (exit code included), or None when Slurm no longer knows it."""
        ...

    def find(self, name: str) -> str | None:
        """The id of the newest job named ``name`` Slurm knows, if any."""
        ...

    def cancel(self, job_id: str) -> None: ...

    def max_gpus_per_node(self, partition: str | None, gres: str) -> int:
        """The most ``gres`` GPUs one node of ``partition`` (the default one: None) has."""
        ...


class SlurmCli:
    """`SlurmApi` over Slurm's commands.

    Args:
        bin_dir: Where the commands are; None: the ``PATH``.
        timeout_s: Longest wait for any one command.
        env: The commands' environment (``SLURM_CONF`` and the like); the service's own by
            default. `PRIVATE_ENV` is removed: ``sbatch`` would hand it to the job.
    """

    def __init__(
        self,
        bin_dir: Path | None = None,
        timeout_s: float = 30.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.bin_dir = bin_dir
        self.timeout_s = timeout_s
        base = dict(os.environ if env is None else env)
        self.env = {k: v for k, v in base.items() if k.upper() not in PRIVATE_ENV}

    def _command(self, name: str) -> str:
        if self.bin_dir is not None:
            path = self.bin_dir / name
            if not path.exists():
                raise SlurmUnreachable(f"{name} not found in {self.bin_dir} (LLEM_SLURM_BIN_DIR)")
            return str(path)
        found = shutil.which(name, path=self.env.get("PATH"))
        if found is None:
            raise SlurmUnreachable(
                f"{name} not found on the PATH: install Slurm's client commands on this host, "
                "or set LLEM_SLURM_BIN_DIR"
            )
        return found

    def _run(self, name: str, *args: str) -> subprocess.CompletedProcess[str]:
        command = [self._command(name), *args]
        try:
            return subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=self.timeout_s,
                env=self.env,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise SlurmUnreachable(f"{name} did not answer within {self.timeout_s:g} s") from exc
        except OSError as exc:
            raise SlurmUnreachable(f"{name} could not be run: {exc}") from exc

    def _checked(self, name: str, *args: str) -> str:
        done = self._run(name, *args)
        if done.returncode != 0:
            message = (done.stderr or done.stdout).strip() or f"exit status {done.returncode}"
            if _unreachable(message):
                raise SlurmUnreachable(f"{name}: {message}")
            raise SlurmError(f"{name}: {message}")
        return done.stdout

    def ping(self) -> str | None:
        try:
            done = self._run("scontrol", "ping")
        except SlurmUnreachable as exc:
            return str(exc)
        text = " ".join(done.stdout.split())
        if done.returncode == 0 and " is UP" in text:
            return None
        said = text.split("*")[0].strip() or done.stderr.strip() or f"exit {done.returncode}"
        return f"slurmctld does not answer (scontrol ping: {said})"

    def submit(self, script: Path, args: Sequence[str]) -> str:
        out = self._checked("sbatch", "--parsable", *args, str(script)).strip()
        job_id = out.split(";")[0].strip()  # "<id>" or "<id>;<cluster>"
        if not job_id.isdigit():
            raise SlurmError(f"sbatch answered {out!r}, not a job id")
        return job_id

    def states(self, job_ids: Sequence[str]) -> dict[str, SlurmJobState]:
        if not job_ids:
            return {}
        done = self._run(
            "squeue",
            "--noheader",
            "--states=all",
            f"--jobs={','.join(job_ids)}",
            f"--format={_SQUEUE_FORMAT}",
        )
        message = (done.stderr or "").strip()
        if done.returncode != 0:
            if "Invalid job id" in message:
                return {}  # squeue says so when none of the jobs is known
            if _unreachable(message) or not message:
                raise SlurmUnreachable(f"squeue: {message or f'exit {done.returncode}'}")
            raise SlurmError(f"squeue: {message}")
        found = {}
        for line in done.stdout.splitlines():
            fields = line.strip().split("|")
            if len(fields) != 6:
                continue
            job_id, state, reason, node, limit, run_time = (f.strip() for f in fields)
            # An array or het job prints "<id>_<n>"; llem submits neither.
            found[job_id] = SlurmJobState(
                job_id, state.split()[0], reason, node, limit, run_time, source="squeue"
            )
        return {job_id: found[job_id] for job_id in job_ids if job_id in found}

    def details(self, job_id: str) -> SlurmJobState | None:
        done = self._run("scontrol", "show", "job", "--oneliner", job_id)
        if done.returncode != 0:
            message = (done.stderr or done.stdout).strip()
            if "Invalid job id" in message:
                return self._accounted(job_id)
            raise SlurmUnreachable(f"scontrol: {message}")
        fields = _key_values(done.stdout)
        return SlurmJobState(
            job_id=job_id,
            state=fields.get("JobState", "UNKNOWN").split()[0],
            reason=fields.get("Reason", ""),
            node=fields.get("NodeList", "").replace("(null)", ""),
            time_limit=fields.get("TimeLimit", ""),
            run_time=fields.get("RunTime", ""),
            exit_code=fields.get("ExitCode", ""),
            source="scontrol",
        )

    def _accounted(self, job_id: str) -> SlurmJobState | None:
        """The job from accounting (sacct), when the cluster keeps it."""
        done = self._run(
            "sacct",
            "--noheader",
            "--parsable2",
            "--allocations",
            f"--jobs={job_id}",
            "--format=JobID,State,Reason,NodeList,Timelimit,Elapsed,ExitCode",
        )
        if done.returncode != 0:
            return None  # accounting disabled ("Slurm accounting storage is disabled") or down
        for line in done.stdout.splitlines():
            fields = line.split("|")
            if len(fields) == 7 and fields[0] == job_id:
                _, state, reason, node, limit, elapsed, exit_code = fields
                return SlurmJobState(
                    job_id, state.split()[0], reason, node, limit, elapsed, exit_code, "sacct"
                )
        return None

    def find(self, name: str) -> str | None:
        out = self._checked("squeue", "--noheader", "--states=all", f"--name={name}", "--format=%i")
        ids = sorted((line.strip() for line in out.splitlines() if line.strip()), key=int)
        return ids[-1] if ids else None

    def cancel(self, job_id: str) -> None:
        self._checked("scancel", job_id)

    def max_gpus_per_node(self, partition: str | None, gres: str) -> int:
        args = ["--noheader", "--format=%P|%G"]
        if partition:
            args.append(f"--partition={partition}")
        out = self._checked("sinfo", *args)
        best = 0
        for line in out.splitlines():
            name, _, gres_text = line.strip().partition("|")
            if partition is None and not name.endswith("*"):
                continue  # without a partition, sbatch uses the default one (marked *)
            best = max(best, gres_count(gres_text, gres))
        return best


def gres_count(text: str, gres: str) -> int:
    """GPUs named ``gres`` in a node's gres list as sinfo prints it.

    >>> gres_count("gpu:a100:4(S:0-1),gpu:h100:2,shard:8", "gpu")
    6
    """
    total = 0
    for item in re.split(r",(?![^(]*\))", text):
        parts = item.split("(")[0].split(":")
        if parts[0] != gres or len(parts) < 2:
            continue
        count = parts[-1]
        if count.isdigit():
            total += int(count)
    return total


def _key_values(text: str) -> dict[str, str]:
    out = {}
    for token in text.split():
        key, sep, value = token.partition("=")
        if sep and key not in out:
            out[key] = value
    return out


def _unreachable(message: str) -> bool:
    lowered = message.lower()
    return any(
        hint in lowered
        for hint in (
            "unable to contact slurm controller",
            "connection refused",
            "connect failure",
            "socket timed out",
            "communication connection failure",
            "zero bytes were transmitted",
            "munge",
            "slurm_load_partitions",
        )
    )
