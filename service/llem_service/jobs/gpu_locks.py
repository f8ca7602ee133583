"""One exclusive OS lock per physical GPU, held across services and containers of one host.

Each GPU has a file ``<directory>/<uuid>.lock``, locked with ``flock(2)`` (``LOCK_EX``). Why flock:

- The kernel drops the lock when the last descriptor of the open file closes, so a holder that
  dies (SIGKILL, an OOM kill, a stopped container) never leaves a stale lock and nothing has to
  clean up after it.
- It holds between containers that mount the same host directory (compose's ``llem-gpu-locks``
  volume) and between a containerised service and one run straight on the host, when both
  use the same directory: the lock is on the file, whatever the mount namespace.
- The lock belongs to the open file, not to a process: the experiment's process inherits the
  descriptor (`llem_service.executors.local`), so a GPU stays locked until both the service and
  its experiment are gone. A service killed mid-run leaves its experiment holding the GPU until
  that process exits too; a restarted service cannot grant the GPU under it.

The directory belongs on a local filesystem (``/run/lock/llem`` by default, a tmpfs): flock
over NFS is emulated with byte-range locks and must not be trusted between hosts, and GPUs are
per host anyway.

A locked file names its holder in one JSON line (``job_id``, ``owner``, ``since``, ``gpus``), for
people and for the overlap records of other services. The text is advice, the lock is the
truth: a holder that died leaves its text behind, and a free lock means a free GPU.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

#: What a lock file's name may hold; anything else in a UUID (MIG UUIDs have slashes) becomes _.
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class GpuLockDirError(RuntimeError):
    """The lock directory cannot be used (it cannot be created, or a lock file not opened)."""


@dataclass(frozen=True)
class LockHolder:
    """Who holds a GPU's lock, as its lock file says.

    Attributes:
        uuid: The GPU.
        job_id: The holder's job; None when the file names none.
        owner: The holding service, ``host:pid``.
        since: When it took the lock, seconds since the epoch.
        gpus: Every GPU of the holder's grant.
    """

    uuid: str
    job_id: str | None
    owner: str | None
    since: float | None
    gpus: tuple[str, ...] = ()


def service_owner() -> str:
    """This service as lock files name it: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


class GpuLocks:
    """The lock files of one directory.

    Args:
        directory: Shared by every llem service of the host that should exclude the others.
            Created (mode 1777, as ``/tmp``) if missing, so services of different users share it.
        owner: This service, as lock files name it.
    """

    def __init__(self, directory: Path, owner: str | None = None) -> None:
        self.directory = directory
        self.owner = owner or service_owner()
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(PermissionError):  # someone else's directory: keep its mode
                os.chmod(directory, 0o1777)
        except OSError as exc:
            raise GpuLockDirError(
                f"cannot create the GPU lock directory {directory}: {exc}. Set LLEM_GPU_LOCK_DIR "
                "to a local directory every llem service of this host can write"
            ) from exc

    def path(self, uuid: str) -> Path:
        return self.directory / f"{_UNSAFE.sub('_', uuid)}.lock"

    def _open(self, uuid: str) -> int:
        path = self.path(uuid)
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except PermissionError:
            # Another user's file: flock needs only a descriptor, not write access.
            try:
                return os.open(path, os.O_RDONLY)
            except OSError as exc:
                raise GpuLockDirError(f"cannot open the GPU lock {path}: {exc}") from exc
        except OSError as exc:
            raise GpuLockDirError(f"cannot open the GPU lock {path}: {exc}") from exc

    def acquire(self, uuid: str) -> int | None:
        """Lock ``uuid`` now without waiting: the descriptor that holds it, or None if another
        holder has it. Never blocks."""
        fd = self._open(uuid)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            raise GpuLockDirError(f"cannot lock {self.path(uuid)}: {exc}") from exc
        return fd

    def describe(self, fd: int, job_id: str, gpus: Iterable[str]) -> None:
        """Write the holder's line into a lock held through ``fd`` (skipped when read-only)."""
        line = json.dumps(
            {"job_id": job_id, "owner": self.owner, "since": time.time(), "gpus": list(gpus)}
        )
        with contextlib.suppress(OSError):  # opened read-only: the lock holds all the same
            os.ftruncate(fd, 0)
            os.pwrite(fd, (line + "\n").encode(), 0)

    @staticmethod
    def release(fd: int) -> None:
        """Let go of a lock taken by `acquire`.

        Closes the descriptor rather than calling ``LOCK_UN``: an experiment process that
        inherited the descriptor still holds the lock until it exits, and ``LOCK_UN`` would drop
        it for both.
        """
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # the holder's line goes with the lock
        os.close(fd)

    def holders(self, uuids: Iterable[str]) -> dict[str, LockHolder]:
        """The GPUs among ``uuids`` whose lock someone holds, with what their files say.

        Probes each lock with a shared, non-blocking flock that is dropped at once; a GPU this
        process holds through another descriptor reads as held, so leave those out.
        """
        out: dict[str, LockHolder] = {}
        for uuid in uuids:
            try:
                fd = os.open(self.path(uuid), os.O_RDONLY)
            except FileNotFoundError:
                continue  # never locked
            except OSError:  # the directory is broken: nothing to tell (the pool says why)
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    out[uuid] = _read_holder(uuid, fd)
                else:
                    fcntl.flock(fd, fcntl.LOCK_UN)  # free: this probe's own shared lock
            finally:
                os.close(fd)
        return out


def _read_holder(uuid: str, fd: int) -> LockHolder:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    since = data.get("since")
    gpus = data.get("gpus")
    return LockHolder(
        uuid=uuid,
        job_id=str(data["job_id"]) if data.get("job_id") else None,
        owner=str(data["owner"]) if data.get("owner") else None,
        since=float(since) if isinstance(since, int | float) else None,
        gpus=tuple(str(g) for g in gpus) if isinstance(gpus, list) else (),
    )
