"""The per-GPU pool and its OS locks, the backfill bound and the overlap tracker, one by one."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest
from llem_client import ExperimentConfig, JobStatus
from llem_service.executors.base import GpuGrant, RunContext, RunOutcome
from llem_service.jobs.backfill import BackfillBound
from llem_service.jobs.base import QueuedJob
from llem_service.jobs.gpu_locks import GpuLockDirError, GpuLocks, LockHolder
from llem_service.jobs.gpus import NeverFits, PerGpuPool, SlotPool, grant_fits
from llem_service.jobs.overlaps import OverlapTracker
from llem_service.jobs.store import SqliteJobStore

from tests.conftest import make_config
from tests.fake_nvml import ManualClock
from tests.fakes import fake_gpu_uuid
from tests.unit.service.jobs.test_scheduler_seam import (
    RecordingExecutor,
    RecordingSession,
    _run_until_done,
    _submit_study,
)

GPUS = [fake_gpu_uuid(i) for i in range(4)]


def queued(job_id: str, **fields: object) -> QueuedJob:
    return QueuedJob(job_id, 0, make_config(**fields))


def is_locked(path: Path) -> bool:
    """What any other process sees: can it take the lock?"""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


# -- locks ------------------------------------------------------------------------------------


def test_a_lock_is_exclusive_names_its_holder_and_goes_with_release(tmp_path: Path) -> None:
    mine = GpuLocks(tmp_path, owner="host:1")
    theirs = GpuLocks(tmp_path, owner="host:2")

    fd = mine.acquire(GPUS[0])
    assert fd is not None
    mine.describe(fd, "job-a", GPUS[:1])
    second = theirs.acquire(GPUS[0])
    held = theirs.holders(GPUS)
    mine.release(fd)

    assert second is None
    assert list(held) == [GPUS[0]]
    assert held[GPUS[0]].job_id == "job-a"
    assert held[GPUS[0]].owner == "host:1"
    assert not is_locked(mine.path(GPUS[0]))
    assert mine.path(GPUS[0]).read_text() == ""  # the holder's line went with the lock
    assert theirs.holders(GPUS) == {}


def test_a_lock_held_by_a_process_that_dies_is_free(tmp_path: Path) -> None:
    locks = GpuLocks(tmp_path, owner="test")
    script = (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(locks.path(GPUS[0]))!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        'os.write(fd, b\'{"job_id": "doomed", "owner": "h:9"}\')\n'
        "print('locked', flush=True)\n"
        "time.sleep(60)\n"
    )
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE) as holder:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"locked\n"
        while_alive = locks.acquire(GPUS[0])
        holder.kill()
    after = locks.acquire(GPUS[0])

    assert while_alive is None
    assert after is not None  # the kernel released it: nothing to clean up
    locks.release(after)


def test_the_lock_directory_is_made_for_every_user_of_the_host(tmp_path: Path) -> None:
    GpuLocks(tmp_path / "locks")

    assert (tmp_path / "locks").stat().st_mode & 0o7777 == 0o1777


def test_mig_uuids_make_safe_file_names(tmp_path: Path) -> None:
    locks = GpuLocks(tmp_path)

    path = locks.path("MIG-GPU-5c89852c/1/0")

    assert path.parent == tmp_path
    assert path.name == "MIG-GPU-5c89852c_1_0.lock"


# -- the per-GPU pool ---------------------------------------------------------------------------


def test_grants_are_whole_gpus_first_free_first_and_locked(tmp_path: Path) -> None:
    pool = PerGpuPool(GPUS, GpuLocks(tmp_path))

    one = pool.try_grant(queued("a"))
    two = pool.try_grant(queued("b", gpus=2))
    too_many = pool.try_grant(queued("c", gpus=2))
    assert one is not None
    assert two is not None
    pool.release(one)
    after_release = pool.try_grant(queued("c", gpus=2))

    assert one.uuids == (GPUS[0],)
    assert two.uuids == (GPUS[1], GPUS[2])
    assert too_many is None  # only GPU 3 is free
    assert not is_locked(pool.locks.path(GPUS[0])) or after_release is not None
    assert after_release == GpuGrant((GPUS[0], GPUS[3]))
    assert [s.job_id for s in pool.states()] == ["c", "b", "b", "c"]
    assert all(is_locked(pool.locks.path(u)) for u in GPUS)


def test_a_gpu_locked_elsewhere_is_skipped(tmp_path: Path) -> None:
    other = GpuLocks(tmp_path, owner="elsewhere:1")
    fd = other.acquire(GPUS[1])
    assert fd is not None
    other.describe(fd, "their-job", [GPUS[1]])
    pool = PerGpuPool(GPUS, GpuLocks(tmp_path, owner="here:2"))

    grant = pool.try_grant(queued("a", gpus=2))
    all_four = pool.try_grant(queued("b", exclusive_host=True))

    assert grant == GpuGrant((GPUS[0], GPUS[2]))
    assert all_four is None
    assert [(h.uuid, h.job_id, h.owner) for h in pool.neighbours()] == [
        (GPUS[1], "their-job", "elsewhere:1")
    ]
    other.release(fd)


def test_a_grant_that_cannot_be_completed_takes_no_lock(tmp_path: Path) -> None:
    pool = PerGpuPool(GPUS[:2], GpuLocks(tmp_path))
    first = pool.try_grant(queued("a"))

    waiting = pool.try_grant(queued("b", gpus=2))

    assert first is not None
    assert waiting is None
    assert not is_locked(pool.locks.path(GPUS[1]))  # tried, then let go


def test_exclusive_host_takes_every_gpu(tmp_path: Path) -> None:
    pool = PerGpuPool(GPUS, GpuLocks(tmp_path))

    grant = pool.try_grant(queued("a", exclusive_host=True))
    nothing_beside = pool.try_grant(queued("b"))

    assert grant == GpuGrant(tuple(GPUS))
    assert nothing_beside is None


def test_a_job_bigger_than_the_host_never_fits(tmp_path: Path) -> None:
    pool = PerGpuPool(GPUS[:2], GpuLocks(tmp_path))

    with pytest.raises(NeverFits, match=r"gpus=3.*2 GPU\(s\)"):
        pool.try_grant(queued("a", gpus=3))


def test_the_descriptors_of_a_grant_hold_its_locks(tmp_path: Path) -> None:
    pool = PerGpuPool(GPUS, GpuLocks(tmp_path))
    grant = pool.try_grant(queued("a", gpus=2))
    assert grant is not None

    fds = pool.lock_fds(grant)

    assert [os.readlink(f"/proc/self/fd/{fd}") for fd in fds] == [
        str(pool.locks.path(u)) for u in grant.uuids
    ]


def test_a_session_takes_a_next_job_only_on_a_grant_of_its_size() -> None:
    two = GpuGrant(tuple(GPUS[:2]))

    assert grant_fits(two, make_config(gpus=2))
    assert not grant_fits(two, make_config(gpus=1))
    assert not grant_fits(two, make_config(gpus=2, exclusive_host=True))
    assert grant_fits(GpuGrant(), make_config(gpus=3))


def test_a_slot_pool_hands_over_so_many_jobs_at_once() -> None:
    pool = SlotPool(2)

    grants = [pool.try_grant(queued(str(i))) for i in range(3)]
    assert grants[0] is not None
    pool.release(grants[0])
    again = pool.try_grant(queued("3"))

    assert grants == [GpuGrant(), GpuGrant(), None]
    assert again == GpuGrant()


# -- the backfill bound ---------------------------------------------------------------------------


def test_a_waiting_job_is_overtaken_at_most_limit_times() -> None:
    bound = BackfillBound(2)

    steps = []
    for _ in range(3):
        allowed = bound.may_overtake(["big"])
        steps.append(allowed)
        if allowed:
            bound.overtook(["big"])

    assert steps == [True, True, False]


def test_every_earlier_waiting_job_must_allow_an_overtake() -> None:
    bound = BackfillBound(1)
    bound.overtook(["a"])

    assert not bound.may_overtake(["a", "b"])
    assert bound.may_overtake(["b"])


def test_a_zero_bound_is_strict_order_and_started_jobs_are_forgotten() -> None:
    bound = BackfillBound(0)
    assert not bound.may_overtake(["a"])
    assert bound.may_overtake([])

    loose = BackfillBound(1)
    loose.overtook(["a"])
    spent = not loose.may_overtake(["a"])
    loose.keep_only({"b"})  # "a" started: its count is forgotten

    assert spent
    assert loose.may_overtake(["a"])


# -- overlaps ----------------------------------------------------------------------------------


def test_runs_that_met_are_overlaps_on_both_sides() -> None:
    clock = ManualClock(100.0)
    tracker = OverlapTracker("host", clock=clock)

    tracker.begin("a", [GPUS[0]])
    clock.advance(1.0)
    tracker.begin("b", [GPUS[1]])
    clock.advance(2.0)
    ended_b = tracker.end("b")
    clock.advance(1.0)
    tracker.begin("c", [GPUS[1]])
    clock.advance(1.0)
    ended_a = tracker.end("a")
    ended_c = tracker.end("c")

    assert [(o.experiment_id, o.gpus, o.overlap_s) for o in ended_b] == [("a", [GPUS[0]], 2.0)]
    assert [(o.experiment_id, o.overlap_s) for o in ended_a] == [("b", 2.0), ("c", 1.0)]
    assert [(o.experiment_id, o.overlap_s) for o in ended_c] == [("a", 1.0)]


def test_runs_on_other_hosts_do_not_overlap() -> None:
    clock = ManualClock()
    tracker = OverlapTracker("login", clock=clock)
    tracker.begin("a")
    tracker.begin("b")
    tracker.place("a", "node1", [GPUS[0]], clock())
    tracker.place("b", "node2", [GPUS[0]], clock())
    clock.advance(5.0)

    assert tracker.end("a") == []
    assert tracker.placement("b") == ("node2", (GPUS[0],))


def test_another_services_run_seen_in_the_locks_counts_until_last_seen() -> None:
    clock = ManualClock(1000.0)
    holders = [LockHolder(GPUS[2], "theirs", "other:7", since=998.0, gpus=(GPUS[2],))]
    tracker = OverlapTracker("host", neighbours=lambda: list(holders), clock=clock)

    tracker.begin("mine", [GPUS[0]])
    clock.advance(3.0)
    tracker.observe()
    holders.clear()  # they let go
    clock.advance(4.0)
    overlaps = tracker.end("mine")

    assert [(o.experiment_id, o.service, o.gpus, o.overlap_s) for o in overlaps] == [
        ("theirs", "other:7", [GPUS[2]], 3.0)
    ]


def test_gpus_default_to_the_cuda_devices_a_config_names() -> None:
    spread = ExperimentConfig.model_validate(
        {"model": "m", "pytorch": {"device_map": {"layer.0": 0, "layer.1": "cuda:2"}}}
    )
    second = ExperimentConfig.model_validate({"model": "m", "pytorch": {"device": "cuda:1"}})
    metered = ExperimentConfig.model_validate({"model": "m", "energy": {"devices": [0, 3]}})

    assert (spread.gpus, second.gpus, metered.gpus) == (3, 2, 4)
    assert ExperimentConfig.model_validate({"model": "m"}).gpus == 1
    assert ExperimentConfig.model_validate(spread.model_dump()).gpus == 3


def test_an_explicit_gpus_below_what_the_config_names_is_refused() -> None:
    with pytest.raises(ValueError, match=r"gpus \(2\) is fewer .* gpus >= 4"):
        ExperimentConfig.model_validate(
            {"model": "m", "gpus": 2, "pytorch": {"device_map": {"a": 0, "b": 3}}}
        )


def test_a_queued_job_the_host_can_never_fit_fails_instead_of_blocking(tmp_path: Path) -> None:
    # Accepted when the host had more GPUs (a GPU lost since, or a restart with fewer).
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    too_big = store.submit(make_config(name="too-big", gpus=3)).job.id
    behind = store.submit(make_config(name="behind")).job.id
    pool = PerGpuPool(GPUS[:2], GpuLocks(tmp_path / "locks"))

    executor = RecordingExecutor()
    _run_until_done(store, tmp_path, executor, [too_big, behind], pool=pool)

    failed = store.get(too_big)
    assert failed is not None
    assert failed.status is JobStatus.FAILED
    assert failed.error is not None
    assert failed.error.type == "urn:llem:problem:not-enough-gpus"
    assert failed.error.status == 422
    assert "gpus=3" in failed.error.detail
    assert executor.sessions == [["behind"]]


class BrokenLocks(GpuLocks):
    """Lock files of which those in ``broken`` cannot be opened (another user's file with
    no access, a directory gone read-only): `acquire` raises as the real one does then."""

    def __init__(self, directory: Path, broken: set[str]) -> None:
        super().__init__(directory)
        self.broken = broken

    def acquire(self, uuid: str) -> int | None:
        if uuid in self.broken:
            raise GpuLockDirError(f"cannot open the GPU lock {self.path(uuid)}: Permission denied")
        return super().acquire(uuid)


def test_a_lock_that_cannot_be_taken_frees_the_others_and_says_why_until_it_works(
    tmp_path: Path,
) -> None:
    locks = BrokenLocks(tmp_path, broken={GPUS[1]})
    pool = PerGpuPool(GPUS, locks)

    waiting = pool.try_grant(queued("a", gpus=2))
    first_gpu_locked = is_locked(locks.path(GPUS[0]))
    reason = pool.unavailable_reason()
    locks.broken.clear()  # fixed by the operator
    cleared = pool.unavailable_reason()
    grant = pool.try_grant(queued("a", gpus=2))

    assert waiting is None
    assert not first_gpu_locked  # taken before the failure, then let go
    assert reason is not None
    assert str(locks.path(GPUS[1])) in reason
    assert "Permission denied" in reason
    assert cleared is None
    assert grant == GpuGrant((GPUS[0], GPUS[1]))


def test_a_grant_passed_to_the_next_job_names_that_job_here_and_in_its_lock_files(
    tmp_path: Path,
) -> None:
    pool = PerGpuPool(GPUS, GpuLocks(tmp_path, owner="here:1"))
    grant = pool.try_grant(queued("first", gpus=2))
    assert grant is not None

    pool.reassign(grant, "second")

    assert [s.job_id for s in pool.states()] == ["second", "second", None, None]
    others_see = GpuLocks(tmp_path, owner="elsewhere:2").holders(grant.uuids)
    assert {(h.job_id, h.gpus) for h in others_see.values()} == {("second", grant.uuids)}


def test_a_session_that_takes_the_next_study_run_names_it_as_the_gpus_job(
    tmp_path: Path,
) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    pool = PerGpuPool(GPUS[:1], GpuLocks(tmp_path / "locks"))
    seen: list[tuple[str, str | None]] = []

    class NamingExecutor(RecordingExecutor):
        def open(self, grant: GpuGrant) -> RecordingSession:
            session = super().open(grant)
            run = session.run

            def noting(context: RunContext) -> RunOutcome:
                seen.append((context.job_id, pool.states()[0].job_id))
                return run(context)

            session.run = noting  # type: ignore[method-assign]
            return session

    ids = _submit_study(store, [("a1", "model-a"), ("a2", "model-a")], reuse=True)
    executor = NamingExecutor()
    _run_until_done(store, tmp_path, executor, ids, pool=pool)

    assert executor.sessions == [["a1", "a2"]]  # one session ran both
    assert seen == [(ids[0], ids[0]), (ids[1], ids[1])]
