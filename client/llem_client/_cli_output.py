"""Where a result goes: the ``--out`` file (or a default-named one) and stdout.

Kept apart from ``cli.py`` so that pathlib, which costs several milliseconds of start-up,
is imported only by commands that write results, not by ``--help``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from llem_client._cli_errors import EXIT_FAILURE, PROG, CliError

if TYPE_CHECKING:
    from llem_client._results import ExperimentResult


def checked_out_path(out: str | None, *, flag: str = "--out") -> Path | None:
    """An output path option, its directory checked to exist and be writable.

    Raises:
        CliError: The directory is missing or read-only; raised before any work is done.
    """
    if not out:
        return None
    path = Path(out)
    directory = path if path.is_dir() else path.parent
    if not directory.is_dir():
        raise CliError(f"{flag} {path}: the directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise CliError(f"{flag} {path}: the directory {directory} is not writable")
    return path


def default_result_path(result: ExperimentResult, directory: Path) -> Path:
    """``MODEL-YYYYmmdd-HHMMSS.json`` in ``directory``, stamped with the local finish time."""
    from llem_client._cli_render import model_slug

    stamp = result.finished_at.astimezone().strftime("%Y%m%d-%H%M%S")
    return directory / f"{model_slug(result.config.model)}-{stamp}.json"


def write_result(result: ExperimentResult, out: Path | None) -> Path:
    """Write the result JSON to ``out``, or a default name in ``out`` (a directory) or the cwd.

    A file named by the user is overwritten; a default name never overwrites an existing
    file, it takes a ``-2``, ``-3``... suffix instead.

    Raises:
        CliError: The file cannot be written (exit 1; the result is still on the server).
    """
    text = result.model_dump_json(indent=2) + "\n"
    try:
        if out is not None and not out.is_dir():
            out.write_text(text, encoding="utf-8")
            return out
        base = default_result_path(result, out if out is not None else Path.cwd())
        path, n = base, 1
        while True:
            try:
                with path.open("x", encoding="utf-8") as f:
                    f.write(text)
                return path
            except FileExistsError:
                n += 1
                path = base.with_name(f"{base.stem}-{n}{base.suffix}")
    except OSError as exc:
        raise CliError(
            f"cannot write the result: {exc}; it stays on the server: "
            f"{PROG} result {result.experiment_id} --out FILE",
            EXIT_FAILURE,
        ) from exc


def emit_result(
    result: ExperimentResult, *, out: Path | None, as_json: bool, default_file: bool
) -> None:
    """Write the result file (``out``, or a default name if ``default_file``), then print.

    Prints the result JSON alone when ``as_json``, else the summary table and the path written.
    """
    # The file is written before anything is printed, so a broken pipe cannot lose it.
    path = write_result(result, out) if (out is not None or default_file) else None
    if as_json:
        sys.stdout.write(result.model_dump_json(indent=2) + "\n")
        sys.stdout.flush()
        return
    from llem_client._cli_render import print_result_summary, stdout_console

    console = stdout_console()
    print_result_summary(result, console)
    if path is not None:
        console.print(f"wrote {path}", soft_wrap=True)
