"""The app factory. Nothing is built at import time: ``create_app(settings)`` builds one app,
so tests build as many as they like, and uvicorn calls `create_app_from_env` with --factory.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from llem_client import ExperimentResult, __version__

from llem_service.api import experiments, info, models
from llem_service.api.docs import install_docs
from llem_service.api.limits import BodySizeLimit
from llem_service.api.methods import AllowHeader
from llem_service.api.openapi import build_openapi, operation_id
from llem_service.api.problems import install_error_handlers
from llem_service.deps import get_energy_meter, get_inference_backend, require_token, resolve
from llem_service.executors.local import ExperimentRunner, ProcessRunner
from llem_service.experiment.results import ResultFiles, job_metrics
from llem_service.jobs.events import ChangeFeed
from llem_service.jobs.shutdown import Shutdown
from llem_service.jobs.store import JobStore, SqliteJobStore
from llem_service.jobs.worker import Worker
from llem_service.settings import Settings

_log = logging.getLogger("llem.service")

DESCRIPTION = """Measures the energy and speed of LLM inference on this host's GPUs.

Every `/v1` route needs `Authorization: Bearer <token>` when the server has `LLEM_API_TOKEN`.
Errors are `application/problem+json` (RFC 9457). Job routes take a job id or a unique prefix
of one."""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service. The store, worker and feed start with the app's lifespan."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # CUDA numbers GPUs fastest-first unless told otherwise, NVML by PCI bus: one order for
        # both (inherited by every experiment process) keeps /v1/info's indices true.
        os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        store = SqliteJobStore(settings.db_path)
        interrupted = store.recover_interrupted()
        if interrupted:
            _log.warning("marked %d interrupted job(s) failed: %s", len(interrupted), interrupted)

        def make_runner() -> ExperimentRunner:
            return ProcessRunner(
                resolve(app, get_inference_backend),
                resolve(app, get_energy_meter),
                cancel_grace_s=settings.cancel_grace_s,
                timeout_s=settings.experiment_timeout_s or None,
            )

        feed = ChangeFeed()
        worker = Worker(store, ResultFiles(settings.results_dir), feed, make_runner)
        app.state.store, app.state.feed, app.state.worker = store, feed, worker
        app.state.results = worker.results
        app.state.shutdown = Shutdown(worker, feed)
        await asyncio.to_thread(_backfill_metrics, store, worker.results)
        worker.start()
        try:
            yield
        finally:
            await app.state.shutdown.wait()
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
    install_error_handlers(app)
    app.include_router(info.health_router)
    v1 = [Depends(require_token)]
    app.include_router(experiments.router, prefix="/v1", dependencies=v1)
    app.include_router(models.router, prefix="/v1", dependencies=v1)
    app.include_router(info.router, prefix="/v1", dependencies=v1)
    install_docs(app)

    app.add_middleware(AllowHeader, routes=app.router.routes)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)

    app.openapi = lambda: build_openapi(app, settings)  # type: ignore[method-assign]
    return app


def _backfill_metrics(store: JobStore, results: ResultFiles) -> None:
    """Headline figures for succeeded jobs stored before the store kept them."""
    for job_id, path in store.succeeded_without_metrics():
        try:
            result = ExperimentResult.model_validate_json(results.read_bytes(path or ""))
        except (OSError, ValueError) as exc:
            _log.warning("job %s: no figures for listings (%s)", job_id, exc)
            continue
        store.record_metrics(job_id, job_metrics(result))


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
