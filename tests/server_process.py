"""The llem server as a real, separate process, with the scripted fake backend injected.

``python -m tests.server_process`` builds the real app from ``LLEM_*`` settings (so every
setting works as in production), injects `tests.fakes.ScriptedBackend` and
the real NVML meter over a scripted GPU (`tests.fakes.fake_meter`) through
`llem_service.deps.replace`, and serves it with uvicorn
on ``LLEM_HOST``/``LLEM_PORT``. The load, chaos, stress and perf tiers drive it over loopback
and send it real signals; `ServerProcess` starts, kills and restarts it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ServerProcess:
    """One server process on a data directory; `restart` starts a new one on the same data.

    Args:
        data_dir: The server's ``LLEM_DATA_DIR``.
        pid_dir: Where the scripted backend writes the pids of experiment processes.
        log_path: The server's stdout and stderr go here.
        env: Extra ``LLEM_*`` settings.
    """

    def __init__(
        self, data_dir: Path, pid_dir: Path, log_path: Path, env: dict[str, str] | None = None
    ) -> None:
        self.data_dir = data_dir
        self.pid_dir = pid_dir
        self.log_path = log_path
        self.env = dict(env or {})
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        pid_dir.mkdir(parents=True, exist_ok=True)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout_s: float = 30) -> None:
        env = {
            **os.environ,
            "LLEM_HOST": "127.0.0.1",
            "LLEM_PORT": str(self.port),
            "LLEM_DATA_DIR": str(self.data_dir),
            "LLEM_LOG_LEVEL": "warning",
            "LLEM_TEST_PID_DIR": str(self.pid_dir),
            # GPU locks of the test's own: the scripted GPUs' UUIDs are the same in every test.
            "LLEM_GPU_LOCK_DIR": str(self.data_dir / "gpu-locks"),
            **self.env,
        }
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.server_process"],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while not self.healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"the server did not start:\n{self.log_path.read_text()}")
            time.sleep(0.05)

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def kill(self) -> None:
        """SIGKILL: the server gets no chance to clean up, as in a crash or an OOM kill."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM: a graceful shutdown."""
        self._end(signal.SIGTERM)

    def restart(self) -> None:
        self.start()

    def _end(self, sig: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=60)
        if self._log is not None:
            self._log.close()
            self._log = None


def main() -> None:
    from llem_service.app import create_app
    from llem_service.deps import (
        get_energy_meter,
        get_inference_backend,
        get_model_hub,
        get_reading_source,
        replace,
    )
    from llem_service.serve import make_server
    from llem_service.settings import Settings

    from tests.fakes import (
        FakeHub,
        MultiGpuBackend,
        ScriptedBackend,
        fake_gpus_meter,
        fake_meter,
        fake_readings,
    )

    settings = Settings()
    app = create_app(settings)
    pid_dir = os.environ.get("LLEM_TEST_PID_DIR")
    backend: ScriptedBackend = ScriptedBackend(pid_dir=pid_dir)
    # LLEM_TEST_GPU_CUE_FILE: while that file exists the scripted GPU fails as
    # LLEM_TEST_GPU_CUE says ("lost" or "power_not_supported"), for the chaos tier.
    cue_file = os.environ.get("LLEM_TEST_GPU_CUE_FILE")
    cue = os.environ.get("LLEM_TEST_GPU_CUE", "lost")
    meter = fake_meter(power_w=250.0, cue_file=cue_file, cue=cue)
    # LLEM_TEST_GPUS=n: a host of n scripted GPUs, experiments on the GPUs of their grants
    # (logged to LLEM_TEST_GPU_LOG_DIR).
    if os.environ.get("LLEM_TEST_GPUS"):
        meter = fake_gpus_meter(int(os.environ["LLEM_TEST_GPUS"]), power_w=250.0)
        backend = MultiGpuBackend(
            pid_dir=pid_dir,
            gpu_log_dir=os.environ.get("LLEM_TEST_GPU_LOG_DIR"),
            lock_dir=str(settings.gpu_lock_dir),
        )
    # LLEM_TEST_REAL_BACKEND=1: the real PyTorch backend (tiny models built by the tests).
    if os.environ.get("LLEM_TEST_REAL_BACKEND") != "1":
        replace(app, get_inference_backend, lambda: backend)
    replace(app, get_energy_meter, lambda: meter)
    readings = fake_readings()
    replace(app, get_reading_source, lambda: readings)
    hub = FakeHub()
    replace(app, get_model_hub, lambda: hub)
    make_server(app, settings, access_log=False).run()


if __name__ == "__main__":
    main()
