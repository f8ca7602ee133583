"""What a session learned about how its readings were taken: the raw material of the result's
``energy.acquisition`` and ``energy.host`` sections (built by `energy.acquisition`)."""

from __future__ import annotations

from dataclasses import dataclass

from llem_service.energy.field_readers import SensorProbe
from llem_service.energy.host import HostProbe
from llem_service.energy.sampler import SamplerMode, SamplerReport


@dataclass(frozen=True)
class AcquisitionRecord:
    """How a session read its GPUs and host.

    Attributes:
        sampler_mode: ``process`` (the default), ``thread`` or ``manual``.
        sampler_pid: The sampler's process, when it ran in one.
        probes: Each GPU's sensor probe at session open, by UUID.
        sampler: The sampler's own report (None when it never reported: it was killed).
        host: Which RAPL zones could be read, or why none.
        samples_bytes: Bytes of samples the sampler wrote to disk.
    """

    sampler_mode: SamplerMode
    sampler_pid: int | None
    probes: dict[str, SensorProbe]
    sampler: SamplerReport | None
    host: HostProbe
    samples_bytes: int = 0
