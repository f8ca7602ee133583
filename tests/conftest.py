"""Factories and servers shared by every tier.

- `make_config` / `make_result`: valid objects with small defaults; each test overrides only
  what it is about.
- `start_server`: a real uvicorn server on a free loopback port, in a thread, running the real
  app, scheduler and child processes, with the fakes of `tests.fakes` injected through
  ``app.dependency_overrides``.
- `server_process`: the same app as a separate process (`tests.server_process`), for the tiers
  that signal or kill it.
- `figures`: the load, chaos, stress and perf tiers report what they measured; the figures
  are printed at the end of the run and, with ``--record-figures``, written to
  ``benchmarks/results/<name>.json``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from llem_client import (
    EnergyResult,
    Environment,
    ExperimentConfig,
    ExperimentResult,
    measurement_config_hash,
)

from tests.fakes import FakeHub, FakeInferenceBackend, fake_meter, fake_readings, fake_thermometer
from tests.machine import machine
from tests.server_process import ServerProcess


def make_config(**overrides: Any) -> ExperimentConfig:
    """A small valid config. Keyword arguments replace top-level fields."""
    data: dict[str, Any] = {
        "model": "tiny-test-model",
        "precision": "fp32",
        "prompts": {"source": "synthetic", "input_len": 8, "seed": 0},
        "n_prompts": 4,
        "batch_size": 2,
        "max_output_tokens": 4,
        "warmup": {"mode": "fixed", "batches": 1},
        "baseline": {"enabled": False},
    }
    data.update(overrides)
    return ExperimentConfig.model_validate(data)


def estimate(value: float, random: float = 0.0, systematic: float = 0.0) -> dict[str, float]:
    """An `Estimate` as the wire carries it (total = the two parts in quadrature)."""
    return {
        "value": value,
        "random": random,
        "systematic": systematic,
        "total": (random**2 + systematic**2) ** 0.5,
    }


def make_energy(**overrides: Any) -> EnergyResult:
    """An energy section consistent with `make_result`: 100 J over 0.5 s, 40 W idle, 16 tokens
    in 4 requests; prefill 30 J (one prefill pass), decode 70 J."""
    per_request = [estimate(25.0, 1.0, 1.3) for _ in range(4)]
    adjusted = [estimate(20.0, 1.0, 1.4) for _ in range(4)]
    data: dict[str, Any] = {
        "source": "nvml_energy_counter",
        "window_s": 0.5,
        "energy_j": estimate(100.0, 2.0, 1.5),
        "adjusted_energy_j": estimate(80.0, 2.1, 1.6),
        "baseline_power_w": estimate(40.0, 0.2, 1.0),
        "energy_per_output_token_j": estimate(6.25, 0.125, 0.094),
        "adjusted_energy_per_output_token_j": estimate(5.0, 0.13, 0.1),
        "uncertainty": {
            "figure": "adjusted_energy_per_output_token_j",
            "estimate": estimate(5.0, 0.13, 0.1),
            "random": 0.13,
            "systematic": 0.1,
            "total": (0.13**2 + 0.1**2) ** 0.5,
            "coverage_factor": 2.0,
            "terms": [
                {
                    "name": "counter_quantisation",
                    "kind": "random",
                    "contribution": 0.13,
                    "share": 0.63,
                    "description": "Each counter read lags the truth.",
                },
                {
                    "name": "sensor_gain",
                    "kind": "systematic",
                    "contribution": 0.1,
                    "share": 0.37,
                    "description": "The sensor's stated relative accuracy.",
                },
            ],
        },
        "mean_power_w": 200.0,
        "peak_power_w": 250.0,
        "integrated_energy_j": 102.0,
        "counter_vs_integral_rel_diff": 0.02,
        "cross_check_threshold": 0.1,
        "devices": [
            {
                "device_uuid": "GPU-fake",
                "name": "Fake GPU",
                "source": "nvml_energy_counter",
                "energy_j": estimate(100.0, 2.0, 1.5),
                "adjusted_energy_j": estimate(80.0, 2.1, 1.6),
                "integrated_energy_j": 102.0,
                "counter_vs_integral_rel_diff": 0.02,
                "mean_power_w": 200.0,
                "peak_power_w": 250.0,
                "power_field": "instant",
                "counter_update_period_s": 0.1,
                "sensor": {
                    "generation": "unknown",
                    "gain_rel": 0.1,
                    "offset_w": 10.0,
                    "sensed_fraction": None,
                    "source": "not characterised",
                },
            }
        ],
        "phase_split": "prefill_passes",
        "phases": [
            {
                "phase": "prefill",
                "duration_s": 0.125,
                "energy_j": estimate(30.0, 1.0, 1.0),
                "method": "prefill_passes",
            },
            {
                "phase": "decode",
                "duration_s": 0.375,
                "energy_j": estimate(70.0, 2.2, 1.6),
                "method": "window_minus_prefill",
            },
        ],
        "prefill_passes": {
            "passes": 20,
            "duration_s": 2.5,
            "energy_j": estimate(600.0, 3.0, 30.0),
            "energy_per_pass_j": estimate(30.0, 0.2, 1.0),
            "prefill_time_per_pass_s": 0.125,
            "window_prefill_time_per_repeat_s": 0.125,
        },
        "requests": {
            "description": "Within each batch: prefill split by prompt tokens; ...",
            "energy_j": per_request,
            "adjusted_energy_j": adjusted,
            "energy_per_output_token_j": {
                k: estimate(6.25, 0.25, 0.33) for k in ("mean", "p50", "p90", "p99")
            },
            "adjusted_energy_per_output_token_j": {
                k: estimate(5.0, 0.25, 0.35) for k in ("mean", "p50", "p90", "p99")
            },
        },
        "sampler": {"interval_s": 0.05, "n_samples": 10},
    }
    data.update(overrides)
    return EnergyResult.model_validate(data)


def make_result(**overrides: Any) -> ExperimentResult:
    """A consistent result of `make_config()`: 4 requests, 32 in, 16 out, 0.5 s, 100 J."""
    config = overrides.pop("config", None) or make_config()
    now = datetime.now(timezone.utc)
    data: dict[str, Any] = {
        "experiment_id": "0123456789abcdef0123456789abcdef",
        "measurement_config_hash": measurement_config_hash(config),
        "config": config,
        "started_at": now,
        "finished_at": now,
        "n_requests": 4,
        "input_tokens": 32,
        "output_tokens": 16,
        "total_tokens": 48,
        "output_tokens_per_request": [4, 4, 4, 4],
        "model_load_time_sec": 0.25,
        "warmup_time_sec": 0.125,
        "warmup_batches": 1,
        "total_inference_time_sec": 0.5,
        "avg_tokens_per_second": 32.0,
        "requests_per_second": 8.0,
        "prefill_time_sec": 0.125,
        "decode_time_sec": 0.375,
        "warmup_batch_latency_sec": [0.125],
        "batch_latency_sec": {
            "n": 2,
            "mean": 0.25,
            "p50": 0.25,
            "p90": 0.25,
            "p99": 0.25,
            "max": 0.25,
        },
        "time_to_first_token_sec": {
            "n": 4,
            "mean": 0.0625,
            "p50": 0.0625,
            "p90": 0.0625,
            "p99": 0.0625,
            "max": 0.0625,
        },
        "inter_token_latency_sec": {
            "n": 6,
            "mean": 0.0625,
            "p50": 0.0625,
            "p90": 0.0625,
            "p99": 0.0625,
            "max": 0.0625,
        },
        "timing_hook_overhead_sec": 0.0,
        "n_parameters": 1234,
        "repeats": {
            "per_repeat": [
                {"index": 0, "duration_s": 0.5, "output_tokens": 16, "tokens_per_second": 32.0}
            ],
            "tokens_per_second": {"n": 1, "mean": 32.0},
        },
        "energy_meter_available": True,
        "energy": make_energy(),
        "total_flops": 48_000,
        "prefill_flops": 32_000,
        "decode_flops": 16_000,
        "flops_method": "fake: flops_per_token x tokens",
        "environment": Environment(
            llem_version="0.1.0",
            python_version="3.11.7",
            platform="Linux",
            hostname="test-host",
            backend="fake",
            energy_meter="fake",
        ),
    }
    data.update(overrides)
    return ExperimentResult.model_validate(data)


@dataclass
class LiveServer:
    """A running server: its address, data directory and app (for its overrides)."""

    base_url: str
    data_dir: Path
    app: FastAPI
    stop: Callable[[], None]


def _serve(app: FastAPI) -> Iterator[str]:
    import uvicorn
    from llem_service.serve import GracefulServer

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = GracefulServer(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.exit()  # as SIGTERM does: streams end, a running experiment is interrupted
        thread.join(timeout=30)


def build_app(
    data_dir: Path,
    *,
    backend: Any = None,
    meter: Any = None,
    readings: Any = None,
    token: str | None = None,
    thermometer: Any = None,
    hub: Any = None,
    overrides: dict[Callable[..., Any], Callable[..., Any]] | None = None,
    **settings: Any,
) -> FastAPI:
    """The real app on ``data_dir``, with the fake backend, meter, thermometer and model hub
    injected (by default a hub that has every well-formed model id), the idle GPU poll reading
    ``readings`` (by default the scripted GPU of `tests.fakes.fake_readings`), and any other
    ``overrides`` of dependency providers (a scripted Slurm for ``get_slurm_api``, say)."""
    from llem_service.app import create_app
    from llem_service.deps import (
        get_energy_meter,
        get_inference_backend,
        get_model_hub,
        get_reading_source,
        get_thermometer,
    )
    from llem_service.settings import Settings

    # GPU locks of the test's own: the scripted GPUs' UUIDs are the same in every test.
    settings.setdefault("gpu_lock_dir", data_dir / "gpu-locks")
    app = create_app(Settings(data_dir=data_dir, api_token=token, cancel_grace_s=2.0, **settings))
    fake_backend = backend if backend is not None else FakeInferenceBackend()
    meter = meter if meter is not None else fake_meter()
    thermometer = thermometer if thermometer is not None else fake_thermometer()
    app.dependency_overrides[get_inference_backend] = lambda: fake_backend
    app.dependency_overrides[get_energy_meter] = lambda: meter
    source = readings if readings is not None else fake_readings()
    app.dependency_overrides[get_reading_source] = lambda: source
    app.dependency_overrides[get_thermometer] = lambda: thermometer
    model_hub = hub if hub is not None else FakeHub()
    app.dependency_overrides[get_model_hub] = lambda: model_hub
    app.dependency_overrides.update(overrides or {})
    return app


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """``start_server(backend=..., meter=..., token=..., hub=..., data_dir=...)`` -> `LiveServer`.

    Servers are stopped at the end of the test; one started on an earlier server's
    ``data_dir`` sees its jobs (a restart).
    """
    stack: list[Iterator[str]] = []

    def start(data_dir: Path | None = None, **kwargs: Any) -> LiveServer:
        data_dir = data_dir or tmp_path / "data"
        app = build_app(data_dir, **kwargs)
        serving = _serve(app)
        base_url = next(serving)
        stack.append(serving)

        def stop() -> None:
            for _ in serving:  # resumes the generator past its yield: stops the server
                pass

        return LiveServer(base_url=base_url, data_dir=data_dir, app=app, stop=stop)

    yield start
    for serving in reversed(stack):
        for _ in serving:
            pass


@pytest.fixture
def live_server(start_server: Callable[..., LiveServer]) -> LiveServer:
    """A server with the default fake backend and meter."""
    return start_server()


@pytest.fixture
def metered_server(start_server: Callable[..., LiveServer]) -> LiveServer:
    """A server whose fake experiments take real time: a measured window long enough, on a
    counter updating every millisecond, for every energy figure to be published (the default
    fake's window takes no time, so its per-token figures are null with a warning)."""
    return start_server(
        backend=FakeInferenceBackend(sleep_s=0.25), meter=fake_meter(counter_period_s=0.001)
    )


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """``server_process(**llem_env)`` -> a started `ServerProcess` (a real, separate process
    with the scripted fake backend); stopped at the end of the test."""
    started: list[ServerProcess] = []

    def start(data_dir: Path | None = None, **env: str) -> ServerProcess:
        n = len(started)
        server = ServerProcess(
            data_dir or tmp_path / "data",
            tmp_path / "pids",
            tmp_path / f"server-{n}.log",
            {f"LLEM_{key.upper()}": value for key, value in env.items()},
        )
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()


REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "benchmarks" / "results"
_FIGURES: dict[str, dict[str, Any]] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("llem")
    group.addoption(
        "--record-figures",
        action="store_true",
        help="write the figures of the load, chaos, stress and perf tiers to benchmarks/results",
    )
    group.addoption(
        "--update-perf-baseline",
        action="store_true",
        help="re-record benchmarks/results/perf_baseline.json instead of checking against it",
    )


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Callable[[str, dict[str, Any]], None]:
    """``figures(name, data)``: report a tier's measurements (see the module docstring)."""

    def record(name: str, data: dict[str, Any]) -> None:
        data = {**data, "machine": machine()}
        _FIGURES[name] = data
        if request.config.getoption("--record-figures"):
            RESULTS_DIR.mkdir(parents=True, exist_ok=True)
            text = json.dumps(data, indent=2, sort_keys=True) + "\n"
            (RESULTS_DIR / f"{name}.json").write_text(text)

    return record


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _FIGURES:
        terminalreporter.section("llem figures")
        for name, data in _FIGURES.items():
            shown = {k: v for k, v in data.items() if k != "machine"}
            terminalreporter.write_line(f"{name}: {json.dumps(shown, sort_keys=True)}")
