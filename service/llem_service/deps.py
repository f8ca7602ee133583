"""FastAPI dependencies: how routes and the worker reach the service's parts.

The seams (`get_inference_backend`, `get_energy_meter`) are providers that tests replace with
``app.dependency_overrides[provider] = lambda: Fake(...)``. The worker resolves them through
the same overrides (`resolve`), so one override changes both the API and the experiments.
A provider takes either nothing or the `Settings`.
"""

from __future__ import annotations

import hmac
import inspect
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from llem_service.backends.base import InferenceBackend
from llem_service.energy.base import EnergyMeter
from llem_service.energy.null import NullEnergyMeter
from llem_service.errors import NotAuthenticated
from llem_service.experiment.results import ResultFiles
from llem_service.jobs.events import ChangeFeed
from llem_service.jobs.store import JobStore
from llem_service.jobs.worker import Worker
from llem_service.models.catalog import ModelCatalog
from llem_service.models.hub import HuggingFaceHub, ModelHub
from llem_service.settings import Settings

T = TypeVar("T")


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_store(request: Request) -> JobStore:
    store: JobStore = request.app.state.store
    return store


def get_worker(request: Request) -> Worker:
    worker: Worker = request.app.state.worker
    return worker


def get_feed(request: Request) -> ChangeFeed:
    feed: ChangeFeed = request.app.state.feed
    return feed


def get_results(request: Request) -> ResultFiles:
    results: ResultFiles = request.app.state.results
    return results


def get_inference_backend(settings: SettingsDep) -> InferenceBackend:
    """The real backend: PyTorch / transformers (imports torch only inside the experiment)."""
    from llem_service.backends.pytorch import PytorchBackend

    return PytorchBackend.from_settings(settings)


def get_energy_meter(settings: SettingsDep) -> EnergyMeter:
    """NVML when the nvidia-ml-py package is installed; otherwise a meter that says why not.

    Whether a driver and GPUs are there is the NVML meter's probe to tell (``/v1/info`` and
    each result say so)."""
    from llem_service.energy.meter import NvmlEnergyMeter
    from llem_service.energy.nvml import NvmlError, load_pynvml

    try:
        load_pynvml()
    except NvmlError as exc:
        return NullEnergyMeter(str(exc))
    return NvmlEnergyMeter()


def get_model_hub(request: Request) -> ModelHub:
    """The hub as the server sees it; one per app, so its answers are remembered."""
    hub: ModelHub | None = getattr(request.app.state, "hub", None)
    if hub is None:
        settings: Settings = request.app.state.settings
        hub = request.app.state.hub = HuggingFaceHub(settings.hub_probe_timeout_s)
    return hub


def get_model_catalog(
    settings: SettingsDep, hub: Annotated[ModelHub, Depends(get_model_hub)]
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


def require_token(
    request: Request,
    settings: SettingsDep,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
) -> None:
    """Bearer-token check on /v1 routes when ``LLEM_API_TOKEN`` is set (constant-time)."""
    if settings.api_token is None:
        return
    expected = settings.api_token.get_secret_value().encode()
    header = request.headers.get("Authorization")
    if not header:
        raise NotAuthenticated(
            "this server requires a bearer token (Authorization: Bearer <token>); none was sent",
            headers=_CHALLENGE,
        )
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
        raise NotAuthenticated(
            "the bearer token sent is not this server's token", headers=_CHALLENGE
        )


def resolve(app: FastAPI, provider: Callable[..., T]) -> T:
    """Call ``provider``, or its override, outside a request (as the worker does)."""
    fn: Callable[..., Any] = app.dependency_overrides.get(provider, provider)
    if inspect.signature(fn).parameters:
        return fn(app.state.settings)  # type: ignore[no-any-return]
    return fn()  # type: ignore[no-any-return]


StoreDep = Annotated[JobStore, Depends(get_store)]
WorkerDep = Annotated[Worker, Depends(get_worker)]
FeedDep = Annotated[ChangeFeed, Depends(get_feed)]
ResultsDep = Annotated[ResultFiles, Depends(get_results)]
MeterDep = Annotated[EnergyMeter, Depends(get_energy_meter)]
CatalogDep = Annotated[ModelCatalog, Depends(get_model_catalog)]
