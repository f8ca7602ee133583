"""The PyTorch backend on the CPU with tiny models the tests build: exact accounting."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from llem_service.backends.base import BackendError, WorkloadReport
from llem_service.backends.flops import TransformerShape, request_flops
from llem_service.backends.pytorch import PytorchBackend

from tests.conftest import make_config


def run(root: Path, **overrides: Any) -> tuple[PytorchBackend, WorkloadReport]:
    backend = PytorchBackend(model_roots=(str(root),))
    config = make_config(**{"model": "tiny-gpt2", **overrides})
    backend.load(config)
    backend.warmup(config)
    report = backend.run(config, lambda done, total: None)
    return backend, report


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-llama"])
def test_fixed_length_counts_exactly_n_times_max_output(models_root: Path, model: str) -> None:
    backend, report = run(
        models_root,
        model=model,
        n_prompts=6,
        batch_size=4,
        max_output_tokens=5,
        prompts={"source": "synthetic", "input_len": 7, "seed": 3},
    )
    backend.close()

    assert report.n_requests == 6
    assert report.input_tokens == 6 * 7
    assert report.output_tokens == 6 * 5
    assert report.output_tokens_per_request == (5,) * 6


def test_synthetic_prompts_have_exact_lengths_under_the_tokenizer(models_root: Path) -> None:
    from llem_service.backends.prompts import synthetic_ids
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(models_root / "tiny-gpt2")
    prompts = synthetic_ids(tokenizer, input_len=13, n=5, seed=1)

    assert [len(p) for p in prompts] == [13] * 5
    assert not set(tokenizer.all_special_ids) & {t for p in prompts for t in p}
    assert synthetic_ids(tokenizer, 13, 5, seed=1) == prompts


def test_padding_is_not_counted_as_input(models_root: Path) -> None:
    backend, report = run(
        models_root,
        n_prompts=4,
        batch_size=2,
        prompts={"source": "inline", "prompts": ["w1 w2 w3 w4 w5", "w6"]},
    )
    backend.close()

    assert report.input_tokens == 2 * (5 + 1)  # batches are padded to 5; pads excluded


def force_eos(model_dir: Path, out_dir: Path) -> Path:
    """A copy of tiny-gpt2 whose every next token is EOS (id 2): the final norm outputs a
    constant vector v, and EOS's (tied) embedding row is v, so its logit dominates."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model: Any = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.fill_(1.0)
        model.transformer.wte.weight[2].fill_(1.0)
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out_dir)
    return out_dir


def test_tokens_after_eos_are_not_counted(models_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "models"
    force_eos(models_root / "tiny-gpt2", root / "eos-gpt2")

    free = run(root, model="eos-gpt2", fixed_output_length=False, max_output_tokens=8)[1]
    fixed = run(root, model="eos-gpt2", fixed_output_length=True, max_output_tokens=8)[1]

    assert free.output_tokens_per_request == (1, 1, 1, 1)  # EOS first, nothing after
    assert fixed.output_tokens_per_request == (8, 8, 8, 8)  # EOS suppressed until the end


def test_count_stops_at_the_first_eos_of_a_row(models_root: Path) -> None:
    backend = PytorchBackend(model_roots=(str(models_root),))
    config = make_config(model="tiny-gpt2", fixed_output_length=False)
    backend.load(config)

    counted = backend._count_output([5, 9, 2, 1, 1, 7], config)  # 2 is EOS, 1 is padding
    backend.close()

    assert counted == 3


def test_timings_are_positive_ordered_and_add_up(models_root: Path) -> None:
    backend, report = run(models_root, n_prompts=8, batch_size=2, max_output_tokens=6)
    backend.close()

    assert len(report.batch_latencies_s) == 4
    assert sum(report.batch_latencies_s) <= report.duration_s
    assert report.prefill_time_s + report.decode_time_s == pytest.approx(
        sum(report.batch_latencies_s)
    )
    assert all(t > 0 for t in report.ttft_s)
    assert len(report.ttft_s) == 8
    assert len(report.itl_s) == 4 * 5  # five steps after the first token, per batch
    assert all(gap > 0 for gap in report.itl_s)
    assert 0 <= report.hook_overhead_s < report.duration_s / 10


def test_flops_match_the_hand_count_for_a_tiny_config() -> None:
    from transformers import GPT2Config

    shape = TransformerShape.from_config(GPT2Config(vocab_size=10, n_embd=4, n_layer=2, n_head=2))

    prefill, decode = request_flops(shape, prompt_len=3, output_len=3)

    # Per layer and token: attention projections 2*4*(4+4+4+4) = 128, MLP 2*4*16*2 = 256.
    per_token = 2 * (128 + 256)
    lm_head = 2 * 4 * 10
    # Prefill: 3 tokens; causal attention over 1+2+3 keys: 4*4*6 per layer.
    assert prefill == 3 * per_token + 2 * 4 * 4 * 6 + lm_head
    # Decode: 2 steps attending 4 then 5 keys.
    assert decode == 2 * (per_token + lm_head) + 2 * 4 * 4 * (4 + 5)


def test_llama_flops_count_grouped_kv_and_gated_mlp() -> None:
    from transformers import LlamaConfig

    shape = TransformerShape.from_config(
        LlamaConfig(
            vocab_size=10,
            hidden_size=8,
            intermediate_size=16,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )

    assert (shape.d_attn, shape.d_kv, shape.gated_mlp) == (8, 4, True)
    assert shape.layer_matmul_flops == 2 * 8 * (8 + 8 + 4 + 4) + 2 * 8 * 16 * 3


def test_report_flops_are_the_sum_over_requests(models_root: Path) -> None:
    backend, report = run(
        models_root,
        n_prompts=4,
        batch_size=2,
        max_output_tokens=3,
        prompts={"source": "synthetic", "input_len": 5, "seed": 0},
    )
    shape = backend._state["shape"]
    backend.close()

    prefill, decode = request_flops(shape, 5, 3)

    assert (report.prefill_flops, report.decode_flops) == (4 * prefill, 4 * decode)


def test_jsonl_prompts_are_read_from_inside_the_roots(models_root: Path, tmp_path: Path) -> None:
    data = models_root / "prompts.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": p}) for p in ["w1 w2", "w3 w4 w5"]) + "\n")

    backend, report = run(
        models_root, n_prompts=4, batch_size=2, prompts={"source": "jsonl", "path": str(data)}
    )
    backend.close()

    assert report.input_tokens == 2 + 3 + 2 + 3


def test_a_model_path_outside_the_roots_is_refused(models_root: Path, tmp_path: Path) -> None:
    backend = PytorchBackend(model_roots=(str(tmp_path / "elsewhere"),))

    with pytest.raises(BackendError, match="outside the allowed roots"):
        backend.load(make_config(model=str(models_root / "tiny-gpt2")))
    with pytest.raises(BackendError, match="outside the allowed roots"):
        backend.load(make_config(model=str(tmp_path / "elsewhere" / ".." / "models")))


def test_a_symlink_out_of_the_roots_is_refused(models_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "escape").symlink_to(models_root / "tiny-gpt2")

    with pytest.raises(BackendError, match="outside the allowed roots"):
        PytorchBackend(model_roots=(str(root),)).load(make_config(model=str(root / "escape")))


def test_local_paths_need_configured_roots(models_root: Path) -> None:
    with pytest.raises(BackendError, match="LLEM_MODEL_ROOTS"):
        PytorchBackend().load(make_config(model=str(models_root / "tiny-gpt2")))


def test_remote_code_is_refused_unless_the_server_allows_it(models_root: Path) -> None:
    config = make_config(model="tiny-gpt2", pytorch={"trust_remote_code": True})

    with pytest.raises(BackendError, match="LLEM_ALLOW_REMOTE_CODE"):
        PytorchBackend(model_roots=(str(models_root),)).load(config)


def test_quantisation_without_cuda_is_a_clear_error(models_root: Path) -> None:
    config = make_config(model="tiny-gpt2", pytorch={"load_in_8bit": True})

    with pytest.raises(BackendError, match="needs a CUDA GPU"):
        PytorchBackend(model_roots=(str(models_root),)).load(config)


def test_cv_warmup_stops_at_its_cap(models_root: Path) -> None:
    backend = PytorchBackend(model_roots=(str(models_root),))
    config = make_config(
        model="tiny-gpt2",
        warmup={"mode": "cv", "cv_threshold": 1e-9, "window": 2, "max_batches": 4},
    )
    backend.load(config)

    warm = backend.warmup(config)
    backend.close()

    assert warm.batches == 4  # a threshold no real timing meets: the cap ends it


def forward_passes_at_each_streamed_step(model_dir: Path, device: str) -> list[int]:
    """Generate 6 tokens with a streamer; at each step the streamer receives (after the
    prompt), how many forward passes the model had run. A streamer fed in its own step sees
    1, 2, 3...; one fed a step late (a deferred stop check) sees 2, 3, 4..."""
    import torch
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(model_dir)
    model = model.to(device).eval()
    forwards = [0]

    def count(*_: object) -> None:
        forwards[0] += 1

    model.register_forward_hook(count)
    seen: list[int] = []

    class Streamer:
        prompt = True

        def put(self, value: object) -> None:
            if self.prompt:
                self.prompt = False
                return
            seen.append(forwards[0])

        def end(self) -> None:
            pass

    ids = torch.tensor([[5, 6, 7, 8]], device=device)
    with torch.inference_mode():
        model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6,
            min_new_tokens=6, do_sample=False, pad_token_id=0, streamer=Streamer(),
        )  # fmt: skip
    return seen


def test_each_step_reaches_the_streamer_in_its_own_step(models_root: Path) -> None:
    # Per-step timestamps (TTFT, inter-token latency, per-request energy) rest on this; the GPU
    # tier runs the same check on CUDA.
    assert forward_passes_at_each_streamed_step(models_root / "tiny-gpt2", "cpu") == [
        1, 2, 3, 4, 5, 6
    ]  # fmt: skip


def test_transformers_does_not_defer_its_stop_check_on_cuda() -> None:
    # transformers can stream each step's tokens one step late (DeferredStopCheck) to spare a
    # device sync; the pinned versions do so only on Apple's MPS. If a release enables it for
    # CUDA, per-step timestamps shift by a step: this fails, and the backend must compensate.
    import torch
    from transformers.generation import utils

    deferred = getattr(utils, "DeferredStopCheck", None)
    if deferred is None:  # older releases stream in step, with no deferral at all
        assert not hasattr(utils, "DeferredStopCheck")
        return
    cuda = torch.device("cuda")
    assert not deferred.is_supported(cuda, None, False, is_assistant=False)
    assert not deferred.is_supported(cuda, None, True, is_assistant=False)
