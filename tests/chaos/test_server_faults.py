"""Faults of the server itself, injected for real: SIGKILL of the server process with jobs
queued and one running, and a results filesystem that is genuinely full (a small tmpfs).

After each: queued jobs run, the running one is marked interrupted, its orphaned experiment
process is gone, no finished result is lost and no result file is ever seen half-written.
"""

from __future__ import annotations

import errno
import os
import random
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.chaos.conftest import (
    TRIALS,
    half_written,
    lost_results,
    submit,
    wait_dead,
    wait_job,
)
from tests.server_process import ServerProcess

pytestmark = pytest.mark.chaos

Figures = Callable[[str, dict[str, Any]], None]


def _children(pid: int) -> set[int]:
    """Direct children of a process (every thread's), from /proc."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.update(int(c) for c in (task / "children").read_text().split())
    return found


class ResultReader(threading.Thread):
    """Reads every result file over and over, as a client or a backup would, and keeps any it
    ever finds incomplete."""

    def __init__(self, results_dir: Path) -> None:
        super().__init__(name="result-reader", daemon=True)
        self.results_dir = results_dir
        self.reads = 0
        self.torn: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            if self.results_dir.is_dir():
                for path in self.results_dir.glob("[!.]*.json"):
                    try:
                        data = path.read_bytes()
                    except FileNotFoundError:
                        continue
                    self.reads += 1
                    if not data.rstrip().endswith(b"}"):
                        self.torn.append(path.name)
            time.sleep(0.005)


def test_server_killed_with_jobs_queued_and_one_running(
    server_process: Callable[..., ServerProcess], tmp_path: Path, figures: Figures
) -> None:
    rng = random.Random(0)
    data_dir = tmp_path / "data"
    server = server_process(data_dir=data_dir)
    reader = ResultReader(data_dir / "results")
    reader.start()
    succeeded: list[str] = []
    interrupted = 0
    orphans_reaped = 0
    started = time.monotonic()
    for trial in range(TRIALS):
        with httpx.Client(base_url=server.url, timeout=10) as http:
            fast = [submit(http) for _ in range(2)]
            long_running = submit(http, sleep_s="60", pid_name=f"srv-{trial}")
            queued = [submit(http) for _ in range(2)]
            # Kill at a random moment: while fast jobs run or save, or during the long one.
            time.sleep(rng.uniform(0.0, 1.2))
            children = _children(server.pid)
            server.kill()
        for pid in children:
            wait_dead(pid, timeout_s=10)  # orphaned experiment processes end themselves
        orphans_reaped += len(children)

        server.restart()
        with httpx.Client(base_url=server.url, timeout=10) as http:
            long_job = http.get(f"/v1/experiments/{long_running}").json()
            if long_job["status"] in {"queued", "running"}:  # killed before it started
                http.post(f"/v1/experiments/{long_running}/cancel")
            jobs = [wait_job(http, job_id) for job_id in [*fast, long_running, *queued]]
            for job in jobs:
                if job["status"] == "failed":
                    assert "the server restarted" in job["error"]["detail"], job
                    interrupted += 1
                elif job["status"] == "succeeded":
                    succeeded.append(job["id"])
                else:
                    assert job["id"] == long_running, job
                    assert job["status"] == "cancelled", job
            for job_id in queued:  # queued at the kill, or behind the long one: they ran
                assert http.get(f"/v1/experiments/{job_id}").json()["status"] == "succeeded"
            lost = lost_results(http, succeeded)
            assert lost == [], f"trial {trial}: results lost {lost}"
            assert half_written(data_dir / "results") == []
            assert server.healthy()
    reader.stopping.set()
    reader.join()
    figures(
        "chaos_server_sigkill",
        {
            "trials": TRIALS,
            "jobs_succeeded": len(succeeded),
            "jobs_interrupted": interrupted,
            "orphaned_processes_ended": orphans_reaped,
            "lost_results": 0,
            "result_reads_during_trials": reader.reads,
            "half_written_seen": len(reader.torn),
            "seconds": round(time.monotonic() - started),
        },
    )
    assert reader.torn == []
    assert interrupted >= 1  # the kills did land during runs


@pytest.fixture
def small_results_fs(tmp_path: Path) -> Iterator[Path]:
    """``data/results`` on its own 1 MiB tmpfs; skipped where mounting is not allowed."""
    results = tmp_path / "data" / "results"
    results.mkdir(parents=True)
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "llem-test-full", str(results)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mount.stderr.strip()}); needs root")
    try:
        yield results
    finally:
        subprocess.run(["umount", "-l", str(results)], check=False)


def _fill(directory: Path) -> Path:
    """Fill the filesystem of ``directory`` to the last byte; return the filler file."""
    filler = directory / ".filler"
    with filler.open("wb", buffering=0) as f:
        for chunk in (2**16, 2**12, 1):
            while True:
                try:
                    f.write(b"\0" * chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    return filler


def test_disk_full_while_writing_a_result(
    small_results_fs: Path, server_process: Callable[..., ServerProcess], figures: Figures
) -> None:
    server = server_process(data_dir=small_results_fs.parent)
    succeeded: list[str] = []
    started = time.monotonic()
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for _ in range(TRIALS):
            filler = _fill(small_results_fs)
            assert os.statvfs(small_results_fs).f_bavail == 0

            job = wait_job(http, submit(http))

            assert job["status"] == "failed"
            assert job["error"]["title"] == "Result not saved"
            assert "No space left on device" in job["error"]["detail"]
            assert http.get(f"/v1/experiments/{job['id']}/result").status_code == 409
            assert not [p for p in small_results_fs.iterdir() if p.name.startswith(".tmp-")]
            filler.unlink()
            healthy = wait_job(http, submit(http))
            assert healthy["status"] == "succeeded", healthy
            succeeded.append(healthy["id"])
            assert lost_results(http, succeeded) == []
            assert server.healthy()
    figures(
        "chaos_disk_full",
        {
            "trials": TRIALS,
            "filesystem": "tmpfs, 1 MiB, filled to the last byte before each faulty job",
            "lost_results": 0,
            "seconds": round(time.monotonic() - started),
        },
    )
    assert half_written(small_results_fs) == []
