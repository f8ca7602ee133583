"""``GET /v1/experiments/{id}/timeseries`` and ``llem-client result --timeseries``."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from llem_client import Client, JobStatus, NotFoundError
from llem_client.cli import main
from llem_service.energy import NullEnergyMeter

from tests.conftest import LiveServer, make_config
from tests.fakes import FakeInferenceBackend, fake_meter

StartServer = Callable[..., LiveServer]
COLUMNS = [
    "t_s",
    "device_uuid",
    "power_t_s",
    "power_w",
    "temperature_c",
    "sm_clock_mhz",
    "memory_used_bytes",
    "utilization_pct",
    "clock_event_reasons",
    "phase",
]


@pytest.fixture
def finished(start_server: StartServer) -> tuple[LiveServer, str]:
    server = start_server(
        backend=FakeInferenceBackend(sleep_s=0.3), meter=fake_meter(power_w=180.0)
    )
    with Client(server.base_url) as client:
        job = client.wait(client.submit(make_config(energy={"sample_interval_ms": 10})).id)
    assert job.status is JobStatus.SUCCEEDED
    return server, job.id


def test_parquet_holds_every_sample_with_its_phase(finished: tuple[LiveServer, str]) -> None:
    server, job_id = finished

    with Client(server.base_url) as client:
        data = client.timeseries(job_id)
        result = client.result(job_id)

    table = pq.read_table(io.BytesIO(data))
    assert table.column_names == COLUMNS
    assert result.energy is not None
    assert table.num_rows == result.energy.sampler.n_samples
    powers = table.column("power_w").to_pylist()
    assert set(powers) == {180.0}
    assert "decode" in set(table.column("phase").to_pylist())


def test_csv_has_the_same_rows(finished: tuple[LiveServer, str]) -> None:
    server, job_id = finished

    with Client(server.base_url) as client:
        parquet = pq.read_table(io.BytesIO(client.timeseries(job_id)))
        text = client.timeseries(job_id, format="csv").decode()

    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == COLUMNS
    assert len(rows) == parquet.num_rows


def test_cli_downloads_the_timeseries(
    finished: tuple[LiveServer, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server, job_id = finished
    target = tmp_path / "power.csv"

    code = main(["--server", server.base_url, "result", job_id, "--timeseries", str(target)])

    assert code == 0
    assert target.read_text().startswith('"t_s","device_uuid","power_t_s","power_w"')
    assert f"wrote {target}" in capsys.readouterr().err


def test_no_meter_means_no_timeseries_and_a_404_that_says_so(
    start_server: StartServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = start_server(meter=NullEnergyMeter("no NVIDIA driver here"))
    with Client(server.base_url) as client:
        job = client.wait(client.submit(make_config()).id)
        with pytest.raises(NotFoundError, match="no power timeseries was recorded"):
            client.timeseries(job.id)

    code = main(
        ["--server", server.base_url, "result", job.id, "--timeseries", str(tmp_path / "x.pq")]
    )

    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1
    assert "not written: no power timeseries was recorded" in err
    assert not (tmp_path / "x.pq").exists()


def test_unknown_format_is_a_422(finished: tuple[LiveServer, str]) -> None:
    import httpx

    server, job_id = finished

    response = httpx.get(f"{server.base_url}/v1/experiments/{job_id}/timeseries?format=xlsx")

    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"


def test_a_running_job_has_no_timeseries_yet(start_server: StartServer) -> None:
    from llem_client import ConflictError

    server = start_server(backend=FakeInferenceBackend(sleep_s=3.0))
    with Client(server.base_url) as client:
        job = client.submit(make_config(n_prompts=4, batch_size=1))
        with pytest.raises(ConflictError, match="not ready yet"):
            client.timeseries(job.id)
        client.cancel(job.id)
