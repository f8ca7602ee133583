"""The energy part of a result: how much, from which source, how far to trust it.

Every energy figure carries ``*_uncertainty_j``: an estimate of its error bound (not a
standard deviation) built from the energy counter's update period and resolution, the window
length and the disagreement between the counter and the integrated power samples. Raw figures
are what the GPUs drew; ``adjusted`` figures subtract the idle baseline and never go below zero.
Names say which one a figure uses.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from llem_client._acquisition import Acquisition, HostEnergy

EnergySource = Literal["nvml_energy_counter", "nvml_power_integral"]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BaselineInfo(_Wire):
    """Idle power of one GPU, subtracted from raw energy to give adjusted energy."""

    device_uuid: str
    power_w: float = Field(ge=0)
    power_uncertainty_w: float = Field(ge=0)
    method: str = Field(description="How it was measured, in words.")
    duration_s: float = Field(gt=0, description="Length of the idle window.")
    measured_at: datetime
    age_s: float = Field(ge=0, description="Age when this experiment started.")
    reused: bool = Field(description="Taken from an earlier experiment on the same GPU.")
    contaminated: bool = Field(
        default=False,
        description="The GPU was not idle while it was taken (see warnings); never reused.",
    )


class DeviceEnergy(_Wire):
    """One GPU over the measured window."""

    device_uuid: str
    name: str
    source: EnergySource
    energy_j: float = Field(ge=0, description="Raw energy.")
    energy_uncertainty_j: float = Field(ge=0)
    adjusted_energy_j: float | None = Field(
        default=None, ge=0, description="Raw minus baseline power x window; null without one."
    )
    integrated_energy_j: float | None = Field(
        default=None, ge=0, description="Integral of the sampled power over the same window."
    )
    counter_vs_integral_rel_diff: float | None = Field(
        default=None, description="(integrated - counter) / counter; null without both."
    )
    mean_power_w: float = Field(ge=0, description="energy_j / window.")
    peak_power_w: float | None = Field(default=None, ge=0, description="Highest sample.")
    power_field: Literal["instant", "average"] | None = Field(
        default=None, description="NVML power reading behind the samples."
    )
    counter_update_period_s: float | None = Field(
        default=None, gt=0, description="Probed update period of the energy counter."
    )


class PhaseEnergy(_Wire):
    """Energy of one phase, summed over the metered GPUs.

    ``method='counter'``: the energy counter read at the phase's edges.
    ``method='timeline_share'``: the measured window's counter energy, shared between its
    prefill, decode and between-batch spans in proportion to the integrated power samples.
    """

    phase: Literal["load", "warmup", "prefill", "decode", "between_batches"]
    duration_s: float = Field(ge=0)
    energy_j: float = Field(ge=0)
    energy_uncertainty_j: float = Field(ge=0)
    method: Literal["counter", "timeline_share"]


class SamplerReport(_Wire):
    """How the power sampler behaved: what was asked, what was achieved, what it cost."""

    interval_s: float = Field(gt=0, description="Requested sampling interval.")
    n_samples: int = Field(ge=0, description="Sampling rounds (each reads every GPU).")
    achieved_interval_p50_s: float | None = Field(default=None, ge=0)
    achieved_interval_p99_s: float | None = Field(default=None, ge=0)
    cost_per_sample_s: float | None = Field(
        default=None, ge=0, description="Mean time one round of reads took."
    )


class EnergyResult(_Wire):
    """Energy of the measured window (every repeat), summed over the metered GPUs."""

    source: EnergySource = Field(
        description="nvml_energy_counter when every GPU has the counter, else the integral."
    )
    energy_j: float = Field(ge=0, description="Raw energy.")
    energy_uncertainty_j: float = Field(ge=0)
    baseline_power_w: float | None = Field(
        default=None, ge=0, description="Summed idle power of the metered GPUs."
    )
    adjusted_energy_j: float | None = Field(default=None, ge=0)
    adjusted_energy_uncertainty_j: float | None = Field(default=None, ge=0)
    energy_per_output_token_j: float | None = Field(
        default=None, ge=0, description="Raw energy / output tokens; null with no output."
    )
    adjusted_energy_per_output_token_j: float | None = Field(default=None, ge=0)
    mean_power_w: float = Field(ge=0, description="Raw energy / window.")
    peak_power_w: float | None = Field(default=None, ge=0, description="Highest summed sample.")
    integrated_energy_j: float | None = Field(default=None, ge=0)
    counter_vs_integral_rel_diff: float | None = Field(
        default=None, description="(integrated - counter) / counter over all GPUs."
    )
    cross_check_threshold: float = Field(gt=0, description="A larger difference warns.")
    window_s: float = Field(ge=0, description="Length of the measured window, meter's clock.")
    devices: list[DeviceEnergy]
    baselines: list[BaselineInfo] = Field(default_factory=list)
    phases: list[PhaseEnergy]
    per_request_energy_j: list[float] = Field(
        description="Steady-state J/token (decode energy / decode tokens) x the request's "
        "output tokens, in workload order."
    )
    per_request_basis: Literal["raw", "adjusted"]
    sampler: SamplerReport
    acquisition: Acquisition | None = Field(
        default=None,
        description="How the readings were taken: sampler, power fields, throttling by cause, "
        "processes seen.",
    )
    host: HostEnergy | None = Field(
        default=None, description="CPU package and DRAM energy (RAPL) over the same window."
    )


class SampleStats(_Wire):
    """Mean, sample standard deviation and a 95% confidence interval (Student's t)."""

    n: int = Field(ge=1)
    mean: float
    std: float | None = Field(default=None, ge=0, description="Null when n is 1.")
    ci95_low: float | None = None
    ci95_high: float | None = None


class RepeatResult(_Wire):
    """One pass of the measured workload."""

    index: int = Field(ge=0)
    duration_s: float = Field(ge=0)
    output_tokens: int = Field(ge=0)
    tokens_per_second: float = Field(ge=0)
    energy_j: float | None = Field(default=None, ge=0)
    adjusted_energy_j: float | None = Field(default=None, ge=0)
    energy_per_output_token_j: float | None = Field(default=None, ge=0)
    adjusted_energy_per_output_token_j: float | None = Field(default=None, ge=0)


class RepeatSummary(_Wire):
    """Every repeat, and the spread of the headline figures across them."""

    per_repeat: list[RepeatResult] = Field(min_length=1)
    tokens_per_second: SampleStats
    energy_per_output_token_j: SampleStats | None = None
    adjusted_energy_per_output_token_j: SampleStats | None = None
