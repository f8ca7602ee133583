"""What a large study costs the job store: its submission, and what a study's event stream
reads at each change.

A study's runs are inserted in one transaction under the store lock (`LLEM_MAX_STUDY_RUNS`
bounds them; 20,000 by default). A study's event stream is woken by every change of any job;
it used to read every run of the study that had left the queue (``study_runs`` without the
queued ones), and now reads the runs changed since its last read (``changed_runs``) and
tallies the study only when one did. Half of each study's runs are finished here, so the old
read returns half the study; the new read, with nothing changed, returns none.

    .venv/bin/python benchmarks/study_store_scale.py [--runs 20000 100000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llem_client import JobStatus
from llem_service.jobs.store import SqliteJobStore
from llem_service.jobs.study_store import NewStudy, PlannedRun

from tests.conftest import make_config
from tests.machine import machine

RESULTS = Path(__file__).parent / "results"
NOT_QUEUED = [s for s in JobStatus if s is not JobStatus.QUEUED]


def _median_ms(call: Callable[[], object], repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        found = call()
        times.append(time.perf_counter() - started)
        del found  # freed outside the timed window
    return round(1000 * statistics.median(times), 3)


def measure(n_runs: int) -> dict[str, Any]:
    store = SqliteJobStore(Path(tempfile.mkdtemp()) / "jobs.sqlite3")
    config = make_config(name="p")
    runs = [PlannedRun(config, i % 1000, i // 1000, i) for i in range(n_runs)]
    study = NewStudy("s", "0" * 16, "{}", runs, reuse=True, cooldown=None, fingerprint="f")
    started = time.perf_counter()
    record, _ = store.submit_study(study)
    submit_s = time.perf_counter() - started
    ids = [r.run.job_id for r in store.study_runs(record.id)]
    for job_id in ids[: n_runs // 2]:
        store.claim(job_id)
        store.finish(job_id, JobStatus.SUCCEEDED)
    _, mark = store.changed_runs(record.id)
    return {
        "runs": n_runs,
        "finished": n_runs // 2,
        "submit_s": round(submit_s, 2),
        "old_read_per_change_ms": _median_ms(lambda: store.study_runs(record.id, NOT_QUEUED)),
        "new_read_per_change_ms": _median_ms(lambda: store.changed_runs(record.id, mark)),
        "tally_ms": _median_ms(lambda: store.study_tallies([record.id])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, nargs="+", default=[20_000, 100_000])
    args = parser.parse_args()
    rows = [measure(n) for n in args.runs]
    report = {"studies": rows, "machine": machine()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "study_store_scale.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# A large study in the job store",
        "",
        f"One SQLite store, half of each study's runs finished; {machine()['cpus']} CPUs, "
        f"{machine()['date']}. Reads are medians of 5.",
        "",
        "| runs | submit (store lock held) | stream read per change, before | after | tally |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r['runs']:,} | {r['submit_s']} s | {r['old_read_per_change_ms']} ms "
        f"| {r['new_read_per_change_ms']} ms | {r['tally_ms']} ms |"
        for r in rows
    ]
    lines += [
        "",
        "Before: every run that left the queue, at every change. After: the runs changed since",
        "the stream's last read (none here); the tally runs only when a run or the study changed.",
        "",
        "Command: `.venv/bin/python benchmarks/study_store_scale.py`.",
    ]
    (RESULTS / "study_store_scale.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
