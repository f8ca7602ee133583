"""A host of several scripted GPUs: the real server, scheduler, per-GPU locks and experiment
processes, with the scripted NVML (`fake_gpus_meter`) and the scripted backend on the GPUs
of each grant (`MultiGpuBackend`).

Every test checks that no GPU was ever granted twice, twice over: from the service's side
(jobs that shared a GPU never ran at the same time) and from the experiments' side (each
process saw only its own GPUs in ``CUDA_VISIBLE_DEVICES``, and found their lock files locked,
naming its own job, and open in its own process).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from llem_client import Client, ExperimentConfig, Job, JobStatus
from llem_service.jobs.gpu_locks import GpuLocks

from tests.conftest import LiveServer, make_config
from tests.fakes import MultiGpuBackend, fake_gpu_uuid, fake_gpus_meter
from tests.server_process import ServerProcess

StartServer = Callable[..., LiveServer]
GPUS = [fake_gpu_uuid(i) for i in range(4)]


def start_host(
    start_server: StartServer, tmp_path: Path, n_gpus: int = 4, **settings: Any
) -> tuple[LiveServer, Path]:
    """A server on a host of ``n_gpus`` scripted GPUs; returns it and its experiments' log."""
    data_dir = settings.pop("data_dir", tmp_path / "data")
    log_dir = tmp_path / f"gpu-log-{data_dir.name}"
    log_dir.mkdir()
    lock_dir = settings.setdefault("gpu_lock_dir", tmp_path / "gpu-locks")
    backend = MultiGpuBackend(
        pid_dir=str(tmp_path), gpu_log_dir=str(log_dir), lock_dir=str(lock_dir)
    )
    server = start_server(
        data_dir=data_dir,
        backend=backend,
        meter=fake_gpus_meter(n_gpus),
        **settings,
    )
    return server, log_dir


def job(name: str, sleep_s: float = 0.0, fault: str = "", **fields: Any) -> ExperimentConfig:
    tags = {"fake.sleep_s": str(sleep_s), "fake.pid_name": name}
    if fault:
        tags["fake.fault"] = fault
    return make_config(name=name, tags=tags, **fields)


def wait_all(client: Client, ids: list[str], timeout_s: float = 60) -> list[Job]:
    deadline = time.monotonic() + timeout_s
    while True:
        jobs = [client.get(i) for i in ids]
        if all(j.status.terminal for j in jobs):
            return jobs
        assert time.monotonic() < deadline, [(j.name, j.status) for j in jobs]
        time.sleep(0.05)


def wait_running(client: Client, ids: list[str], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(client.get(i).status is JobStatus.RUNNING for i in ids):
        assert time.monotonic() < deadline, [client.get(i).status for i in ids]
        time.sleep(0.05)


def runs_logged(log_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(log_dir.glob("*.json"))]


def assert_no_gpu_granted_twice(
    client: Client, jobs: list[Job], log_dir: Path
) -> dict[str, list[str]]:
    """Both checks of the module docstring; returns each job's GPUs by name."""
    ids = {j.name: j.id for j in jobs}
    gpus_of: dict[str, list[str]] = {}
    spans: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for j in jobs:
        if j.status is not JobStatus.SUCCEEDED:
            continue
        placement = client.result(j.id).placement
        assert placement is not None
        assert j.name is not None
        assert j.started_at
        assert j.finished_at
        gpus_of[j.name] = placement.gpus
        for uuid in placement.gpus:
            spans[uuid].append((j.started_at.timestamp(), j.finished_at.timestamp(), j.name))
    for uuid, held in spans.items():
        for a, b in itertools.pairwise(sorted(held)):
            assert a[1] <= b[0], f"{uuid} granted to {a[2]} and {b[2]} at once"
    for run in runs_logged(log_dir):
        visible = run["cuda_visible_devices"].split(",")
        name: str = run["name"]
        if name in gpus_of:
            assert visible == gpus_of[name]
        for uuid in visible:
            lock = run["locks"][uuid]
            assert lock == {"held": True, "holder": ids[name], "inherited": True}, run
    return gpus_of


def test_four_one_gpu_jobs_run_at_once_on_four_gpus(
    start_server: StartServer, tmp_path: Path
) -> None:
    server, log_dir = start_host(start_server, tmp_path)

    with Client(server.base_url) as client:
        info = client.info()
        ids = [client.submit(job(f"j{i}", sleep_s=3.0)).id for i in range(4)]
        jobs = wait_all(client, ids)
        gpus_of = assert_no_gpu_granted_twice(client, jobs, log_dir)
        results = {j.name or "": client.result(j.id) for j in jobs}

    assert [g.uuid for g in info.gpus] == GPUS
    assert info.max_gpus_per_experiment == 4
    assert all(j.status is JobStatus.SUCCEEDED for j in jobs)
    assert sorted(g for gpus in gpus_of.values() for g in gpus) == GPUS
    runs = runs_logged(log_dir)
    assert max(r["start"] for r in runs) < min(r["end"] for r in runs)  # all four at once
    for name, result in results.items():
        placement = result.placement
        assert placement is not None
        assert placement.executor == "local"
        assert not placement.exclusive_host
        others = placement.overlapping_experiments
        assert sorted(o.experiment_id for o in others) == sorted(set(ids) - {result.experiment_id})
        assert all(o.service is None and o.overlap_s > 0 for o in others)
        assert {g for o in others for g in o.gpus} == set(GPUS) - set(gpus_of[name])
        assert "concurrent_experiments" in [w.code for w in result.warnings]
        # each experiment metered its own GPU, and only that one
        assert result.energy is not None
        assert [d.device_uuid for d in result.energy.devices] == gpus_of[name]


def test_a_two_gpu_job_waits_for_two_free_gpus_and_is_not_starved(
    start_server: StartServer, tmp_path: Path
) -> None:
    server, log_dir = start_host(start_server, tmp_path, backfill_limit=2)

    with Client(server.base_url) as client:
        first = [client.submit(job(f"first{i}", sleep_s=1.0 + i)).id for i in range(4)]
        wait_running(client, first)
        big = client.submit(job("big", sleep_s=1.0, gpus=2)).id
        later = [client.submit(job(f"later{i}", sleep_s=4.0)).id for i in range(6)]
        jobs = wait_all(client, [*first, big, *later], timeout_s=120)
        gpus_of = assert_no_gpu_granted_twice(client, jobs, log_dir)

    assert all(j.status is JobStatus.SUCCEEDED for j in jobs), [j.error for j in jobs]
    started = {j.name: j.started_at.timestamp() for j in jobs if j.name and j.started_at}
    assert len(gpus_of["big"]) == 2
    overtook = [n for n, t in started.items() if n.startswith("later") and t < started["big"]]
    # Two later jobs may use the GPUs freed before big had two (the bound), never more.
    assert len(overtook) == 2, overtook
    # ... and they were the first two in line: order holds among the jobs that start.
    assert sorted(overtook) == ["later0", "later1"]


def test_an_exclusive_host_job_runs_alone(start_server: StartServer, tmp_path: Path) -> None:
    server, log_dir = start_host(start_server, tmp_path, n_gpus=2)

    with Client(server.base_url) as client:
        ids = [
            client.submit(job("before", sleep_s=1.5)).id,
            client.submit(job("alone", sleep_s=1.0, exclusive_host=True)).id,
            client.submit(job("after", sleep_s=0.5)).id,
        ]
        jobs = wait_all(client, ids)
        gpus_of = assert_no_gpu_granted_twice(client, jobs, log_dir)
        alone = client.result(ids[1])

    assert gpus_of["alone"] == GPUS[:2]
    assert alone.placement is not None
    assert alone.placement.exclusive_host
    assert alone.placement.overlapping_experiments == []
    assert "concurrent_experiments" not in [w.code for w in alone.warnings]


def test_more_gpus_than_the_host_has_is_refused_at_submit_naming_the_field(
    start_server: StartServer, tmp_path: Path
) -> None:
    server, _ = start_host(start_server, tmp_path, n_gpus=2)

    response = httpx.post(
        f"{server.base_url}/v1/experiments", json=job("greedy", gpus=3).model_dump(mode="json")
    )
    with Client(server.base_url) as client:
        queued = client.list()

    assert response.status_code == 422
    problem = response.json()
    assert problem["errors"] == [
        {
            "loc": ["body", "gpus"],
            "msg": "asks for 3 GPUs, and this host has 2",
            "type": "value_error",
        }
    ]
    assert queued.items == []


def test_a_child_killed_mid_run_frees_its_gpus(start_server: StartServer, tmp_path: Path) -> None:
    server, log_dir = start_host(start_server, tmp_path, n_gpus=2)
    locks = GpuLocks(tmp_path / "gpu-locks", owner="test")

    with Client(server.base_url) as client:
        doomed = client.submit(job("doomed", fault="hang", gpus=2)).id
        pid_file = tmp_path / "doomed.pid"
        deadline = time.monotonic() + 30
        while not pid_file.exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        held_while_running = locks.holders(GPUS[:2])
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
        killed = client.wait(doomed, timeout=30)
        after = client.submit(job("after", gpus=2)).id
        jobs = wait_all(client, [after])
        gpus_of = assert_no_gpu_granted_twice(client, jobs, log_dir)

    assert {h.job_id for h in held_while_running.values()} == {doomed}
    assert killed.status is JobStatus.FAILED
    assert killed.error is not None
    assert "SIGKILL" in killed.error.detail
    assert gpus_of["after"] == GPUS[:2]


def test_a_gpu_another_service_holds_is_not_granted_until_it_lets_go(
    start_server: StartServer, tmp_path: Path
) -> None:
    server, log_dir = start_host(start_server, tmp_path, n_gpus=2)
    other = GpuLocks(tmp_path / "gpu-locks", owner="other-host:4242")
    fd = other.acquire(GPUS[0])
    assert fd is not None
    other.describe(fd, "other-job", [GPUS[0]])

    with Client(server.base_url) as client:
        info = client.info()
        ids = [client.submit(job(f"j{i}", sleep_s=4.0)).id for i in range(2)]
        wait_running(client, ids[:1])
        time.sleep(1.5)  # a retry or so of the scheduler's
        second_while_locked = client.get(ids[1]).status
        other.release(fd)
        wait_running(client, ids)
        first_still = client.get(ids[0]).status
        jobs = wait_all(client, ids)
        gpus_of = assert_no_gpu_granted_twice(client, jobs, log_dir)
        first = client.result(ids[0])

    assert [(g.uuid, g.held_by) for g in info.gpus] == [
        (GPUS[0], "other-host:4242"),
        (GPUS[1], None),
    ]
    assert second_while_locked is JobStatus.QUEUED  # GPU 1 busy with j0, GPU 0 locked elsewhere
    assert first_still is JobStatus.RUNNING  # j1 took GPU 0 as soon as it was let go
    assert gpus_of == {"j0": [GPUS[1]], "j1": [GPUS[0]]}
    assert first.placement is not None
    seen = [(o.experiment_id, o.service, o.gpus) for o in first.placement.overlapping_experiments]
    assert ("other-job", "other-host:4242", [GPUS[0]]) in seen
    assert (ids[1], None, [GPUS[0]]) in seen


def test_two_services_sharing_the_lock_directory_never_share_a_gpu(
    start_server: StartServer, tmp_path: Path
) -> None:
    a, log_a = start_host(start_server, tmp_path, data_dir=tmp_path / "a")
    b, log_b = start_host(start_server, tmp_path, data_dir=tmp_path / "b")

    with Client(a.base_url) as client_a, Client(b.base_url) as client_b:
        ids_a = [client_a.submit(job(f"a{i}", sleep_s=2.0)).id for i in range(3)]
        ids_b = [client_b.submit(job(f"b{i}", sleep_s=2.0)).id for i in range(3)]
        jobs = wait_all(client_a, ids_a, 90) + wait_all(client_b, ids_b, 90)
        gpus_of = {
            **assert_no_gpu_granted_twice(client_a, jobs[:3], log_a),
            **assert_no_gpu_granted_twice(client_b, jobs[3:], log_b),
        }
        results = [client_a.result(i) for i in ids_a] + [client_b.result(i) for i in ids_b]

    spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for j in jobs:
        assert j.status is JobStatus.SUCCEEDED
        assert j.started_at
        assert j.finished_at
        assert j.name
        for uuid in gpus_of[j.name]:
            spans[uuid].append((j.started_at.timestamp(), j.finished_at.timestamp()))
    for held in spans.values():
        for x, y in itertools.pairwise(sorted(held)):
            assert x[1] <= y[0]
    # An experiment that ran beside the other service's says so, naming that service.
    placements = [r.placement for r in results if r.placement]
    foreign = {o.experiment_id for p in placements for o in p.overlapping_experiments if o.service}
    assert foreign & (set(ids_a) | set(ids_b))


def test_the_server_killed_and_restarted_rereads_the_locks(
    server_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    log_dir = tmp_path / "gpu-log"
    log_dir.mkdir()
    server = server_process(test_gpus="4", test_gpu_log_dir=str(log_dir))
    locks = GpuLocks(server.data_dir / "gpu-locks", owner="test")

    with Client(server.url) as client:
        hung = [client.submit(job(f"hung{i}", fault="hang")).id for i in range(2)]
        wait_running(client, hung)
        pids = [wait_pid(tmp_path / "pids" / f"hung{i}.pid") for i in range(2)]
    # The experiments are stopped (not dead) when the server dies: they keep their GPUs'
    # locks, inherited from the server, for as long as they live.
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    server.kill()
    held_after_kill = locks.holders(GPUS)
    server.restart()

    with Client(server.url) as client:
        interrupted = [client.get(i) for i in hung]
        info = client.info()
        ids = [client.submit(job(f"new{i}", sleep_s=2.0)).id for i in range(3)]
        wait_running(client, ids[:2])
        time.sleep(1.5)  # a scheduler retry or so, with GPUs 0 and 1 still locked
        third_while_locked = client.get(ids[2]).status
        for pid in pids:
            os.kill(pid, signal.SIGKILL)  # the holders die: their locks go with them
        jobs = wait_all(client, ids)
        gpus_of = assert_no_gpu_granted_twice(client, jobs, log_dir)

    assert {h.job_id for h in held_after_kill.values()} == set(hung)
    assert [j.status for j in interrupted] == [JobStatus.FAILED] * 2
    assert all(j.error and j.error.type == "urn:llem:problem:interrupted" for j in interrupted)
    held = [g.held_by for g in info.gpus]
    assert held[:2] == [held[0], held[0]]
    assert held[0] is not None
    assert held[2:] == [None, None]
    assert third_while_locked is JobStatus.QUEUED
    assert sorted(gpus_of["new0"] + gpus_of["new1"]) == GPUS[2:]
    assert gpus_of["new2"][0] in GPUS[:2]


def wait_pid(path: Path, timeout_s: float = 30) -> int:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.05)
    return int(path.read_text())
