"""The one failure catalogue: every way a request or an experiment can fail, by kind.

Two families, both rendered as RFC 9457 problems (``urn:llem:problem:<slug>``):

- `LlemServiceError` and its subclasses: a request the API refuses. Routes raise them; the
  handlers in `llem_service.api.problems` turn them into ``application/problem+json``.
- `Failure`: how a job ended when it did not succeed. The executor, the scheduler and the store
  name a `Failure` and never spell a slug, a title or a status themselves. ``user_error``
  separates failures the submitter caused (a config that cannot run) from failures of ours
  (a crash, a lost GPU), so a listing can tell them apart.

This module imports no web framework: the experiment's child process names failures too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llem_client import FieldError, ProblemDetail

PROBLEM_URN = "urn:llem:problem:"


@dataclass(frozen=True)
class Failure:
    """One kind of job failure.

    Attributes:
        slug: Stable identifier; the problem type is ``urn:llem:problem:<slug>``.
        title: Short, human title of the kind (the same for every job that fails this way).
        status: HTTP status the stored problem carries: 4xx for what the submitter caused,
            5xx for what the service or the hardware did.
        user_error: The submitter can fix it by changing the config or the request.
    """

    slug: str
    title: str
    status: int = 500
    user_error: bool = False

    @property
    def type(self) -> str:
        return f"{PROBLEM_URN}{self.slug}"

    def problem(self, detail: str, **extra: Any) -> ProblemDetail:
        """The problem a failed job stores: this kind, and what happened this time."""
        return ProblemDetail(
            type=self.type, title=self.title, status=self.status, detail=detail, **extra
        )


class Failures:
    """The catalogue. Add a kind here, never a slug elsewhere."""

    # The submitter's doing: the config cannot run as written (a model that is not there, a
    # prompt longer than the model's context, a prompt file that is not JSONL...).
    CONFIG_ERROR = Failure("config-error", "Experiment config cannot run", 422, user_error=True)
    # Ours, or the hardware's.
    BACKEND_ERROR = Failure("backend-error", "Experiment failed")
    METER_ERROR = Failure("meter-error", "Energy measurement failed")
    OUT_OF_MEMORY = Failure("out-of-memory", "Experiment ran out of memory")
    EXPERIMENT_CRASHED = Failure("experiment-crashed", "Experiment crashed")
    PROCESS_DIED = Failure("experiment-process-died", "Experiment failed")
    TIMED_OUT = Failure("experiment-timed-out", "Experiment timed out")
    RUNNER_ERROR = Failure("runner-error", "Experiment could not start")
    SCHEDULER_ERROR = Failure("scheduler-error", "Experiment failed")
    INTERRUPTED = Failure("interrupted", "Interrupted")
    RESULT_NOT_SAVED = Failure("result-not-saved", "Result not saved")
    # Scale-out: a job that can never be granted its GPUs here (the host lost some since it was
    # accepted), and the ways a Slurm job ends without a result. Slurm's own reason goes in
    # the detail.
    NOT_ENOUGH_GPUS = Failure("not-enough-gpus", "Not enough GPUs", 422, user_error=True)
    SLURM_SUBMIT_FAILED = Failure("slurm-submit-failed", "Slurm refused the job")
    SLURM_TIME_LIMIT = Failure("slurm-time-limit", "Slurm time limit reached")
    SLURM_NODE_FAILED = Failure("slurm-node-failed", "Slurm node failed")
    SLURM_PREEMPTED = Failure("slurm-preempted", "Preempted by Slurm")
    SLURM_CANCELLED = Failure("slurm-cancelled", "Cancelled in Slurm")
    SLURM_JOB_FAILED = Failure("slurm-job-failed", "Slurm job failed")
    SLURM_JOB_VANISHED = Failure("slurm-job-vanished", "Slurm job vanished")

    @classmethod
    def all(cls) -> tuple[Failure, ...]:
        return tuple(v for v in vars(cls).values() if isinstance(v, Failure))

    @classmethod
    def by_slug(cls, slug: str) -> Failure:
        for failure in cls.all():
            if failure.slug == slug:
                return failure
        raise KeyError(slug)


class LlemServiceError(Exception):
    """An error with an HTTP meaning. Subclasses set the status, title and problem type.

    Args:
        detail: What happened this time, for the problem's ``detail``.
        headers: Response headers to send with the problem (``WWW-Authenticate``...).
        extra: Extension members of the problem (RFC 9457 section 3.2), e.g. ``candidates``.
    """

    status = 500
    title = "Internal Server Error"
    slug = "internal-error"

    def __init__(
        self,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def problem(self, instance: str | None = None) -> ProblemDetail:
        return ProblemDetail(
            type=f"{PROBLEM_URN}{self.slug}",
            title=self.title,
            status=self.status,
            detail=self.detail,
            instance=instance,
            **self.extra,
        )


class JobNotFound(LlemServiceError):
    status, title, slug = 404, "Job not found", "job-not-found"


class JobNotFinished(LlemServiceError):
    status, title, slug = 409, "Job not finished", "job-not-finished"


class JobHasNoResult(LlemServiceError):
    status, title, slug = 409, "Job has no result", "job-has-no-result"


class JobStillActive(LlemServiceError):
    status, title, slug = 409, "Job not finished", "job-still-active"


class AmbiguousJobId(LlemServiceError):
    """A job id prefix that matches more than one job; ``candidates`` lists some of them."""

    status, title, slug = 400, "Ambiguous job id", "ambiguous-job-id"


class JobAlreadyFinished(LlemServiceError):
    status, title, slug = 409, "Job already finished", "job-already-finished"


class IdempotencyKeyReused(LlemServiceError):
    status, title, slug = 422, "Idempotency key reused", "idempotency-key-reused"


class InvalidCursor(LlemServiceError):
    status, title, slug = 400, "Invalid cursor", "invalid-cursor"


class NotAuthenticated(LlemServiceError):
    status, title, slug = 401, "Not authenticated", "not-authenticated"


class ConfigRefused(LlemServiceError):
    """A config that is well formed but that this server can tell, at submit, it cannot run:
    a model that is not there, a size over the server's limits, a prompt longer than the
    model's context. ``errors`` lists each offending field, as a validation problem does."""

    status, title, slug = 422, "Config refused", "config-refused"

    def __init__(self, errors: Sequence[FieldError]) -> None:
        detail = "; ".join(f"{'.'.join(str(p) for p in e.loc)}: {e.msg}" for e in errors)
        super().__init__(detail, extra={"errors": [e.model_dump() for e in errors]})
        self.errors = list(errors)


class CsrfRejected(LlemServiceError):
    """A state-changing request on a dashboard session without its CSRF token."""

    status, title, slug = 403, "Cross-site request refused", "csrf-rejected"


class PayloadTooLarge(LlemServiceError):
    status, title, slug = 413, "Payload too large", "payload-too-large"


class TimeseriesNotRecorded(LlemServiceError):
    status, title, slug = 404, "No timeseries", "timeseries-not-recorded"


class ResultUnavailable(LlemServiceError):
    status, title, slug = 500, "Result unavailable", "result-unavailable"


class ExecutorUnavailable(LlemServiceError):
    """The executor cannot take jobs now (sbatch missing, slurmctld unreachable): a submit is
    refused rather than queued where nothing would run it."""

    status, title, slug = 503, "Executor unavailable", "executor-unavailable"


class StudyNotFound(LlemServiceError):
    status, title, slug = 404, "Study not found", "study-not-found"


class StudyAlreadyFinished(LlemServiceError):
    status, title, slug = 409, "Study already finished", "study-already-finished"


class StudyInvalid(LlemServiceError):
    """A study document that cannot be expanded into a runnable design. ``loc`` names the part
    of the document at fault (as a validation error's ``errors[].loc`` does, under ``body``)."""

    status, title, slug = 422, "Invalid study", "study-invalid"

    def __init__(
        self,
        detail: str,
        *,
        loc: tuple[str | int, ...] = (),
        errors: Sequence[FieldError] = (),
    ) -> None:
        """``errors``: each field of each point at fault, ``loc`` under ``body`` already
        (``body.points.<index>.<field>``), after the study's own error."""
        super().__init__(detail)
        self.loc = loc
        self.errors = list(errors)

    def problem(self, instance: str | None = None) -> ProblemDetail:
        problem = super().problem(instance)
        problem.errors = [
            FieldError(loc=["body", *self.loc], msg=self.detail, type="study"),
            *self.errors,
        ]
        return problem
