"""``/v1/info`` and ``/healthz``."""

from __future__ import annotations

from fastapi import APIRouter
from llem_client import SCHEMA_VERSION, ServiceInfo, __version__

from llem_service.api.problems import problem_responses
from llem_service.deps import MeterDep, StoreDep, WorkerDep

router = APIRouter(tags=["service"])
health_router = APIRouter(tags=["service"])


@router.get("/info", response_model=ServiceInfo, responses=problem_responses(401))
def get_info(meter: MeterDep, store: StoreDep, worker: WorkerDep) -> ServiceInfo:
    """What this service is and has: versions, devices, energy meter, queue."""
    probe = meter.probe()
    return ServiceInfo(
        service_version=__version__,
        schema_version=SCHEMA_VERSION,
        backends=["pytorch"],
        devices=list(probe.devices),
        energy_meter=probe.name,
        energy_meter_available=probe.available,
        energy_meter_reason=probe.reason,
        cuda_device_order=probe.cuda_device_order,
        device_order_note=probe.device_order_note,
        queue_length=store.queue_length(),
        running_job=worker.current_job_id,
    )


@health_router.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness. Touches no GPU and no store: answers while an experiment runs."""
    return {"status": "ok"}
