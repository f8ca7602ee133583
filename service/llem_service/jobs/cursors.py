"""Page cursors of the job and study lists: opaque to clients, a row's ``seq`` inside.

One reader for both lists, so that a cursor this server did not issue is a 400
(`InvalidCursor`) whatever is wrong with it, never a 500: not only a wrong prefix or broken
base64, but digits Python's ``int`` takes and SQLite does not (``²``, ``1_000``, `` 7``, more
than a 64-bit integer holds).
"""

from __future__ import annotations

import base64

from llem_service.errors import InvalidCursor

#: SQLite's largest integer: a ``seq`` is never above it.
_MAX_SEQ = 2**63 - 1


def job_cursor(seq: int) -> str:
    """The cursor of the job list's page after the job with ``seq``."""
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode().rstrip("=")


def job_seq(cursor: str) -> int:
    """The ``seq`` in a `job_cursor`.

    Raises:
        InvalidCursor: ``cursor`` is not one `job_cursor` makes.
    """
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        text = base64.urlsafe_b64decode(padded.encode()).decode()
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
        raise _invalid(cursor) from None
    return _seq(text, "seq", cursor)


def study_cursor(seq: int) -> str:
    """The cursor of the study list's page after the study with ``seq``."""
    return f"study:{seq}"


def study_seq(cursor: str) -> int:
    """The ``seq`` in a `study_cursor`.

    Raises:
        InvalidCursor: ``cursor`` is not one `study_cursor` makes.
    """
    return _seq(cursor, "study", cursor)


def _seq(text: str, kind: str, cursor: str) -> int:
    found, _, value = text.partition(":")
    # ASCII digits only: str.isdigit() is True for "²" and int() takes "1_0" and " 1".
    if found != kind or not value or len(value) > 19 or not value.isascii() or not value.isdigit():
        raise _invalid(cursor)
    seq = int(value)
    if seq > _MAX_SEQ:
        raise _invalid(cursor)
    return seq


def _invalid(cursor: str) -> InvalidCursor:
    return InvalidCursor(f"cursor {cursor[:100]!r} is not one this server issued")
