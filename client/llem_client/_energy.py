"""The energy part of a result: how much, from which source, how far to trust it.

Every published energy number is an `Estimate`: a value with a **random** and a
**systematic** uncertainty and their quadrature sum, the **total**. Each is an expanded
uncertainty with coverage factor k = 2: the truth lies within ``value +/- total`` in about 95%
of runs (the project's Monte-Carlo coverage test holds every figure to at least 95% over
scripted GPUs with realistic sensors). Random terms change from run to run (counter
quantisation at the window's edges, sampling, the spread of repeated passes); systematic
terms do not average away (the sensor's stated accuracy for its GPU generation, the idle
baseline's drift, part-time sensing of periodic work, the attribution models).
``EnergyResult.uncertainty`` lists each term's contribution to the headline J/token.

Raw figures are what the GPUs drew; ``adjusted`` figures subtract the idle baseline (power x
time) and can be slightly negative when the GPUs drew no more than idle: the uncertainty then
covers zero. A figure the run could not support is ``null``, with a warning that says how to
get it; never a number with an enormous uncertainty.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from llem_client._acquisition import Acquisition, HostEnergy
from llem_client._estimate import Estimate

EnergySource = Literal["nvml_energy_counter", "nvml_power_integral"]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UncertaintyTerm(_Wire):
    """One source of error and how much it contributes to the headline figure."""

    name: str = Field(description="Stable identifier, e.g. counter_quantisation, sensor_gain.")
    kind: Literal["random", "systematic"]
    contribution: float = Field(
        ge=0, description="Expanded (k = 2) uncertainty this term alone adds, headline's unit."
    )
    share: float = Field(ge=0, le=1, description="Fraction of the total variance.")
    description: str


class UncertaintyBudget(_Wire):
    """What the headline J/token's uncertainty is made of, largest term first. Terms add in
    quadrature (independent sources); correlated parts of one source are added first."""

    figure: Literal["adjusted_energy_per_output_token_j", "energy_per_output_token_j"]
    estimate: Estimate | None = Field(
        description="The figure as published; null when it was not (see the warnings), the "
        "terms then say what made it too uncertain."
    )
    random: float = Field(ge=0, description="The figure's random part, as in an Estimate.")
    systematic: float = Field(ge=0, description="Its systematic part.")
    total: float = Field(ge=0, description="sqrt(random^2 + systematic^2).")
    coverage_factor: float = Field(gt=0, description="k: each half-width is k x standard.")
    terms: list[UncertaintyTerm]


class SensorAccuracy(_Wire):
    """What the uncertainty assumes about one GPU's power sensor, from the accuracy table
    (``LLEM_SENSOR_ACCURACY`` overrides it)."""

    generation: str = Field(description="Table row the GPU's name matched.")
    gain_rel: float = Field(ge=0, description="Relative accuracy bound of readings.")
    offset_w: float = Field(ge=0, description="Absolute accuracy bound of power readings.")
    sensed_fraction: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Part of each counter period the sensor integrates; null when unknown "
        "(treated as part-time).",
    )
    source: str = Field(description="Where the figures come from.")


class BaselineInfo(_Wire):
    """Idle power of one GPU, subtracted from raw energy to give adjusted energy."""

    device_uuid: str
    power_w: Estimate | None = Field(
        description="Null when too uncertain to publish (see the warnings); adjusted figures "
        "are then null too."
    )
    method: str = Field(description="How it was measured, in words.")
    duration_s: float = Field(gt=0, description="Length of the idle window.")
    measured_at: datetime
    age_s: float = Field(ge=0, description="Age when this experiment started.")
    reused: bool = Field(description="Taken from an earlier experiment on the same GPU.")
    contaminated: bool = Field(
        default=False,
        description="The GPU was not idle while it was taken (see warnings); never reused.",
    )
    settle_s: float = Field(ge=0, description="Waited for idle power to settle before it.")
    settled: bool = Field(description="False when the wait hit its cap (see warnings).")
    trend_w_per_s: float | None = Field(
        default=None, description="Slope of idle power over the window."
    )
    drift_bound_w: float = Field(
        default=0.0, ge=0, description="How far idle power may still move (trend x horizon)."
    )
    reuse_bound_w: float = Field(
        default=0.0,
        ge=0,
        description="Reused only: how far idle power may have moved since it was taken, from "
        "the GPU's temperature now against then (counted in power_w's systematic part).",
    )
    temperature_c: float | None = Field(default=None, description="GPU temperature, mean.")
    temperature_trend_c_per_s: float | None = None
    power_limit_w: float | None = Field(default=None, ge=0)
    driver_version: str | None = None
    after_power_w: Estimate | None = Field(
        default=None,
        description="Idle power measured again after the window (when asked); null when not "
        "asked or too uncertain to publish.",
    )
    drift_w: float | None = Field(
        default=None,
        description="after_power_w - power_w, counted in the uncertainty; null unless both "
        "are published.",
    )


class DeviceEnergy(_Wire):
    """One GPU over the measured window."""

    device_uuid: str
    name: str
    source: EnergySource
    energy_j: Estimate | None = Field(
        description="Raw energy; null when too uncertain to publish (see the warnings)."
    )
    adjusted_energy_j: Estimate | None = Field(
        default=None, description="Raw minus baseline power x window; null without one."
    )
    integrated_energy_j: float | None = Field(
        default=None,
        ge=0,
        description="Integral of the sampled power over the same window: the cross-check of "
        "the counter, null unless the counter's energy_j is published.",
    )
    counter_vs_integral_rel_diff: float | None = Field(
        default=None,
        description="(integrated - counter) / counter; null unless both are published.",
    )
    mean_power_w: float | None = Field(
        default=None, ge=0, description="energy_j / window; null when energy_j is."
    )
    peak_power_w: float | None = Field(default=None, ge=0, description="Highest sample.")
    power_field: Literal["instant", "average"] | None = Field(
        default=None, description="NVML power reading behind the samples."
    )
    counter_update_period_s: float | None = Field(
        default=None, gt=0, description="Probed update period of the energy counter."
    )
    sensor: SensorAccuracy


PhaseMethod = Literal[
    "counter", "prefill_passes", "window_minus_prefill", "gap_power", "timeline_share"
]


class PhaseEnergy(_Wire):
    """Energy of one phase, summed over the metered GPUs.

    - ``counter``: the energy counter read at the phase's edges (load, warmup).
    - ``prefill_passes``: the workload's batches run again after the window with one output
      token (the counter over many passes, as optimum-benchmark does), per pass x repeats.
    - ``window_minus_prefill``: decode = the window's counter energy - prefill - gaps.
    - ``gap_power``: time between batches x the sampled power there. Where the gaps are too
      short for the power readings to place, there is no ``between_batches`` phase: decode
      keeps them (its ``duration_s`` includes them), and the phases still add up.

    There is no ``load`` phase when the model was reused (``model_reused_from``).
    - ``timeline_share``: the fallback without prefill passes: the window's counter energy
      shared in proportion to the integrated power samples, with an uncertainty that counts
      the power field's refresh period and lag.

    ``energy_j`` is null when the phase cannot be bounded honestly (see warnings).
    """

    phase: Literal["load", "warmup", "prefill", "decode", "between_batches"]
    duration_s: float = Field(ge=0)
    energy_j: Estimate | None
    method: PhaseMethod


class PrefillPasses(_Wire):
    """The extra prefill-only passes after the window (not part of it): the workload's own
    batches with one output token, repeated until the counter spans many update periods."""

    passes: int = Field(ge=1)
    duration_s: float = Field(ge=0, description="Wall time of all passes.")
    energy_j: Estimate = Field(description="Raw counter energy of all passes.")
    energy_per_pass_j: Estimate
    prefill_time_per_pass_s: float = Field(ge=0, description="Batch time of one pass.")
    window_prefill_time_per_repeat_s: float = Field(
        ge=0, description="Prefill time of one repeat inside the window, for comparison."
    )


class PercentileEstimates(_Wire):
    """Distribution of a per-request figure over the requests (linear interpolation)."""

    mean: Estimate
    p50: Estimate
    p90: Estimate
    p99: Estimate


class SteadyStateRequests(_Wire):
    """ML.ENERGY's per-request figure, for comparison: decode J/token x the request's output
    tokens. The J/token is the window's decode energy over every decoding step's tokens
    (prefill excluded), the steps of a batch draining as its requests finish included: a mean
    over the whole decode phase, not a full batch's steady rate. It does not add up to the
    window's energy."""

    method: Literal["steady_state_j_per_token_x_tokens"] = "steady_state_j_per_token_x_tokens"
    energy_per_output_token_j: Estimate
    energy_j: list[Estimate]


class RequestEnergy(_Wire):
    """The measured window's energy attributed to its requests (``per_step_split``): each
    batch's prefill energy split by prompt tokens, each decoding step's energy (the batch's
    decode energy in proportion to step time) split among the requests still generating, the
    time between batches split equally among the next batch's requests. Raw values add up to
    the window's raw energy, adjusted values to its adjusted energy. In workload order, every
    repeat."""

    method: Literal["per_step_split"] = "per_step_split"
    description: str
    energy_j: list[Estimate]
    adjusted_energy_j: list[Estimate] | None = None
    energy_per_output_token_j: PercentileEstimates
    adjusted_energy_per_output_token_j: PercentileEstimates | None = None
    steady_state: SteadyStateRequests | None = None


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
    window_s: float = Field(ge=0, description="Length of the measured window, meter's clock.")
    energy_j: Estimate | None = Field(description="Raw energy.")
    adjusted_energy_j: Estimate | None = None
    baseline_power_w: Estimate | None = Field(
        default=None, description="Summed idle power of the metered GPUs."
    )
    energy_per_output_token_j: Estimate | None = Field(
        default=None, description="Raw energy / output tokens; null with no output."
    )
    adjusted_energy_per_output_token_j: Estimate | None = None
    uncertainty: UncertaintyBudget | None = Field(
        default=None, description="What the headline J/token's uncertainty is made of."
    )
    mean_power_w: float | None = Field(
        default=None, ge=0, description="energy_j / window; null when energy_j is."
    )
    peak_power_w: float | None = Field(default=None, ge=0, description="Highest summed sample.")
    integrated_energy_j: float | None = Field(
        default=None,
        ge=0,
        description="Integral of the sampled power over all GPUs: the counters' cross-check, "
        "null unless every GPU has a counter and energy_j is published.",
    )
    counter_vs_integral_rel_diff: float | None = Field(
        default=None,
        description="(integrated - counter) / counter over all GPUs; null unless both are "
        "published.",
    )
    cross_check_threshold: float = Field(gt=0, description="A larger difference warns.")
    devices: list[DeviceEnergy]
    baselines: list[BaselineInfo] = Field(default_factory=list)
    phase_split: Literal["prefill_passes", "timeline_share"] = Field(
        description="How the window was split into prefill and decode."
    )
    phases: list[PhaseEnergy]
    prefill_passes: PrefillPasses | None = None
    requests: RequestEnergy | None = Field(
        default=None, description="Per-request energy; null when the run cannot support it."
    )
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
    energy_j: Estimate | None = None
    adjusted_energy_j: Estimate | None = None
    energy_per_output_token_j: Estimate | None = None
    adjusted_energy_per_output_token_j: Estimate | None = None


class RepeatSummary(_Wire):
    """Every repeat, the spread of the headline figures across them, and why they stopped."""

    per_repeat: list[RepeatResult] = Field(min_length=1)
    tokens_per_second: SampleStats
    energy_per_output_token_j: SampleStats | None = None
    adjusted_energy_per_output_token_j: SampleStats | None = None
    stop_reason: Literal["fixed", "target_reached", "max_reached"] = Field(
        default="fixed",
        description="fixed: repeats was a number; otherwise whether the 95% CI reached "
        "repeats.target_ci_rel of the mean or repeats.max came first.",
    )
    stop_statistic: (
        Literal[
            "adjusted_energy_per_output_token_j", "energy_per_output_token_j", "tokens_per_second"
        ]
        | None
    ) = Field(default=None, description="The figure whose interval decided (object form).")
    achieved_ci_rel: float | None = Field(
        default=None, ge=0, description="Half-width of that figure's 95% CI / its mean."
    )
