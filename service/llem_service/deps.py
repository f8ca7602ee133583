"""FastAPI dependencies: how routes and the scheduler reach the service's parts.

The seams (`get_inference_backend`, `get_energy_meter`, `get_reading_source`, `get_model_hub`,
`get_thermometer`, `get_slurm_api`) are providers that tests replace with
``replace(app, provider, lambda: Fake(...))``. Routes and the scheduler both reach them through
`resolve`, so one replacement changes both the API and the experiments. A provider takes
either nothing or the `Settings`.

Not ``app.dependency_overrides``: while that is non-empty, FastAPI derives every route's
dependency tree again on every request, which took a third of the event loop's time in the load
tier, a cost no production server pays and every served test would have measured.
"""

from __future__ import annotations

import hmac
import inspect
import os
import time
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from llem_service.api.admission import Admission
from llem_service.backends.base import InferenceBackend
from llem_service.energy.base import EnergyMeter
from llem_service.energy.null import NullEnergyMeter
from llem_service.energy.readings import ReadingSource
from llem_service.errors import CsrfRejected, NotAuthenticated
from llem_service.executors.slurm_cli import SlurmApi
from llem_service.experiment.results import ResultFiles
from llem_service.jobs.base import JobStore
from llem_service.jobs.events import ChangeFeed
from llem_service.jobs.scheduler import Scheduler
from llem_service.jobs.study_store import StudyStore
from llem_service.models.catalog import ModelCatalog
from llem_service.models.hub import HuggingFaceHub, ModelHub
from llem_service.settings import Settings
from llem_service.studies.cooldown import Thermometer
from llem_service.ui.session import COOKIE_NAME, CSRF_HEADER, SAFE_METHODS, SessionKeys

T = TypeVar("T")


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_store(request: Request) -> JobStore:
    store: JobStore = request.app.state.store
    return store


def get_study_store(request: Request) -> StudyStore:
    """The job store, seen through its study half."""
    store: StudyStore = request.app.state.store
    return store


def get_scheduler(request: Request) -> Scheduler:
    scheduler: Scheduler = request.app.state.scheduler
    return scheduler


def get_feed(request: Request) -> ChangeFeed:
    feed: ChangeFeed = request.app.state.feed
    return feed


def get_results(request: Request) -> ResultFiles:
    results: ResultFiles = request.app.state.results
    return results


def get_admission(request: Request) -> Admission:
    admission: Admission = request.app.state.admission
    return admission


def get_inference_backend(settings: Settings) -> InferenceBackend:
    """The real backend: PyTorch / transformers (imports torch only inside the experiment)."""
    from llem_service.backends.pytorch import PytorchBackend

    return PytorchBackend.from_settings(settings)


def get_energy_meter(settings: Settings) -> EnergyMeter:
    """NVML when the nvidia-ml-py package is installed; otherwise a meter that says why not.

    Whether a driver and GPUs are there is the NVML meter's probe to tell (``/v1/info`` and
    each result say so)."""
    from llem_service.energy.meter import NvmlEnergyMeter
    from llem_service.energy.nvml import NvmlError, load_pynvml

    try:
        load_pynvml()
    except NvmlError as exc:
        return NullEnergyMeter(str(exc))
    return NvmlEnergyMeter(
        sensors=settings.sensor_table, powercap_root=settings.powercap_root or None
    )


def get_model_hub(settings: Settings) -> ModelHub:
    """The Hugging Face Hub, asked with the server's probe timeout."""
    return HuggingFaceHub(settings.hub_probe_timeout_s)


def _app_hub(request: Request) -> ModelHub:
    """The hub as the server sees it; one per app, so its answers are remembered."""
    hub: ModelHub | None = getattr(request.app.state, "hub", None)
    if hub is None:
        hub = request.app.state.hub = resolve(request.app, get_model_hub)
    return hub


def get_model_catalog(
    settings: SettingsDep, hub: Annotated[ModelHub, Depends(_app_hub)]
) -> ModelCatalog:
    return ModelCatalog(settings.model_root_paths, hub)


#: The bearer scheme in the OpenAPI document; the check itself is `require_token`'s, so that
#: a missing and a wrong token get answers of their own.
bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="The server's LLEM_API_TOKEN (LLEM_TOKEN or --token for llem-client).",
)
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="llem"'}


def get_slurm_api(settings: Settings) -> SlurmApi:
    """Slurm through its commands, its status through slurmrestd when LLEM_SLURM_RESTD_URL is
    set (LLEM_EXECUTOR=slurm); tests put a scripted cluster here."""
    from llem_service.executors.slurm_cli import SlurmCli
    from llem_service.executors.slurm_rest import SlurmRestd

    if settings.slurm_restd_url:
        token = settings.slurm_restd_token
        return SlurmRestd(
            settings.slurm_restd_url,
            api=settings.slurm_restd_api,
            token=token.get_secret_value() if token else None,
            user=settings.slurm_restd_user,
            bin_dir=settings.slurm_bin_dir,
            timeout_s=settings.slurm_command_timeout_s,
        )
    return SlurmCli(settings.slurm_bin_dir, timeout_s=settings.slurm_command_timeout_s)


def get_reading_source(settings: Settings) -> ReadingSource | None:
    """What the idle poll reads GPUs with: NVML when nvidia-ml-py is installed, else nothing.

    Whether a driver and GPUs are there shows at the first poll (`IdlePoller.unavailable`)."""
    from llem_service.energy.nvml import NvmlError, load_pynvml
    from llem_service.energy.readings import NvmlReadingSource

    try:
        load_pynvml()
    except NvmlError:
        return None
    return NvmlReadingSource(load_pynvml, os.environ.get("CUDA_VISIBLE_DEVICES"), time.time)


def get_thermometer(settings: Settings) -> Thermometer:
    """GPU temperatures for studies' cooldowns: NVML (without a driver, it says why not)."""
    from llem_service.studies.cooldown import NvmlThermometer

    return NvmlThermometer()


def require_token(
    request: Request,
    settings: SettingsDep,
    # Declares the bearer scheme in the OpenAPI document; the header is read below, so that a
    # dashboard session, a missing token and a wrong one each get their own answer.
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)] = None,
) -> None:
    """The token check of /v1 routes when ``LLEM_API_TOKEN`` is set (constant-time).

    A request passes with ``Authorization: Bearer <token>``, or, without that header, with a
    dashboard session cookie (`llem_service.ui.session`); on a session, a state-changing
    request must also carry the session's CSRF token. A missing and a wrong token get answers
    of their own.
    """
    if settings.api_token is None:
        return
    token = settings.api_token.get_secret_value()
    header = request.headers.get("Authorization")
    session = request.cookies.get(COOKIE_NAME)
    if header is None and session is not None:
        keys = SessionKeys(token)
        if not keys.valid(session, time.time()):
            raise NotAuthenticated(
                "the dashboard session has expired or was made with another token; sign in again",
                headers=_CHALLENGE,
            )
        if request.method not in SAFE_METHODS and not keys.csrf_ok(
            session, request.headers.get(CSRF_HEADER)
        ):
            raise CsrfRejected(
                f"a dashboard session's {request.method} request needs its {CSRF_HEADER} "
                "header; reload the page"
            )
        return
    if not header:
        raise NotAuthenticated(
            "this server requires a bearer token (Authorization: Bearer <token>); none was sent",
            headers=_CHALLENGE,
        )
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), token.encode()
    ):
        raise NotAuthenticated(
            "the bearer token sent is not this server's token", headers=_CHALLENGE
        )


def _replacements(app: FastAPI) -> dict[Callable[..., Any], Callable[..., Any]]:
    table: dict[Callable[..., Any], Callable[..., Any]] | None = getattr(
        app.state, "replacements", None
    )
    if table is None:
        table = app.state.replacements = {}
    return table


def replace(app: FastAPI, provider: Callable[..., T], factory: Callable[..., T]) -> None:
    """Put ``factory`` in ``provider``'s place, for the routes and the scheduler alike.

    ``factory`` takes nothing or the `Settings`, as providers do. Routes resolve per request
    and the scheduler its backend and meter per job; the idle poll's reading source, the
    thermometer and the Slurm API are resolved at start-up, so replace those before it."""
    _replacements(app)[provider] = factory


def resolve(app: FastAPI, provider: Callable[..., T]) -> T:
    """Call ``provider``, or what `replace` put in its place."""
    fn: Callable[..., Any] = _replacements(app).get(provider, provider)
    if inspect.signature(fn).parameters:
        return fn(app.state.settings)  # type: ignore[no-any-return]
    return fn()  # type: ignore[no-any-return]


StoreDep = Annotated[JobStore, Depends(get_store)]
StudyStoreDep = Annotated[StudyStore, Depends(get_study_store)]
SchedulerDep = Annotated[Scheduler, Depends(get_scheduler)]
FeedDep = Annotated[ChangeFeed, Depends(get_feed)]
ResultsDep = Annotated[ResultFiles, Depends(get_results)]


def _meter(request: Request) -> EnergyMeter:
    return resolve(request.app, get_energy_meter)


MeterDep = Annotated[EnergyMeter, Depends(_meter)]
CatalogDep = Annotated[ModelCatalog, Depends(get_model_catalog)]
AdmissionDep = Annotated[Admission, Depends(get_admission)]
