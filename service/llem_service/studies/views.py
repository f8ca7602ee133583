"""A study as the API shows it, from what the store keeps: its record, its runs' tally and
its design."""

from __future__ import annotations

from collections.abc import Sequence

from llem_client import JobStatus, Study, StudyRun, StudyStatus, StudySummary

from llem_service.jobs.study_store import StudyRecord, StudyTally
from llem_service.studies.design import StudyDesign


def study_status(record: StudyRecord, tally: StudyTally) -> StudyStatus:
    """Running while any run is queued or running (queued until the first starts); then
    cancelled if the study or any run was cancelled, failed if any run failed, else
    succeeded."""
    counts = tally.counts
    if counts.get(JobStatus.RUNNING, 0):
        return StudyStatus.RUNNING
    if counts.get(JobStatus.QUEUED, 0):
        started = sum(counts.values()) > counts[JobStatus.QUEUED]
        return StudyStatus.RUNNING if started else StudyStatus.QUEUED
    if record.cancelled_at is not None or counts.get(JobStatus.CANCELLED, 0):
        return StudyStatus.CANCELLED
    if counts.get(JobStatus.FAILED, 0):
        return StudyStatus.FAILED
    return StudyStatus.SUCCEEDED


def summary(record: StudyRecord, tally: StudyTally, design: StudyDesign) -> StudySummary:
    return StudySummary(
        id=record.id,
        name=record.name,
        status=study_status(record, tally),
        design_hash=record.design_hash,
        created_at=record.created_at,
        started_at=tally.started_at,
        finished_at=tally.finished_at,
        n_points=len(design.points),
        n_skipped=len(design.skipped),
        cycles=design.cycles,
        n_runs=len(design.plan),
        counts={status: tally.counts.get(status, 0) for status in JobStatus},
    )


def full(
    record: StudyRecord, tally: StudyTally, design: StudyDesign, runs: Sequence[StudyRun]
) -> Study:
    head = summary(record, tally, design)
    return Study(
        **head.model_dump(),
        order=design.order,
        seed=design.seed,
        isolation=design.isolation,
        on_invalid=design.on_invalid,
        cooldown=design.cooldown,
        swept_fields=design.swept_fields,
        points=design.points,
        skipped=design.skipped,
        runs=list(runs),
        notes=design.notes,
    )
