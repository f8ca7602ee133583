"""The PyTorch / transformers backend.

Runs in the experiment's child process. Every batch is timed with the device synchronised at
both edges; a streamer hook timestamps each decoding step, which gives time to first token,
inter-token latency and the prefill / decode split. Token counts exclude padding and anything
generated after a request's EOS.

Per-step timestamps are taken when the streamer receives each step's tokens. transformers can
defer its stop check and stream one step late (``DeferredStopCheck``); in the pinned versions
it does so only on Apple's MPS, never on CUDA, and a test fails if a future release does it on
CUDA (``tests/integration/test_pytorch_backend.py``, ``tests/gpu``).
"""

from __future__ import annotations

import gc
import importlib.util
import itertools
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llem_client import ExperimentConfig

from llem_service.backends.base import (
    BackendError,
    ConfigError,
    LoadReport,
    PrefillReport,
    ProgressFn,
    WarmupReport,
    WorkloadReport,
)
from llem_service.backends.flops import METHOD as FLOPS_METHOD
from llem_service.backends.flops import TransformerShape, request_flops
from llem_service.backends.prompts import MAX_JSONL_BYTES, prompt_ids
from llem_service.backends.sources import resolve_model
from llem_service.models.context import context_limit
from llem_service.settings import Settings

_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def _names_a_missing_model(exc: BaseException) -> bool:
    """huggingface_hub's errors for a repo or revision that does not exist, or an id it cannot
    take (by name: they subclass OSError and ValueError, and the hub library is optional)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(
        names & {"RepositoryNotFoundError", "RevisionNotFoundError", "HFValidationError"}
    ) or "is not a valid model identifier" in str(exc)


def check_context(
    config: ExperimentConfig, prompts: list[list[int]], model_config: dict[str, Any]
) -> None:
    """Refuse a workload whose longest prompt plus its output exceeds the model's context,
    before generation would fail deep inside the model (an IndexError from the position
    embeddings, or silently wrong positions).

    Raises:
        ConfigError: Too long; the message says by how much and which fields to change.
    """
    limit = context_limit(model_config)
    if limit is None or not prompts:
        return
    context, key = limit
    longest = max(len(p) for p in prompts)
    needed = longest + config.max_output_tokens
    if needed > context:
        raise ConfigError(
            f"the longest prompt ({longest:,} tokens) + max_output_tokens "
            f"({config.max_output_tokens:,}) = {needed:,} tokens, longer than the model's "
            f"context of {context:,} ({key} in its config); shorten the prompts "
            "(prompts.input_len or max_input_tokens) or max_output_tokens"
        )


class StepTimer:
    """A transformers streamer that records when each decoding step's tokens arrive.

    The first ``put`` is the prompt; each later one is a step's new tokens. Its own time is
    measured so the result can state the hook's overhead.
    """

    def __init__(self) -> None:
        self.step_times: list[float] = []
        self.overhead_s = 0.0
        self._seen_prompt = False

    def put(self, value: Any) -> None:
        now = time.perf_counter()
        if self._seen_prompt:
            self.step_times.append(now)
        self._seen_prompt = True
        self.overhead_s += time.perf_counter() - now

    def end(self) -> None:
        pass


@dataclass
class _Batch:
    input_ids: Any  # torch tensors, left-padded
    attention_mask: Any
    prompt_lens: list[int]


@dataclass
class _BatchRun:
    latency_s: float
    ttft_s: float
    step_gaps_s: list[float]
    output_lens: list[int]
    hook_overhead_s: float
    span: tuple[float, float, float]
    step_times_s: tuple[float, ...]


@dataclass
class PytorchBackend:
    """`InferenceBackend` on PyTorch and transformers. Cheap to build and pickle: all torch
    work happens in the child process's calls."""

    model_roots: tuple[str, ...] = ()
    allow_remote_code: bool = False
    max_dataset_bytes: int = MAX_JSONL_BYTES
    name: str = "pytorch"
    _state: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> PytorchBackend:
        return cls(
            model_roots=tuple(str(p) for p in settings.model_root_paths),
            allow_remote_code=settings.allow_remote_code,
            max_dataset_bytes=settings.max_dataset_bytes,
        )

    def __getstate__(self) -> dict[str, Any]:
        return {
            "model_roots": self.model_roots,
            "allow_remote_code": self.allow_remote_code,
            "max_dataset_bytes": self.max_dataset_bytes,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def versions(self) -> dict[str, str]:
        import torch
        import transformers

        versions = {"torch": torch.__version__, "transformers": transformers.__version__}
        if torch.version.cuda:
            versions["cuda"] = torch.version.cuda
        return versions

    # -- devices ---------------------------------------------------------------------------

    def prepare(self, config: ExperimentConfig) -> tuple[str, ...]:
        torch = self._import_torch()
        self._state["torch"] = torch
        device = self._device(torch, config.pytorch.device)
        if not torch.cuda.is_available():
            return ()
        count = torch.cuda.device_count()
        indices = config.energy.devices or self._planned_indices(config, device, count)
        for index in indices:
            if index >= count:
                raise ConfigError(
                    f"energy.devices names CUDA device {index}, but this process sees {count} "
                    "(CUDA_VISIBLE_DEVICES renumbers them from 0)"
                )
            # A context and one allocation on each: the idle baseline is then taken in the
            # state the GPU will be in while the model runs, minus the work.
            torch.zeros(1, device=f"cuda:{index}")
        self._state["cuda_indices"] = tuple(indices)
        self.synchronize()
        return tuple(self._uuid(torch, i) for i in indices)

    @staticmethod
    def _planned_indices(config: ExperimentConfig, device: str, count: int) -> list[int]:
        """CUDA devices the model will occupy, known before it loads."""
        device_map = config.pytorch.device_map
        if isinstance(device_map, str):  # "auto", "balanced", "sequential": any visible GPU
            return list(range(count))
        if isinstance(device_map, dict):
            found = set()
            for place in device_map.values():
                if isinstance(place, int):
                    found.add(place)
                elif place.startswith("cuda"):
                    found.add(int(place.partition(":")[2] or 0))
            return sorted(found)
        if device.startswith("cuda"):
            return [int(device.partition(":")[2] or 0)]
        return []

    @staticmethod
    def _uuid(torch: Any, index: int) -> str:
        uuid = str(torch.cuda.get_device_properties(index).uuid)
        return uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"

    def synchronize(self) -> None:
        torch = self._state.get("torch")
        if torch is None or not torch.cuda.is_available():
            return
        for index in self._state.get("cuda_indices", ()) or (torch.cuda.current_device(),):
            torch.cuda.synchronize(index)

    @staticmethod
    def _import_torch() -> Any:
        try:
            import torch
        except ImportError as exc:
            raise BackendError(
                "the pytorch backend needs torch and transformers (torch is missing): "
                "install llem[pytorch]"
            ) from exc
        return torch

    # -- loading ---------------------------------------------------------------------------

    def load(self, config: ExperimentConfig) -> LoadReport:
        options = config.pytorch
        if options.trust_remote_code and not self.allow_remote_code:
            raise ConfigError(
                "pytorch.trust_remote_code is refused: this server does not run model code "
                "from the hub (an operator can allow it with LLEM_ALLOW_REMOTE_CODE=true)"
            )
        try:
            import torch
            import transformers
        except ImportError as exc:
            raise BackendError(
                f"the pytorch backend needs torch and transformers ({exc.name} is missing): "
                "install llem[pytorch]"
            ) from exc
        source = resolve_model(config.model, [Path(r) for r in self.model_roots])
        device = self._device(torch, options.device)
        kwargs: dict[str, Any] = {
            "revision": config.revision,
            "trust_remote_code": options.trust_remote_code,
            "dtype": getattr(torch, _DTYPES[config.precision]),
        }
        if options.attn_implementation is not None:
            kwargs["attn_implementation"] = options.attn_implementation
        if options.device_map is not None:
            kwargs["device_map"] = options.device_map
        if options.load_in_4bit or options.load_in_8bit:
            kwargs["quantization_config"] = self._bnb_config(torch, transformers, config)
            kwargs.setdefault("device_map", {"": device})

        self._sync(torch, device)
        started = time.perf_counter()
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(
                source, revision=config.revision, trust_remote_code=options.trust_remote_code
            )
            model: Any = transformers.AutoModelForCausalLM.from_pretrained(source, **kwargs)
        except (OSError, ValueError) as exc:
            error = ConfigError if _names_a_missing_model(exc) else BackendError
            raise error(f"could not load model {config.model!r}: {exc}") from exc
        if "device_map" not in kwargs:
            model.to(device)
        model.eval()
        if options.torch_compile:
            model.forward = torch.compile(model.forward, mode=options.compile_mode)
        self._sync(torch, device)
        load_time_s = time.perf_counter() - started

        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        report = LoadReport(
            load_time_s=load_time_s,
            device_uuids=self._device_uuids(torch, model),
            n_parameters=sum(p.numel() for p in model.parameters()),
        )
        self._state.update(
            torch=torch,
            transformers=transformers,
            model=model,
            tokenizer=tokenizer,
            device=device,
            shape=TransformerShape.from_config(model.config),
            load_report=report,
        )
        self._prepare_workload(config)
        return report

    def reuse(self, config: ExperimentConfig) -> LoadReport:
        """Keep the loaded model for ``config``; see `InferenceBackend.reuse`."""
        model = self._state.get("model")
        if model is None:
            raise BackendError("no model is loaded to reuse; load one first")
        torch = self._state["torch"]
        # What a fresh process would not have: the previous workload's tensors, the static KV
        # cache transformers keeps on the model between generate calls, compiled graphs
        # specialised to the previous shapes, and the peak-memory counters.
        self._state.pop("batches", None)
        if getattr(model, "_cache", None) is not None:
            model._cache = None
        if config.pytorch.torch_compile:
            torch._dynamo.reset()
        gc.collect()
        if str(self._state["device"]).startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        self._prepare_workload(config)
        loaded: LoadReport = self._state["load_report"]
        return LoadReport(
            load_time_s=0.0, device_uuids=loaded.device_uuids, n_parameters=loaded.n_parameters
        )

    def _prepare_workload(self, config: ExperimentConfig) -> None:
        """Tokenize ``config``'s prompts and lay them out in batches on the model's device."""
        torch = self._state["torch"]
        tokenizer = self._state["tokenizer"]
        roots = [Path(r) for r in self.model_roots]
        prompts = prompt_ids(config, tokenizer, roots, self.max_dataset_bytes)
        check_context(config, prompts, self._state["model"].config.to_dict())
        device = self._state["model"].device
        self._state["batches"] = self._batches(torch, tokenizer, prompts, config.batch_size, device)

    @staticmethod
    def _device(torch: Any, wanted: str) -> str:
        if wanted == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if wanted.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"pytorch.device is {wanted!r} but CUDA is not available here")
        return wanted

    @staticmethod
    def _bnb_config(torch: Any, transformers: Any, config: ExperimentConfig) -> Any:
        if not torch.cuda.is_available():
            raise BackendError("bitsandbytes 4/8-bit loading needs a CUDA GPU; none is available")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise BackendError("4/8-bit loading needs the bitsandbytes package, not installed")
        options = config.pytorch
        if options.load_in_4bit:
            return transformers.BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=options.bnb_4bit_quant_type or "nf4",
                bnb_4bit_compute_dtype=getattr(torch, _DTYPES[config.precision]),
            )
        return transformers.BitsAndBytesConfig(load_in_8bit=True)

    @staticmethod
    def _device_uuids(torch: Any, model: Any) -> tuple[str, ...]:
        indices: set[int] = set()
        device_map = getattr(model, "hf_device_map", None)
        placements = list(device_map.values()) if device_map else [model.device]
        for place in placements:
            dev = torch.device(place if not isinstance(place, int) else f"cuda:{place}")
            if dev.type == "cuda":
                indices.add(dev.index if dev.index is not None else torch.cuda.current_device())
        return tuple(PytorchBackend._uuid(torch, i) for i in sorted(indices))

    @staticmethod
    def _batches(
        torch: Any, tokenizer: Any, prompts: list[list[int]], batch_size: int, device: Any
    ) -> list[_Batch]:
        batches = []
        for start in range(0, len(prompts), batch_size):
            rows = prompts[start : start + batch_size]
            width = max(len(r) for r in rows)
            pad = tokenizer.pad_token_id
            ids = [[pad] * (width - len(r)) + r for r in rows]
            mask = [[0] * (width - len(r)) + [1] * len(r) for r in rows]
            batches.append(
                _Batch(
                    input_ids=torch.tensor(ids, dtype=torch.long, device=device),
                    attention_mask=torch.tensor(mask, dtype=torch.long, device=device),
                    prompt_lens=[len(r) for r in rows],
                )
            )
        return batches

    # -- generation ------------------------------------------------------------------------

    def _generation_config(self, config: ExperimentConfig, *, prefill_only: bool = False) -> Any:
        transformers = self._state["transformers"]
        tokenizer = self._state["tokenizer"]
        decoding = config.decoding
        sampling = decoding.mode == "sample"
        new_tokens = 1 if prefill_only else config.max_output_tokens
        kwargs: dict[str, Any] = {
            "max_new_tokens": new_tokens,
            "min_new_tokens": new_tokens if config.fixed_output_length or prefill_only else None,
            "do_sample": sampling,
            "repetition_penalty": decoding.repetition_penalty,
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "num_beams": 1,
        }
        if sampling:
            kwargs.update(
                temperature=decoding.temperature or 1.0, top_k=decoding.top_k, top_p=decoding.top_p
            )
        else:
            kwargs.update(temperature=None, top_k=None, top_p=None)
        if config.pytorch.static_kv_cache:
            kwargs["cache_implementation"] = "static"
        return transformers.GenerationConfig(**kwargs)

    def _eos_ids(self) -> set[int]:
        eos = self._state["tokenizer"].eos_token_id
        if eos is None:
            return set()
        return {eos} if isinstance(eos, int) else set(eos)

    def _run_batch(
        self, batch: _Batch, config: ExperimentConfig, *, prefill_only: bool = False
    ) -> _BatchRun:
        torch = self._state["torch"]
        device = self._state["device"]
        timer = StepTimer()
        self._sync(torch, device)
        started = time.perf_counter()
        with torch.inference_mode():
            output = self._state["model"].generate(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                generation_config=self._generation_config(config, prefill_only=prefill_only),
                streamer=timer,
            )
        self._sync(torch, device)
        ended = time.perf_counter()
        generated = output[:, batch.input_ids.shape[1] :].tolist()
        marks = [started, *timer.step_times]
        first = timer.step_times[0] if timer.step_times else ended
        return _BatchRun(
            latency_s=ended - started,
            ttft_s=first - started,
            span=(started, first, ended),
            step_gaps_s=[b - a for a, b in itertools.pairwise(marks[1:])],
            output_lens=[self._count_output(row, config) for row in generated],
            hook_overhead_s=timer.overhead_s,
            step_times_s=tuple(timer.step_times[1:]),
        )

    def _count_output(self, row: list[int], config: ExperimentConfig) -> int:
        """Generated tokens up to and including the first EOS (all of them when fixed-length)."""
        if config.fixed_output_length:
            return len(row)
        eos = self._eos_ids()
        for position, token in enumerate(row):
            if token in eos:
                return position + 1
        return len(row)

    def warmup(self, config: ExperimentConfig) -> WarmupReport:
        """Warm up on the workload's own batches (same shape and decoding), in order."""
        batches: list[_Batch] = self._state["batches"]
        plan = config.warmup
        limit = plan.batches if plan.mode == "fixed" else plan.max_batches
        torch = self._state["torch"]
        torch.manual_seed(config.decoding.seed)
        latencies: list[float] = []
        started = time.perf_counter()
        while len(latencies) < limit:
            latencies.append(
                self._run_batch(batches[len(latencies) % len(batches)], config).latency_s
            )
            if plan.mode == "cv" and len(latencies) >= plan.window:
                recent = latencies[-plan.window :]
                if statistics.pstdev(recent) / statistics.fmean(recent) < plan.cv_threshold:
                    break
        return WarmupReport(
            duration_s=time.perf_counter() - started, batch_latencies_s=tuple(latencies)
        )

    def run(self, config: ExperimentConfig, progress: ProgressFn) -> WorkloadReport:
        torch = self._state["torch"]
        device = self._state["device"]
        batches: list[_Batch] = self._state["batches"]
        shape: TransformerShape = self._state["shape"]
        cuda = str(device).startswith("cuda")
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        torch.manual_seed(config.decoding.seed)
        runs: list[_BatchRun] = []
        done = 0
        self._sync(torch, device)
        started = time.perf_counter()
        for batch in batches:
            runs.append(self._run_batch(batch, config))
            done += len(batch.prompt_lens)
            progress(done, config.n_prompts)
        self._sync(torch, device)
        duration_s = time.perf_counter() - started

        prompt_lens = [n for b in batches for n in b.prompt_lens]
        output_lens = [n for r in runs for n in r.output_lens]
        flops = [request_flops(shape, p, o) for p, o in zip(prompt_lens, output_lens, strict=True)]
        warnings: list[tuple[str, str]] = []
        if not shape.mlp_known:
            warnings.append(
                (
                    "flops_mlp_assumed",
                    f"FLOPs assume a non-gated MLP for model type {shape.model_type!r}, which "
                    "llem does not know; compare its FLOPs with care",
                )
            )
        return WorkloadReport(
            n_requests=len(prompt_lens),
            input_tokens=sum(prompt_lens),
            output_tokens_per_request=tuple(output_lens),
            duration_s=duration_s,
            batch_latencies_s=tuple(r.latency_s for r in runs),
            prefill_time_s=sum(r.ttft_s for r in runs),
            decode_time_s=sum(r.latency_s - r.ttft_s for r in runs),
            ttft_s=tuple(
                r.ttft_s for r, b in zip(runs, batches, strict=True) for _ in b.prompt_lens
            ),
            itl_s=tuple(gap for r in runs for gap in r.step_gaps_s),
            hook_overhead_s=sum(r.hook_overhead_s for r in runs),
            prefill_flops=sum(p for p, _ in flops),
            decode_flops=sum(d for _, d in flops),
            flops_method=FLOPS_METHOD,
            peak_memory_allocated_bytes=torch.cuda.max_memory_allocated() if cuda else None,
            peak_memory_reserved_bytes=torch.cuda.max_memory_reserved() if cuda else None,
            warnings=tuple(warnings),
            batch_spans_s=tuple(r.span for r in runs),
            input_tokens_per_request=tuple(prompt_lens),
            batch_sizes=tuple(len(b.prompt_lens) for b in batches),
            batch_step_times_s=tuple(r.step_times_s for r in runs),
        )

    def prefill(self, config: ExperimentConfig) -> PrefillReport:
        """The workload's batches, in order, each generating exactly one token."""
        torch = self._state["torch"]
        device = self._state["device"]
        batches: list[_Batch] = self._state["batches"]
        torch.manual_seed(config.decoding.seed)
        self._sync(torch, device)
        started = time.perf_counter()
        latencies = tuple(
            self._run_batch(batch, config, prefill_only=True).latency_s for batch in batches
        )
        self._sync(torch, device)
        return PrefillReport(duration_s=time.perf_counter() - started, batch_latencies_s=latencies)

    def close(self) -> None:
        torch = self._state.get("torch")
        self._state.clear()
        gc.collect()
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

    @staticmethod
    def _sync(torch: Any, device: Any) -> None:
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
