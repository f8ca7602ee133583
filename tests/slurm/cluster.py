"""A one-node Slurm cluster on this machine, from Debian's ``slurm-wlm`` and ``munge``.

Everything lives in one directory of the test's: a munge key and socket, a generated
``slurm.conf`` for localhost (free ports, no GPUs, no cgroups: ``proctrack/linuxproc`` and
``task/none``; no accounting, so ``sacct`` answers nothing and llem relies on ``squeue`` and its
job directories), the controller's state and the daemons' logs. The daemons run in the
foreground as children of the test process (munged, slurmctld, slurmd), started and stopped
by it; nothing is installed as a service or left behind.

Slurm commands find this cluster through ``SLURM_CONF`` (`SlurmCluster.env`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

SBIN = Path("/usr/sbin")
NODE = "llem-node"
#: Commands the tier needs; missing ones skip it (or fail it, with LLEM_REQUIRE_SLURM=1).
COMMANDS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "scontrol", "sinfo")
#: Optional: the slurmrestd tests skip without it (Debian's ``slurmrestd`` package).
RESTD = SBIN / "slurmrestd"


def missing_commands() -> list[str]:
    return [
        c for c in COMMANDS if shutil.which(c, path=f"{os.environ.get('PATH', '')}:{SBIN}") is None
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class SlurmCluster:
    """munged, slurmctld and slurmd for one node, all under ``root``.

    Args:
        root: The cluster's directory (created).
        cpus: CPUs the node offers (more than the machine has is allowed: jobs here sleep
            more than they compute, and several must run at once).
    """

    def __init__(self, root: Path, cpus: int = 8) -> None:
        self.root = root
        self.cpus = cpus
        self.host = socket.gethostname().split(".")[0]
        self.conf = root / "slurm.conf"
        self.munge_socket = root / "munge" / "munge.socket"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        for sub in ("munge", "state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        os.chmod(key, 0o600)
        self._write_conf()
        self._daemon(
            "munged",
            [
                str(SBIN / "munged"),
                "--foreground",
                "--force",  # as root, and in a directory of the test's
                f"--socket={self.munge_socket}",
                f"--key-file={key}",
                f"--log-file={self.root / 'log' / 'munged.log'}",
                f"--pid-file={self.root / 'munge' / 'munged.pid'}",
                f"--seed-file={self.root / 'munge' / 'munged.seed'}",
            ],
        )
        self._wait(self.munge_socket.exists, "munged's socket")
        self.start_controller(fresh=True)
        self._daemon("slurmd", [str(SBIN / "slurmd"), "-D", "-N", NODE])
        self._wait(self.node_idle, "the node to be idle")

    def start_controller(self, *, fresh: bool = False) -> None:
        """slurmctld; ``fresh`` ignores saved state (the first start), otherwise it recovers
        the jobs it knew (a restart)."""
        command = [str(SBIN / "slurmctld"), "-D"]
        if fresh:
            command.append("-i")
        self._daemon("slurmctld", command)
        self._wait(self.controller_up, "slurmctld to answer")

    def stop_controller(self) -> None:
        self._stop("slurmctld")

    def start_restd(self) -> str:
        """slurmrestd on a UNIX socket with ``rest_auth/local`` (the socket's peer is the
        user); its URL for llem (``unix:<path>``)."""
        socket_path = self.root / "slurmrestd.socket"
        if "slurmrestd" not in self.processes:
            # As root it runs only when told that this is intended.
            env = {**self.env, "SLURMRESTD_SECURITY": "disable_user_check"}
            command = [str(RESTD), "-a", "rest_auth/local", "-s", "openapi/v0.0.38"]
            self._daemon("slurmrestd", [*command, f"unix:{socket_path}"], env)
            self._wait(socket_path.exists, "slurmrestd's socket")
        return f"unix:{socket_path}"

    def stop(self) -> None:
        """Cancel what still runs, stop the daemons, and kill any job step left behind: a
        slurmstepd outlives its slurmd by design (so that slurmd can restart under it)."""
        if "slurmctld" in self.processes and self.controller_up():
            self._cancel_all()
        for name in ("slurmrestd", "slurmd", "slurmctld", "munged"):
            self._stop(name)
        self._kill_leftover_steps()

    def _cancel_all(self, timeout_s: float = 20) -> None:
        listed = self.command("squeue", "--noheader", "--format=%i")
        ids = listed.stdout.split()
        if not ids:
            return
        self.command("scancel", *ids)
        deadline = time.monotonic() + timeout_s
        while self.command("squeue", "--noheader", "--format=%i").stdout.split():
            if time.monotonic() > deadline:
                return  # the steps are killed below
            time.sleep(0.2)

    def _kill_leftover_steps(self) -> None:
        """slurmstepd processes of this cluster (their environment names its slurm.conf) and
        every process under them."""
        marker = f"SLURM_CONF={self.conf}".encode()
        children: dict[int, list[int]] = {}
        steps = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry.name))
                if (entry / "cmdline").read_bytes().startswith(b"slurmstepd") and marker in (
                    entry / "environ"
                ).read_bytes().split(b"\0"):
                    steps.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile, or not ours to read
        doomed, todo = [], list(steps)
        while todo:
            pid = todo.pop()
            doomed.append(pid)
            todo.extend(children.get(pid, []))
        for pid in doomed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    # -- state --------------------------------------------------------------------------------

    def controller_up(self) -> bool:
        done = self.command("scontrol", "ping")
        return done.returncode == 0 and " is UP" in done.stdout

    def node_idle(self) -> bool:
        done = self.command("sinfo", "--noheader", "--format=%t")
        return done.stdout.strip() == "idle"

    def command(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args), capture_output=True, text=True, env=self.env, timeout=60, check=False
        )

    def job_state(self, job_id: str) -> str:
        done = self.command(
            "squeue", "--noheader", "--states=all", f"--jobs={job_id}", "--format=%T"
        )
        return done.stdout.strip()

    def logs(self) -> str:
        parts = []
        for path in sorted((self.root / "log").glob("*.log")):
            text = path.read_text(errors="replace")
            parts.append(f"== {path.name}\n{text[-4000:]}")
        return "\n".join(parts)

    # -- inside ------------------------------------------------------------------------------

    def _write_conf(self) -> None:
        root = self.root
        node = (
            f"NodeName={NODE} NodeHostname={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} "
            "RealMemory=4000 State=UNKNOWN"
        )
        self.conf.write_text(
            f"""# Generated by tests/slurm/cluster.py: one node, this machine, no GPUs.
ClusterName=llemtest
SlurmctldHost={self.host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={root / "state"}
SlurmdSpoolDir={root / "spool"}
SlurmctldPidFile={root / "slurmctld.pid"}
SlurmdPidFile={root / "slurmd.pid"}
SlurmctldLogFile={root / "log" / "slurmctld.log"}
SlurmdLogFile={root / "log" / "slurmd.log"}
# No cgroups here: processes are tracked by their parentage, tasks are not bound.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
# Quick to kill a job at its limit, quick to give up on a controller that is down.
KillWait=5
MessageTimeout=3
SlurmctldTimeout=10
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
JobRequeue=1
{node}
PartitionName=debug Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
"""
        )

    def _daemon(self, name: str, command: list[str], env: dict[str, str] | None = None) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")  # noqa: SIM115 - the daemon's
        self.processes[name] = subprocess.Popen(
            command,
            env=env or self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def _stop(self, name: str) -> None:
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _wait(self, ready: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            dead = [n for n, p in self.processes.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"waiting for {what}; stopped: {dead}\n{self.logs()}")
            time.sleep(0.2)
