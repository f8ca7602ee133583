"""Page cursors: what the lists issue reads back, and anything else is a 400, not a 500."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from llem_service.errors import InvalidCursor
from llem_service.jobs.cursors import job_cursor, job_seq, study_cursor, study_seq

from tests.conftest import build_app


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


#: Digits Python's int() accepts and a cursor must not: a superscript, underscores, spaces,
#: a sign, and numbers past SQLite's 64-bit integers.
NOT_A_SEQ = ["²", "1_000", " 7", "7 ", "-1", "+1", "9" * 30, str(2**63), "", "0x10"]


@pytest.mark.parametrize("seq", [0, 1, 123_456, 2**63 - 1])
def test_a_cursor_reads_back_the_seq_it_was_made_from(seq: int) -> None:
    assert job_seq(job_cursor(seq)) == seq
    assert study_seq(study_cursor(seq)) == seq


@pytest.mark.parametrize("value", NOT_A_SEQ)
def test_a_cursor_without_a_plain_64_bit_seq_is_refused(value: str) -> None:
    with pytest.raises(InvalidCursor):
        job_seq(b64(f"seq:{value}"))
    with pytest.raises(InvalidCursor):
        study_seq(f"study:{value}")


@pytest.mark.parametrize(
    ("read", "cursor"),
    [
        (job_seq, study_cursor(1)),
        (job_seq, "seq:1"),
        (job_seq, b64("study:1")),
        (study_seq, job_cursor(1)),
        (study_seq, "study"),
    ],
)
def test_one_list_does_not_take_the_other_lists_cursor(
    read: Callable[[str], int], cursor: str
) -> None:
    with pytest.raises(InvalidCursor):
        read(cursor)


def test_the_lists_answer_a_forged_cursor_with_a_400(tmp_path: Path) -> None:
    app = build_app(tmp_path / "data")
    with TestClient(app, raise_server_exceptions=False) as http:
        answers = [
            http.get("/v1/studies", params={"cursor": f"study:{value}"}) for value in NOT_A_SEQ
        ] + [http.get("/v1/experiments", params={"cursor": b64(f"seq:{v}")}) for v in NOT_A_SEQ]

    assert [a.status_code for a in answers] == [400] * len(answers)
    assert all(a.headers["content-type"] == "application/problem+json" for a in answers)
