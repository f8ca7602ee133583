"""``/v1/info`` and ``/healthz``."""

from __future__ import annotations

import time
from datetime import datetime, timezone

from fastapi import APIRouter
from llem_client import (
    SCHEMA_VERSION,
    BaselineList,
    CachedBaseline,
    GpuSlot,
    ServiceInfo,
    __version__,
)

from llem_service.api.problems import problem_responses
from llem_service.deps import AdmissionDep, MeterDep, SchedulerDep, StoreDep
from llem_service.energy.uncertainty import COVERAGE_FACTOR

router = APIRouter(tags=["service"])
health_router = APIRouter(tags=["service"])


@router.get("/info", response_model=ServiceInfo, responses=problem_responses(401))
def get_info(
    meter: MeterDep, store: StoreDep, scheduler: SchedulerDep, admission: AdmissionDep
) -> ServiceInfo:
    """What this service is and has: versions, devices, energy meter, queue, executor, GPUs."""
    probe = meter.probe()
    reason = admission.unavailable_reason()
    running = list(scheduler.running_job_ids)
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
        running_job=next(iter(running), None),
        running_jobs=running,
        executor=admission.executor,
        executor_available=reason is None,
        executor_reason=reason,
        gpus=[
            GpuSlot(
                uuid=state.uuid,
                job_id=state.job_id,
                held_by=(state.held_by.owner or "another process") if state.held_by else None,
            )
            for state in admission.gpu_states()
        ],
        max_gpus_per_experiment=admission.max_gpus(),
    )


@router.get("/baselines", response_model=BaselineList, responses=problem_responses(401))
def get_baselines(scheduler: SchedulerDep) -> BaselineList:
    """The idle baselines the service keeps (one per GPU at most), newest measurement each."""
    now = time.time()
    return BaselineList(
        items=[
            CachedBaseline(
                device_uuid=b.device_uuid,
                power_w=b.power_w,
                random_uncertainty_w=COVERAGE_FACTOR * b.random_std_w,
                drift_bound_w=b.drift_bound_w,
                temperature_c=b.temperature_c,
                method=b.method,
                duration_s=b.duration_s,
                measured_at=datetime.fromtimestamp(b.measured_at, timezone.utc),
                age_s=max(0.0, now - b.measured_at),
            )
            for b in scheduler.baselines.all()
        ]
    )


@health_router.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness. Touches no GPU and no store: answers while an experiment runs."""
    return {"status": "ok"}
