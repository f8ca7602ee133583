"""From a session's `AcquisitionRecord` to the result's ``energy.acquisition`` and
``energy.host`` sections, and the warnings about how the readings were taken: throttling by
cause, other processes on the GPUs, limited process detection, failed reads, changed fields,
a sampler slower than asked. Called by `llem_service.energy.report.build_energy`.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone

from llem_client import (
    Acquisition,
    FieldChange,
    HostDomain,
    HostEnergy,
    PowerReadings,
    ProcessDetection,
    ProcessSeen,
    SamplerAcquisition,
    ThrottleCause,
    Throttling,
)
from llem_client import Estimate as WireEstimate

from llem_service.energy.base import CounterMark, DeviceMeta, MeterRecord
from llem_service.energy.figures import Warning
from llem_service.energy.host import RAPL_SYSTEMATIC_REL, ZoneEnergy, zone_energy
from llem_service.energy.processes import ProcessReport
from llem_service.energy.publish import Publisher
from llem_service.energy.sampler import DeviceReadReport
from llem_service.energy.samples import Timeline
from llem_service.energy.throttle import throttle_fractions, throttle_warnings
from llem_service.energy.uncertainty import Estimate, Source
from llem_service.energy.uncertainty import total as sum_estimates
from llem_service.experiment.summary import percentile

#: The sampler's achieved interval is "much longer" than asked beyond these factors.
SLOW_P50_FACTOR = 1.5
SLOW_P99_FACTOR = 5.0


def _gpu(meta: DeviceMeta) -> str:
    return f"GPU {meta.uuid} ({meta.name})"


def build_acquisition(
    record: MeterRecord,
    metas: Sequence[DeviceMeta],
    rows: Mapping[str, Timeline],
    start: CounterMark,
    end: CounterMark,
) -> tuple[Acquisition | None, list[Warning]]:
    """The acquisition section over the measured window ``start``..``end``, and its
    warnings; None for a record without acquisition details."""
    acquired = record.acquisition
    if acquired is None:
        return None, []
    origin = record.marks[0].t_s if record.marks else start.t_s
    report = acquired.sampler
    wanted = {m.uuid for m in metas}
    warnings: list[Warning] = []

    power = []
    for meta in metas:
        probe = acquired.probes[meta.uuid]
        stats = (
            next((d.power for d in report.devices if d.device_uuid == meta.uuid), None)
            if (report)
            else None
        )
        power.append(
            PowerReadings(
                device_uuid=meta.uuid,
                field=probe.power_field,
                field_reason=probe.power_field_reason,
                field_at_end=stats.field_at_end if stats else probe.power_field,
                refresh_period_s=probe.instant_refresh_s or None,
                lag_s=probe.instant_lag_s,
                readings=stats.readings if stats else 0,
                kept=stats.fresh if stats else 0,
                repeats_dropped=stats.repeats if stats else 0,
                nonpositive_dropped=stats.nonpositive if stats else 0,
                failed=stats.failed if stats else 0,
                untrusted_timestamps=stats.untrusted_timestamps if stats else 0,
            )
        )
    changes = [
        FieldChange(
            at_s=c.t_s - origin,
            device_uuid=d.device_uuid,
            field=c.field,
            before=c.before,
            after=c.after,
            reason=c.reason,
        )
        for d in (report.devices if report else [])
        if d.device_uuid in wanted
        for c in d.changes
    ]
    window_s = end.t_s - start.t_s
    throttling = []
    for meta in metas:
        timeline = rows[meta.uuid]
        reasons = [
            r
            for t, r in zip(timeline.t_s, timeline.clock_event_reasons, strict=True)
            if t is not None and start.t_s <= t <= end.t_s
        ]
        fractions = throttle_fractions(
            start.violations_ns.get(meta.uuid, {}),
            end.violations_ns.get(meta.uuid, {}),
            window_s,
            reasons,
        )
        by_cause = {f.cause: ThrottleCause(fraction=f.fraction, source=f.source) for f in fractions}
        throttling.append(Throttling(device_uuid=meta.uuid, **by_cause))
        warnings.extend(throttle_warnings(_gpu(meta), fractions))

    processes: list[ProcessSeen] = []
    detection: list[ProcessDetection] = []
    if report is not None:
        processes, detection, found = _processes(report.processes, metas, start, end)
        warnings.extend(found)
    warnings.extend(_edge_processes(record, metas, report.processes if report else None))
    warnings.extend(_reading_warnings(record, metas, report.devices if report else [], changes))

    section = Acquisition(
        sampler=SamplerAcquisition(
            mode=acquired.sampler_mode,
            pid=acquired.sampler_pid,
            samples_bytes=acquired.samples_bytes,
            process_poll_interval_s=report.processes.poll_interval_s if report else 1.0,
            process_polls=report.processes.polls if report else 0,
        ),
        power=power,
        field_changes=changes,
        throttling=throttling,
        processes=processes,
        process_detection=detection,
    )
    return section, warnings


def _when(wall_s: float) -> datetime:
    return datetime.fromtimestamp(wall_s, timezone.utc)


def _processes(
    report: ProcessReport, metas: Sequence[DeviceMeta], start: CounterMark, end: CounterMark
) -> tuple[list[ProcessSeen], list[ProcessDetection], list[Warning]]:
    wanted = {m.uuid: m for m in metas}
    modes = {d.device_uuid: d for d in report.detection if d.device_uuid in wanted}
    # A poll lists what is there at that instant: a process is "in" the window when a poll
    # within one interval of it listed it.
    slack = report.poll_interval_s
    seen = []
    for s in report.sightings:
        if s.device_uuid not in wanted:
            continue
        full = modes[s.device_uuid].detection == "full"
        seen.append(
            ProcessSeen(
                device_uuid=s.device_uuid,
                pid=s.pid,
                own=(s.pid == report.own_pid) if full else None,
                first_seen_at=_when(s.first_wall_s),
                last_seen_at=_when(s.last_wall_s),
                polls=s.polls,
                max_used_memory_bytes=s.max_used_memory_bytes,
                during_measured_window=s.first_t_s <= end.t_s + slack
                and s.last_t_s >= start.t_s - slack,
            )
        )
    detection = [
        ProcessDetection(device_uuid=d.device_uuid, detection=d.detection, reason=d.reason)
        for d in modes.values()
    ]
    warnings: list[Warning] = []
    for uuid, meta in wanted.items():
        mode = modes.get(uuid)
        others = [p for p in seen if p.device_uuid == uuid and p.own is False]
        if others:
            said = "; ".join(
                f"PID {p.pid} from {p.first_seen_at:%H:%M:%S} to {p.last_seen_at:%H:%M:%S} UTC"
                + (
                    f", up to {p.max_used_memory_bytes / 2**20:.0f} MiB"
                    if p.max_used_memory_bytes is not None
                    else ""
                )
                + (", during the measured window" if p.during_measured_window else "")
                for p in others
            )
            warnings.append(
                (
                    "foreign_process",
                    f"Other processes used {_gpu(meta)} during the experiment ({said}); "
                    "their work is in the energy figures. Measure on a dedicated GPU.",
                )
            )
        elif mode is not None and mode.detection == "limited" and mode.max_listed_at_once > 1:
            pids = sorted({p.pid for p in seen if p.device_uuid == uuid})
            warnings.append(
                (
                    "foreign_process",
                    f"More than one process held {_gpu(meta)} at once during the experiment "
                    f"(PIDs {', '.join(map(str, pids))} as the host numbers them; which is this "
                    "experiment cannot be told from inside its container): another process's "
                    "work is in the energy figures. Measure on a dedicated GPU.",
                )
            )
        if mode is not None and mode.detection != "full":
            warnings.append(
                (
                    "process_detection_limited",
                    f"Other processes on {_gpu(meta)} could not be fully detected: "
                    f"{mode.reason}. (README: 'Other processes on the GPU'.)",
                )
            )
    return seen, detection, warnings


def _edge_processes(
    record: MeterRecord, metas: Sequence[DeviceMeta], polled: ProcessReport | None
) -> list[Warning]:
    """Processes seen only at the marks (the sampler never reported: it was killed)."""
    if polled is not None:
        return []
    out = []
    for meta in metas:
        pids = sorted({p for m in record.marks for p in m.foreign_pids.get(meta.uuid, ())})
        if pids:
            out.append(
                (
                    "foreign_process",
                    f"Other processes ({', '.join(map(str, pids))}) used {_gpu(meta)} at the "
                    "experiment's phase edges; their work is in the energy figures. Measure on "
                    "a dedicated GPU.",
                )
            )
    return out


def _reading_warnings(
    record: MeterRecord,
    metas: Sequence[DeviceMeta],
    devices: Sequence[DeviceReadReport],
    changes: Sequence[FieldChange],
) -> list[Warning]:
    out: list[Warning] = []
    wanted = {m.uuid for m in metas}
    failed: dict[str, int] = {}
    for device in devices:
        if device.device_uuid not in wanted:
            continue
        for name, count in device.failed_reads.items():
            if count:
                failed[name] = failed.get(name, 0) + count
    if failed:
        said = ", ".join(f"{n} {name}" for name, n in sorted(failed.items()))
        out.append(
            (
                "sampler_read_errors",
                f"Some sampler reads failed ({said}); each is a gap in the timeline, never a "
                "0. The counter energy is unaffected; the cross-check and phase split use the "
                "readings that remain.",
            )
        )
    for change in changes:
        if change.field == "power":
            out.append(
                (
                    "power_field_changed",
                    f"At {change.at_s:.1f} s the power readings of GPU {change.device_uuid} "
                    f"changed: {change.reason}.",
                )
            )
    starts = record.round_starts_s
    gaps = sorted(b - a for a, b in itertools.pairwise(starts))
    asked = record.sample_interval_s
    if gaps:
        p50, p99 = percentile(gaps, 0.5), percentile(gaps, 0.99)
        if p50 > SLOW_P50_FACTOR * asked or p99 > SLOW_P99_FACTOR * asked:
            out.append(
                (
                    "sampler_slow",
                    f"The power sampler achieved a median interval of {p50 * 1e3:.1f} ms "
                    f"(p99 {p99 * 1e3:.1f} ms) against the {asked * 1e3:.0f} ms asked: the "
                    "machine is overloaded or NVML answers slowly. The timeline is coarser "
                    "than configured; raise energy.sample_interval_ms or free CPU.",
                )
            )
    return out


def _host_t(mark: CounterMark) -> float:
    return mark.t_s if mark.host_t_s is None else mark.host_t_s


def build_host(
    record: MeterRecord,
    start: CounterMark,
    end: CounterMark,
    output_tokens: int,
    publish: Publisher,
) -> HostEnergy | None:
    """CPU package and DRAM energy over ``start``..``end``, or why it is unavailable; every
    figure an `Estimate` published by ``publish`` (null when too uncertain, and the mean
    power with it)."""
    acquired = record.acquisition
    if acquired is None:
        return None
    host = acquired.host
    if not host.available:
        return HostEnergy(available=False, reason=host.reason)
    polled = acquired.sampler.host_reads if acquired.sampler else []
    energies: list[ZoneEnergy] = []
    # The host's window runs between the marks' own RAPL reads (microseconds after the GPUs').
    t0, t1 = _host_t(start), _host_t(end)
    for zone in host.zones:
        reads = [(_host_t(m), m.host_uj[zone.key]) for m in record.marks if zone.key in m.host_uj]
        reads += [(t, values[zone.key]) for t, values in polled if zone.key in values]
        found = zone_energy(zone, reads, t0, t1)
        if isinstance(found, str):
            return HostEnergy(available=False, reason=found)
        energies.append(found)
    window = t1 - t0
    zones = {e.zone.key: _zone_estimate(e, start.label, end.label) for e in energies}
    total = sum_estimates(zones.values())
    dram = [zones[e.zone.key] for e in energies if e.zone.kind == "dram"]
    energy = publish(total, "Host energy")

    def power(estimate: WireEstimate | None) -> float | None:
        return estimate.value / window if estimate is not None and window > 0 else None

    domains = []
    for e in energies:
        published = publish(zones[e.zone.key], "A RAPL zone's energy")
        domains.append(
            HostDomain(
                name=e.zone.label,
                kind=e.zone.kind,
                zone=e.zone.key,
                energy_j=published,
                mean_power_w=power(published),
                wraps=e.wraps,
            )
        )
    return HostEnergy(
        available=True,
        window_s=window,
        energy_j=energy,
        cpu_energy_j=publish(
            sum_estimates(zones[e.zone.key] for e in energies if e.zone.kind == "package"),
            "Host CPU energy",
        ),
        dram_energy_j=publish(sum_estimates(dram), "Host DRAM energy") if dram else None,
        energy_per_output_token_j=(
            publish(total / output_tokens, "Host energy per output token")
            if output_tokens and energy is not None
            else None
        ),
        mean_power_w=power(energy),
        domains=domains,
        method=(
            "RAPL counters (powercap sysfs) read at the window's edges and about once a second "
            "between (wrap-arounds counted); +/- one 1-ms update of power at each edge and "
            f"1 uJ resolution (random, rapl_edge), +/- {RAPL_SYSTEMATIC_REL:.0%} for RAPL's "
            "own estimate (systematic, rapl_model, assumed); expanded k = 2 as every figure"
        ),
    )


def _zone_estimate(found: ZoneEnergy, start: str, end: str) -> Estimate:
    """One zone's energy with its sources: a read at each edge (its own), and RAPL's model
    (one source for every zone: the CPU's estimate errs the same way in all)."""
    key = found.zone.key
    return Estimate(found.energy_j).with_bound(
        Source("rapl_edge", "random", f"{key}@{start}"), found.edge_bound_j
    ).with_bound(
        Source("rapl_edge", "random", f"{key}@{end}"), found.edge_bound_j
    ) + Estimate.bounded(0.0, Source("rapl_model", "systematic", "rapl"), found.systematic_j)
