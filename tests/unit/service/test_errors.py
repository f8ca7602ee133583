"""The failure catalogue: one slug per kind, user errors told apart by their status."""

from __future__ import annotations

import pytest
from llem_service.errors import PROBLEM_URN, Failure, Failures


def test_every_failure_kind_has_its_own_slug() -> None:
    slugs = [f.slug for f in Failures.all()]
    assert len(slugs) == len(set(slugs)), slugs
    assert all(Failures.by_slug(slug).slug == slug for slug in slugs)


def test_user_errors_carry_a_4xx_status_and_ours_a_5xx() -> None:
    for failure in Failures.all():
        family = 4 if failure.user_error else 5
        assert failure.status // 100 == family, failure


def test_a_failure_becomes_a_problem_of_its_kind() -> None:
    problem = Failures.OUT_OF_MEMORY.problem("CUDA out of memory", traceback="...")
    assert problem.type == f"{PROBLEM_URN}out-of-memory"
    assert (problem.title, problem.status, problem.detail) == (
        "Experiment ran out of memory",
        500,
        "CUDA out of memory",
    )
    assert problem.model_extra == {"traceback": "..."}


def test_an_unknown_slug_is_refused() -> None:
    with pytest.raises(KeyError):
        Failures.by_slug("no-such-failure")
    assert isinstance(Failures.CONFIG_ERROR, Failure)
