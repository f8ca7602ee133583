"""The headline figures of one result, kept with its job when it succeeds.

The scheduler stores them at the finish of every succeeded job (`JobStore.finish`): the job
list shows tokens/s and J/token from them, and a study's table of thousands of runs is built
from them without reading a result file (`llem_service.studies.table`).
"""

from __future__ import annotations

import statistics

from llem_client import ExperimentResult

Metrics = dict[str, float | None]


def run_metrics(result: ExperimentResult) -> Metrics:
    """The figures of one result that a study table shows (`llem_client.STUDY_METRICS`).

    Per-token uncertainties are the figures' expanded (k = 2) total uncertainties; null where
    the figure was not published (no energy meter, a single-token workload, a figure the run
    could not bound: see the result's warnings).
    """
    energy = result.energy
    itl = result.inter_token_latency_sec
    ttft = result.time_to_first_token_sec
    raw = energy.energy_per_output_token_j if energy is not None else None
    adjusted = energy.adjusted_energy_per_output_token_j if energy is not None else None
    requests = energy.requests if energy is not None else None
    per_request = [e.value for e in requests.energy_j] if requests is not None else []
    return {
        "tokens_per_s": result.avg_tokens_per_second,
        "energy_per_output_token_j": raw.value if raw is not None else None,
        "energy_per_output_token_uncertainty_j": raw.total if raw is not None else None,
        "adjusted_energy_per_output_token_j": adjusted.value if adjusted is not None else None,
        "adjusted_energy_per_output_token_uncertainty_j": (
            adjusted.total if adjusted is not None else None
        ),
        "ttft_p50_s": ttft.p50,
        "ttft_p90_s": ttft.p90,
        "ttft_p99_s": ttft.p99,
        "itl_p50_s": itl.p50 if itl else None,
        "itl_p90_s": itl.p90 if itl else None,
        "itl_p99_s": itl.p99 if itl else None,
        "energy_per_request_j": statistics.fmean(per_request) if per_request else None,
        "mean_power_w": energy.mean_power_w if energy else None,
        "peak_memory_bytes": (
            float(result.peak_memory_allocated_bytes)
            if result.peak_memory_allocated_bytes is not None
            else None
        ),
        "warnings": float(len(result.warnings)),
    }
