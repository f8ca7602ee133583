"""The experiment configuration: what to run and how to measure it.

`ExperimentConfig` is the request body of ``POST /v1/experiments`` and the ``config`` of every
result. Every section has defaults, so ``{"model": "gpt2"}`` is a complete config. Unknown keys
are rejected everywhere (``extra="forbid"``) so that a typo never silently falls back to a
default. Cross-field rules name the fields they involve.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    model_validator,
)

from llem_client._version import SCHEMA_VERSION

PositiveInt = Annotated[int, Field(gt=0)]

#: C0 and C1 control characters (and DEL). Labels and model names are printed by every client
#: and logged by the server: an escape sequence in one user's job name must not reach another
#: user's terminal, nor a newline split the service's log.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _no_control_characters(text: str) -> str:
    found = CONTROL_CHARACTERS.search(text)
    if found is not None:
        raise ValueError(
            f"control character {found.group()!r} at position {found.start()} is not allowed"
        )
    return text


#: A string without control characters; the pattern tells generated clients the same.
PlainText = Annotated[
    str,
    AfterValidator(_no_control_characters),
    Field(json_schema_extra={"pattern": "^[^\\x00-\\x1f\\x7f-\\x9f]*$"}),
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticPrompts(_Section):
    """Built-in synthetic prompts: each exactly ``input_len`` tokens under the model's tokenizer."""

    source: Literal["synthetic"] = "synthetic"
    input_len: PositiveInt = Field(default=128, description="Tokens per prompt, exact.")
    seed: int = Field(default=0, description="Seed of the prompt generator.")


class JsonlPrompts(_Section):
    """Prompts read from a JSONL file on the server, one object per line."""

    source: Literal["jsonl"] = "jsonl"
    path: str = Field(min_length=1, description="Path of the JSONL file on the server.")
    field: str = Field(default="prompt", min_length=1, description="Key holding the prompt text.")


class InlinePrompts(_Section):
    """Prompts given in the config itself; cycled when ``n_prompts`` exceeds their number."""

    source: Literal["inline"] = "inline"
    prompts: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1)


class HfPrompts(_Section):
    """Prompts from a Hugging Face dataset, read with the ``datasets`` library (the server's
    ``hf`` extra): a hub id, or a directory written by ``save_to_disk`` inside the server's
    ``LLEM_MODEL_ROOTS``. Rows are taken in order and cycled when ``n_prompts`` exceeds them.

    ``field`` names the column holding the prompt: a string, or a chat (a list of turns such as
    ``{"role": "user", "content": ...}`` or ShareGPT's ``{"from": "human", "value": ...}``),
    of which the first user turn is the prompt.
    """

    source: Literal["hf"] = "hf"
    dataset: str = Field(min_length=1, description="Hub id, or a save_to_disk directory.")
    subset: str | None = Field(default=None, description="The dataset's configuration name.")
    split: str = Field(default="train", min_length=1)
    field: str = Field(default="text", min_length=1, description="Column holding the prompt.")
    revision: str | None = Field(default=None, description="Hub revision (branch, tag, commit).")


PromptSource = Annotated[
    SyntheticPrompts | JsonlPrompts | InlinePrompts | HfPrompts, Field(discriminator="source")
]


def _prompt_sources() -> dict[str, set[str]]:
    """Each prompt source's name and its fields, read from `PromptSource`: a new source added
    to the union is inferred from its fields with no other change."""
    union = get_args(PromptSource)[0]
    sources = {}
    for model in get_args(union):
        name = get_args(model.model_fields["source"].annotation)[0]
        sources[name] = set(model.model_fields) - {"source"}
    return sources


def infer_prompt_source(prompts: dict[str, Any]) -> str:
    """The ``source`` that ``prompts`` (without one) means, from the fields it has.

    No field: synthetic. Fields that only one source has: that source. Fields that several
    have: synthetic if it is one of them (the default), else the error asks for ``source``.

    Raises:
        ValueError: No source has all these fields, or several do; the message says which
            source to add.
    """
    sources = _prompt_sources()
    keys = set(prompts)
    fitting = [name for name, fields in sources.items() if keys <= fields]
    if len(fitting) == 1 or (fitting and "synthetic" in fitting):
        return fitting[0] if len(fitting) == 1 else "synthetic"
    if fitting:
        choices = " or ".join(f"source: {name}" for name in fitting)
        raise ValueError(f"prompts has no source and its fields fit several; add {choices}")
    owners = {
        key: sorted(name for name, fields in sources.items() if key in fields)
        for key in sorted(keys)
    }
    unknown = [key for key, names in owners.items() if not names]
    if unknown:
        described = "; ".join(
            f"{name} has {', '.join(sorted(fields))}" for name, fields in sources.items()
        )
        raise ValueError(
            f"prompts.{unknown[0]} belongs to no prompt source of this version ({described})"
        )
    parts = ", ".join(f"{key} ({' or '.join(names)})" for key, names in owners.items())
    raise ValueError(
        f"prompts has no source and mixes fields of different sources: {parts}; add source: "
        "to say which"
    )


class DecodingConfig(_Section):
    """Greedy or sampled decoding. Sampling knobs are only accepted with ``mode='sample'``."""

    mode: Literal["greedy", "sample"] = "greedy"
    temperature: float | None = Field(default=None, gt=0)
    top_k: PositiveInt | None = None
    top_p: float | None = Field(default=None, gt=0, le=1)
    repetition_penalty: float = Field(default=1.0, gt=0)
    seed: int = Field(default=0, description="Seed of torch's generator for sampling.")

    @model_validator(mode="after")
    def _sampling_knobs_need_sampling(self) -> DecodingConfig:
        if self.mode == "greedy":
            given = [
                name
                for name in ("temperature", "top_k", "top_p")
                if getattr(self, name) is not None
            ]
            if given:
                fields = ", ".join(f"decoding.{name}" for name in given)
                verb = "requires" if len(given) == 1 else "require"
                raise ValueError(f"{fields} {verb} decoding.mode='sample' (mode is 'greedy')")
        return self


class WarmupConfig(_Section):
    """Warm-up at the measurement shape before the measured window.

    ``mode='fixed'`` runs ``batches`` batches. ``mode='cv'`` runs until the coefficient of
    variation of the last ``window`` batch latencies is below ``cv_threshold``, at most
    ``max_batches`` batches.
    """

    mode: Literal["fixed", "cv"] = "fixed"
    batches: int = Field(default=2, ge=0)
    cv_threshold: float = Field(default=0.05, gt=0, lt=1)
    window: int = Field(default=3, ge=2)
    max_batches: PositiveInt = 20

    @model_validator(mode="after")
    def _window_fits_cap(self) -> WarmupConfig:
        if self.mode == "cv" and self.window > self.max_batches:
            raise ValueError(
                f"warmup.window ({self.window}) must not exceed warmup.max_batches "
                f"({self.max_batches}) when warmup.mode='cv'"
            )
        return self


class BaselineConfig(_Section):
    """Idle-power baseline, measured before the model loads and reused while it still holds.

    Before the window opens, llem waits until idle power has settled: until the slope of the
    sampled power falls under ``settle_trend_w_per_s``, at most ``settle_max_s`` (a warning
    then). A kept baseline is reused only for the same GPU, younger than ``max_age_s``, at a
    temperature within ``max_temperature_diff_c`` and with the same power limit and driver.
    ``when='before_and_after'`` measures idle again after the window and reports the drift.
    """

    enabled: bool = True
    duration_s: float = Field(default=10.0, gt=0, le=600)
    max_age_s: float = Field(
        default=3600.0, ge=0, description="Reuse a baseline of the same device up to this age."
    )
    when: Literal["before", "before_and_after"] = "before"
    settle_max_s: float = Field(
        default=60.0, ge=0, le=3600, description="Longest wait for idle power to settle; 0: none."
    )
    settle_trend_w_per_s: float = Field(
        default=0.05, gt=0, description="Idle power counts as settled below this slope."
    )
    max_temperature_diff_c: float = Field(
        default=5.0,
        gt=0,
        description="A kept baseline taken this much warmer or colder is measured again.",
    )

    @model_validator(mode="after")
    def _after_needs_a_baseline(self) -> BaselineConfig:
        if self.when == "before_and_after" and not self.enabled:
            raise ValueError(
                "baseline.when='before_and_after' requires baseline.enabled=true "
                "(baseline.enabled is false)"
            )
        return self


class EnergyConfig(_Section):
    """Energy metering.

    ``sample_interval_ms=None`` samples power at half the probed energy-counter update period,
    kept between 10 and 100 ms (as Zeus does). ``phase_split='counter'`` measures prefill with
    the counter after the window (the workload's batches again with one output token, repeated
    until the passes span ``prefill_counter_periods`` counter updates, at most
    ``prefill_max_s``) and takes decode as the difference; ``'none'`` skips the passes and
    falls back to sharing the window by the power timeline. On a host without a meter no pass
    runs. A figure whose uncertainty exceeds ``max_relative_uncertainty`` of its scale is null,
    with a warning.
    """

    sample_interval_ms: float | None = Field(default=None, ge=1, le=1000)
    devices: list[Annotated[int, Field(ge=0)]] | None = Field(
        default=None,
        description="CUDA device indices to meter; default: every device the model uses.",
    )
    cross_check_threshold: float = Field(
        default=0.10,
        gt=0,
        le=1,
        description="Warn when counter and integrated power differ by more than this fraction.",
    )
    phase_split: Literal["counter", "none"] = "counter"
    prefill_counter_periods: int = Field(default=50, ge=5, le=10_000)
    prefill_max_s: float = Field(default=120.0, gt=0, le=3600)
    max_relative_uncertainty: float = Field(default=0.5, gt=0, le=10)


class RepeatsConfig(_Section):
    """Repeat the measured workload until the 95% confidence interval of J/token (tokens/s
    without a meter) is narrower than ``target_ci_rel`` of its mean, between ``min`` and
    ``max`` repeats."""

    min: int = Field(default=3, ge=2, le=100)
    max: int = Field(default=10, ge=2, le=100)
    target_ci_rel: float = Field(default=0.05, gt=0, lt=1)

    @model_validator(mode="after")
    def _min_not_above_max(self) -> RepeatsConfig:
        if self.min > self.max:
            raise ValueError(f"repeats.min ({self.min}) exceeds repeats.max ({self.max})")
        return self


class PytorchOptions(_Section):
    """Options of the PyTorch / transformers backend."""

    device: str = Field(
        default="auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description="'auto' picks CUDA when present, else CPU.",
    )
    device_map: str | dict[str, int | str] | None = Field(
        default=None, description="transformers device_map, for models spanning GPUs."
    )
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] | None = None
    torch_compile: bool = False
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] | None = None
    static_kv_cache: bool = False
    load_in_4bit: bool = False
    load_in_8bit: bool = False
    bnb_4bit_quant_type: Literal["nf4", "fp4"] | None = None
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _cross_field_rules(self) -> PytorchOptions:
        if self.load_in_4bit and self.load_in_8bit:
            raise ValueError("pytorch.load_in_4bit and pytorch.load_in_8bit are mutually exclusive")
        if self.bnb_4bit_quant_type is not None and not self.load_in_4bit:
            raise ValueError("pytorch.bnb_4bit_quant_type requires pytorch.load_in_4bit=true")
        if self.compile_mode is not None and not self.torch_compile:
            raise ValueError("pytorch.compile_mode requires pytorch.torch_compile=true")
        if self.device_map is not None and self.device != "auto":
            raise ValueError("pytorch.device_map and pytorch.device cannot both be set")
        return self


def _repeats_form(value: Any) -> str:
    return "object" if isinstance(value, dict | RepeatsConfig) else "number"


#: ``repeats``: a number, or an object (errors name ``repeats.number`` or ``repeats.object.*``).
Repeats = Annotated[
    Annotated[Annotated[int, Field(gt=0, le=100)], Tag("number")]
    | Annotated[RepeatsConfig, Tag("object")],
    Discriminator(_repeats_form),
]

#: Fields that label or schedule an experiment but do not change what is measured; excluded
#: from the hash. (``exclusive_host`` changes what runs beside it, which each result records in
#: its ``placement``, not what it runs.)
BOOKKEEPING_FIELDS: frozenset[str] = frozenset({"name", "tags", "exclusive_host"})

#: The most GPUs one experiment may ask for (one host or one cluster node).
MAX_GPUS = 64


def implied_gpus(pytorch: PytorchOptions, energy: EnergyConfig) -> int:
    """GPUs a config needs from the CUDA indices it names: the highest plus one, at least one.

    Inside an experiment CUDA counts only the GPUs it was granted, from 0; so a ``device_map``
    that places layers on ``cuda:0`` and ``cuda:1`` needs two GPUs whatever their numbers on the
    host, and ``device="cuda:1"`` (or ``energy.devices=[1]``) needs two as well.
    """
    indices: list[int] = list(energy.devices or ())
    places: list[int | str] = [pytorch.device]
    if isinstance(pytorch.device_map, dict):
        places.extend(pytorch.device_map.values())
    for place in places:
        if isinstance(place, int):
            indices.append(place)
        elif place.startswith("cuda:") and place[5:].isdigit():
            indices.append(int(place[5:]))
    return max(indices, default=0) + 1


class ExperimentConfig(_Section):
    """One experiment: a model, a workload and how to measure it."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "examples": [
                {
                    "model": "gpt2",
                    "name": "gpt2-bs4",
                    "tags": {"sweep": "batch-size"},
                    "precision": "fp32",
                    "prompts": {"source": "synthetic", "input_len": 32},
                    "n_prompts": 8,
                    "batch_size": 4,
                    "max_output_tokens": 16,
                }
            ]
        },
    )

    schema_version: Literal["1"] = SCHEMA_VERSION
    name: PlainText | None = Field(default=None, max_length=200, description="Free label.")
    tags: dict[PlainText, PlainText] = Field(
        default_factory=dict,
        description="Free labels.",
        json_schema_extra={"propertyNames": {"pattern": "^[^\\x00-\\x1f\\x7f-\\x9f]*$"}},
    )

    model: PlainText = Field(
        min_length=1,
        max_length=1024,
        description="Hub id, or a model directory under the server's LLEM_MODEL_ROOTS "
        "(GET /v1/models lists them).",
    )
    revision: PlainText | None = Field(
        default=None, min_length=1, description="Hub revision (branch, tag, commit)."
    )
    backend: Literal["pytorch"] = "pytorch"
    precision: Literal["fp32", "fp16", "bf16"] = "fp16"

    prompts: PromptSource = Field(default_factory=SyntheticPrompts)
    n_prompts: PositiveInt = Field(default=32, description="Requests in the measured workload.")
    max_input_tokens: PositiveInt | None = Field(
        default=None, description="Prompts longer than this are truncated."
    )
    max_output_tokens: PositiveInt = 128
    fixed_output_length: bool = Field(
        default=True,
        description="Generate exactly max_output_tokens per request (EOS ignored) so runs compare.",
    )
    batch_size: PositiveInt = 1

    decoding: DecodingConfig = Field(default_factory=DecodingConfig)
    warmup: WarmupConfig = Field(default_factory=WarmupConfig)
    baseline: BaselineConfig = Field(default_factory=BaselineConfig)
    energy: EnergyConfig = Field(default_factory=EnergyConfig)
    repeats: Repeats = Field(
        default=1,
        description="A number of repeats, or {min, max, target_ci_rel} to stop by statistics.",
    )
    pytorch: PytorchOptions = Field(default_factory=PytorchOptions)

    gpus: int = Field(
        default=1,
        ge=1,
        le=MAX_GPUS,
        description="Whole GPUs the experiment is granted (CUDA sees them as devices 0..gpus-1). "
        "Default: 1, or as many as pytorch.device_map, pytorch.device or energy.devices name.",
    )
    exclusive_host: bool = Field(
        default=False,
        description="Run alone on the host (or cluster node): no other experiment starts on any "
        "of its GPUs while this one runs. Otherwise experiments share the host's CPUs and PCIe "
        "with their neighbours, and each result lists the ones that overlapped it.",
    )

    @model_validator(mode="before")
    @classmethod
    def _gpus_default_to_what_the_config_names(cls, data: Any) -> Any:
        # {"pytorch": {"device_map": {"a": 0, "b": 1}}} needs two GPUs without saying so; an
        # explicit count is checked against the names in `_cross_field_rules`.
        if isinstance(data, dict) and "gpus" not in data:
            try:
                pytorch = PytorchOptions.model_validate(data.get("pytorch") or {})
                energy = EnergyConfig.model_validate(data.get("energy") or {})
            except ValueError:
                return data  # the sections' own errors are reported by their fields
            data = {**data, "gpus": implied_gpus(pytorch, energy)}
        return data

    @model_validator(mode="before")
    @classmethod
    def _prompts_source_from_fields(cls, data: Any) -> Any:
        # {"prompts": {"input_len": 64}} means synthetic prompts and {"path": ...} a JSONL
        # file: the tag is needed only where the fields do not tell.
        if isinstance(data, dict):
            prompts = data.get("prompts")
            if isinstance(prompts, dict) and "source" not in prompts:
                data = {**data, "prompts": {"source": infer_prompt_source(prompts), **prompts}}
        return data

    @model_validator(mode="after")
    def _cross_field_rules(self) -> ExperimentConfig:
        if (
            isinstance(self.prompts, SyntheticPrompts)
            and self.max_input_tokens is not None
            and self.prompts.input_len > self.max_input_tokens
        ):
            raise ValueError(
                f"prompts.input_len ({self.prompts.input_len}) exceeds max_input_tokens "
                f"({self.max_input_tokens})"
            )
        if self.batch_size > self.n_prompts:
            raise ValueError(f"batch_size ({self.batch_size}) exceeds n_prompts ({self.n_prompts})")
        needed = implied_gpus(self.pytorch, self.energy)
        if self.gpus < needed:
            raise ValueError(
                f"gpus ({self.gpus}) is fewer than the config names: pytorch.device, "
                f"pytorch.device_map or energy.devices use CUDA device {needed - 1}, which needs "
                f"gpus >= {needed} (inside an experiment CUDA counts its granted GPUs from 0)"
            )
        return self

    @property
    def max_repeats(self) -> int:
        """Most repeats this config can run."""
        return self.repeats if isinstance(self.repeats, int) else self.repeats.max


def _section_fields(model: type[BaseModel], loc: list[str | int]) -> list[str] | None:
    """The field names of the section at ``loc`` (a field error's location without its last
    part), or None where the location leaves the config's sections (a list, a free mapping)."""
    current: Any = model
    for part in loc:
        is_section = isinstance(current, type) and issubclass(current, BaseModel)
        if not is_section and not isinstance(current, list):
            return None
        if is_section and isinstance(part, str) and part in current.model_fields:
            annotation = current.model_fields[part].annotation
            sections = [
                arg
                for arg in (get_args(annotation) or (annotation,))
                if isinstance(arg, type) and issubclass(arg, BaseModel)
            ]
            nested = [a for arg in get_args(annotation) for a in get_args(arg)]
            sections += [a for a in nested if isinstance(a, type) and issubclass(a, BaseModel)]
            current = sections[0] if len(sections) == 1 else sections
            continue
        # A discriminated union's tag ("synthetic" in prompts.synthetic.path) picks the member.
        members: list[Any] = current if isinstance(current, list) else []
        chosen = [
            m
            for m in members
            if "source" in m.model_fields
            and get_args(m.model_fields["source"].annotation) == (part,)
        ]
        if len(chosen) != 1:
            return None
        current = chosen[0]
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return None


def unknown_field_hint(loc: list[str | int]) -> str:
    """``unknown field (did you mean 'batch_size'?)`` for the unknown key at ``loc``, or
    ``unknown field; the fields here are ...`` when none is close."""
    import difflib

    if not loc or not isinstance(loc[-1], str):
        return "unknown field"
    fields = _section_fields(ExperimentConfig, list(loc[:-1]))
    if not fields:
        return "unknown field"
    close = difflib.get_close_matches(loc[-1], fields, n=1, cutoff=0.6)
    if close:
        return f"unknown field (did you mean {close[0]!r}?)"
    return f"unknown field; the fields here are {', '.join(sorted(fields))}"
