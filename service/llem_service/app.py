"""The app factory. Nothing is built at import time: ``create_app(settings)`` builds one app,
so tests build as many as they like, and uvicorn calls `create_app_from_env` with --factory.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from llem_client import __version__

from llem_service.api import experiments, info, metrics, models, studies
from llem_service.api.admission import Admission
from llem_service.api.docs import install_docs
from llem_service.api.limits import BodySizeLimit
from llem_service.api.methods import AllowHeader
from llem_service.api.openapi import build_openapi, operation_id
from llem_service.api.problems import install_error_handlers
from llem_service.deps import (
    get_energy_meter,
    get_inference_backend,
    get_reading_source,
    get_slurm_api,
    get_thermometer,
    require_token,
    resolve,
)
from llem_service.executors.base import Executor
from llem_service.executors.local import LocalExecutor
from llem_service.executors.slurm import SlurmExecutor, options_from_settings
from llem_service.experiment.results import ResultFiles
from llem_service.jobs.events import ChangeFeed
from llem_service.jobs.gpu_locks import GpuLocks
from llem_service.jobs.gpus import GpuPool, PerGpuPool, SlotPool, WholeHostPool
from llem_service.jobs.overlaps import OverlapTracker
from llem_service.jobs.scheduler import Scheduler
from llem_service.jobs.shutdown import Shutdown
from llem_service.jobs.store import SqliteJobStore
from llem_service.monitoring.executor import MonitoredExecutor
from llem_service.monitoring.gpus import GpuTelemetry, IdlePoller
from llem_service.monitoring.http import RequestMetrics
from llem_service.monitoring.registry import ServiceMetrics
from llem_service.settings import Settings
from llem_service.studies.cooldown import StudyCooldown
from llem_service.ui import routes as ui

_log = logging.getLogger("llem.service")

DESCRIPTION = """Measures the energy and speed of LLM inference on this host's GPUs.

Every `/v1` route needs `Authorization: Bearer <token>` when the server has `LLEM_API_TOKEN`.
Errors are `application/problem+json` (RFC 9457). Job routes take a job id or a unique prefix
of one."""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service. The store, scheduler and feed start with the app's lifespan."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # CUDA numbers GPUs fastest-first unless told otherwise, NVML by PCI bus: one order for
        # both (inherited by every experiment process) keeps /v1/info's indices true.
        os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        store = SqliteJobStore(settings.db_path)
        poller = _idle_poller(app, settings, telemetry)
        scheduling = _slurm_scheduling if settings.executor == "slurm" else _local_scheduling
        build_executor, pool, admission, overlaps = scheduling(app, settings)

        def make_executor() -> Executor:
            return MonitoredExecutor(build_executor(), telemetry, poller)

        feed = ChangeFeed()
        scheduler = Scheduler(
            store,
            ResultFiles(settings.results_dir),
            feed,
            make_executor,
            pool,
            before_run=StudyCooldown(store, resolve(app, get_thermometer)),
            backfill_limit=_backfill_limit(settings, pool),
            overlaps=overlaps,
        )
        app.state.store, app.state.feed, app.state.scheduler = store, feed, scheduler
        app.state.admission = admission
        app.state.results = scheduler.results
        app.state.poller = poller
        app.state.shutdown = Shutdown(scheduler, feed)
        service_metrics.watch_jobs(store, lambda: scheduler.running_job_ids)
        scheduler.finished_listeners.append(service_metrics.job_finished)
        scheduler.start()
        if poller is not None:
            poller.start()
        try:
            yield
        finally:
            # Begun already if the server was signalled (llem_service.serve); else now.
            await app.state.shutdown.wait()
            if poller is not None:
                poller.stop()
            service_metrics.unwatch_jobs()
            store.close()

    app = FastAPI(
        title="llem",
        version=__version__,
        summary="Energy and speed of LLM inference, measured on this host's GPUs.",
        description=DESCRIPTION,
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
        docs_url=None,  # served with local assets by install_docs
        redoc_url=None,
    )
    app.state.settings = settings
    # Live GPU readings outlive the lifespan's parts: /metrics may be scraped before start-up.
    telemetry = GpuTelemetry(stale_after_s=max(60.0, 3 * settings.metrics_poll_s))
    service_metrics = app.state.metrics = ServiceMetrics(telemetry)
    install_error_handlers(app)
    app.include_router(info.health_router)
    v1 = [Depends(require_token)]
    app.include_router(experiments.router, prefix="/v1", dependencies=v1)
    app.include_router(studies.router, prefix="/v1", dependencies=v1)
    app.include_router(models.router, prefix="/v1", dependencies=v1)
    app.include_router(info.router, prefix="/v1", dependencies=v1)
    app.include_router(metrics.router)
    app.mount("/ui/static", ui.static_files(), name="ui-static")
    app.include_router(ui.router)
    install_docs(app)

    app.add_middleware(AllowHeader, routes=app.router.routes)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=service_metrics)

    app.openapi = lambda: build_openapi(app, settings)  # type: ignore[method-assign]
    return app


def _local_scheduling(
    app: FastAPI, settings: Settings
) -> tuple[Callable[[], Executor], GpuPool, Admission, OverlapTracker]:
    """Experiments in processes on this host: one per GPU set when NVML sees GPUs, otherwise
    one at a time with the whole host."""
    host = socket.gethostname()
    probe = resolve(app, get_energy_meter).probe()
    uuids = [device.uuid for device in probe.devices] if probe.available else []
    per_gpu = PerGpuPool(uuids, GpuLocks(settings.gpu_lock_dir)) if uuids else None
    if per_gpu is not None:
        _log.info("granting %d GPU(s), locks in %s", per_gpu.total, settings.gpu_lock_dir)
    else:
        _log.info("no GPU seen (%s): one experiment at a time", probe.reason or "none")

    def make_executor() -> Executor:
        return LocalExecutor(
            resolve(app, get_inference_backend),
            resolve(app, get_energy_meter),
            cancel_grace_s=settings.cancel_grace_s,
            timeout_s=settings.experiment_timeout_s or None,
            lock_fds=per_gpu.lock_fds if per_gpu else None,
        )

    admission = Admission(
        executor="local",
        unavailable_reason=per_gpu.unavailable_reason if per_gpu else lambda: None,
        max_gpus=lambda: per_gpu.total if per_gpu else None,
        gpu_states=per_gpu.states if per_gpu else lambda: [],
    )
    overlaps = OverlapTracker(host, per_gpu.neighbours if per_gpu else None)
    return make_executor, per_gpu or WholeHostPool(), admission, overlaps


def _slurm_scheduling(
    app: FastAPI, settings: Settings
) -> tuple[Callable[[], Executor], GpuPool, Admission, OverlapTracker]:
    """Experiments as Slurm batch jobs: Slurm grants the GPUs; llem hands it at most
    ``slurm_max_submitted`` jobs at once."""
    options = options_from_settings(settings)
    executor = SlurmExecutor(
        resolve(app, get_slurm_api),
        options,
        backend=lambda: resolve(app, get_inference_backend),
        meter=lambda: resolve(app, get_energy_meter),
        timeout_s=settings.experiment_timeout_s or None,
        cancel_grace_s=settings.cancel_grace_s,
    )
    _log.info("experiments run as Slurm jobs; job directories in %s", options.shared_dir)
    partition = f"partition {options.partition!r}" if options.partition else "default partition"
    admission = Admission(
        executor="slurm",
        unavailable_reason=executor.unavailable_reason,
        max_gpus=executor.max_gpus,
        where=f"a node of Slurm's {partition}",
    )
    pool = SlotPool(settings.slurm_max_submitted)
    return lambda: executor, pool, admission, OverlapTracker(socket.gethostname())


def _backfill_limit(settings: Settings, pool: GpuPool) -> int:
    if settings.backfill_limit is not None:
        return settings.backfill_limit
    return pool.total if isinstance(pool, PerGpuPool) else 0


def _idle_poller(app: FastAPI, settings: Settings, telemetry: GpuTelemetry) -> IdlePoller | None:
    """The idle GPU poll, unless it is switched off or nothing can read the GPUs."""
    if settings.metrics_poll_s <= 0:
        return None
    source = resolve(app, get_reading_source)
    if source is None:
        return None
    return IdlePoller(source, telemetry, settings.metrics_poll_s)


def create_app_from_env() -> FastAPI:
    """For ``uvicorn --factory llem_service.app:create_app_from_env``.

    uvicorn binds the address given to it, not ``LLEM_HOST``; this refuses what it can see
    (``LLEM_HOST`` non-loopback without a token). ``llem-service`` is the checked entry point,
    and the one that ends event streams and stops the experiment at once on SIGTERM.
    """
    settings = Settings()
    problem = settings.exposure_problem()
    if problem is not None:
        raise RuntimeError(problem)
    return create_app(settings)
