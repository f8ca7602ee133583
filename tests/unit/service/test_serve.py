"""The served process keeps the garbage collector off its start-up heap (`freeze_heap`): a
full collection that walked it stalled every request in flight for 70-125 ms."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from llem_service.app import create_app
from llem_service.serve import GracefulServer, make_server
from llem_service.settings import Settings

from tests.server_process import ROOT


def test_a_served_app_freezes_its_heap_with_the_modules_requests_import_later() -> None:
    # In a process of its own: freezing is for the whole process, and pytest's is shared.
    script = (
        "import gc, sys\n"
        "from llem_service.serve import freeze_heap\n"
        "before = 'pyarrow.parquet' in sys.modules\n"
        "freeze_heap()\n"
        "print(before, 'pyarrow.parquet' in sys.modules, gc.get_freeze_count(),"
        " len(gc.get_objects()))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    before, after, frozen, left = done.stdout.split()

    assert (before, after) == ("False", "True")
    assert int(frozen) > 10_000
    assert int(left) < int(frozen) // 100  # what the collector still walks: next to nothing


def test_make_server_freezes_and_a_plain_server_does_not(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    app = create_app(settings)

    served = make_server(app, settings)

    assert served.freeze
    assert not GracefulServer(served.config).freeze  # the tests' in-thread servers
