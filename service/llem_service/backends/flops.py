"""Analytic FLOPs of decoder-only transformer inference, from the model's configuration.

Per token and layer, the matmuls cost 2 FLOPs per weight: Q and O projections (d x d_attn),
K and V (d x d_kv, grouped-query aware), and the MLP (two d x d_ff matrices, three when
gated). Attention adds 4 x d_attn x (keys attended) per layer: QK^T and AV. The LM head
(2 x d x vocab) is counted once per generated token. Embedding lookups, norms, activations
and softmax are not counted. Counts are per request, padding excluded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

METHOD = (
    "analytic: 2 FLOPs/weight for attention projections, MLP and LM head (once per generated "
    "token) + causal attention 4*d_attn*keys per layer; padding, embeddings and norms excluded"
)

#: Model types whose MLP has a gate (three d x d_ff matrices: gate, up, down).
GATED_MLP_TYPES = frozenset(
    {
        "llama",
        "mistral",
        "mixtral",
        "qwen2",
        "qwen3",
        "gemma",
        "gemma2",
        "gemma3",
        "phi3",
        "olmo",
        "olmo2",
        "granite",
        "cohere",
    }
)


#: Model types known to have a plain two-matrix MLP.
PLAIN_MLP_TYPES = frozenset({"gpt2", "gpt_neox", "gptj", "opt", "bloom", "falcon", "phi"})


@dataclass(frozen=True)
class TransformerShape:
    """The dimensions that set inference FLOPs."""

    n_layers: int
    d_model: int
    d_attn: int  # heads x head_dim
    d_kv: int  # key/value heads x head_dim
    d_ff: int
    vocab: int
    gated_mlp: bool
    model_type: str = ""

    @property
    def mlp_known(self) -> bool:
        return self.model_type in GATED_MLP_TYPES | PLAIN_MLP_TYPES

    @classmethod
    def from_config(cls, config: Any) -> TransformerShape:
        d_model = int(config.hidden_size)
        heads = int(config.num_attention_heads)
        head_dim = int(getattr(config, "head_dim", None) or d_model // heads)
        kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
        d_ff = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None)
        return cls(
            n_layers=int(config.num_hidden_layers),
            d_model=d_model,
            d_attn=heads * head_dim,
            d_kv=kv_heads * head_dim,
            d_ff=int(d_ff or 4 * d_model),
            vocab=int(config.vocab_size),
            gated_mlp=getattr(config, "model_type", "") in GATED_MLP_TYPES,
            model_type=str(getattr(config, "model_type", "")),
        )

    @property
    def layer_matmul_flops(self) -> int:
        """Matmul FLOPs of one layer for one token."""
        attention = 2 * self.d_model * (2 * self.d_attn + 2 * self.d_kv)
        mlp = 2 * self.d_model * self.d_ff * (3 if self.gated_mlp else 2)
        return attention + mlp

    @property
    def lm_head_flops(self) -> int:
        return 2 * self.d_model * self.vocab

    def attention_flops(self, keys: int) -> int:
        """QK^T and AV of one query over ``keys`` keys, all layers."""
        return 4 * self.d_attn * keys * self.n_layers


def request_flops(shape: TransformerShape, prompt_len: int, output_len: int) -> tuple[int, int]:
    """(prefill, decode) FLOPs of one request.

    Prefill processes the ``prompt_len`` prompt tokens (position p attends p keys) and yields
    the first output token; each of the other ``output_len - 1`` tokens is one decoding step
    at position ``prompt_len + k`` attending that many keys.
    """
    if output_len < 1:
        return 0, 0
    per_token = shape.layer_matmul_flops * shape.n_layers
    prefill = (
        prompt_len * per_token
        + shape.attention_flops(prompt_len * (prompt_len + 1) // 2)
        + shape.lm_head_flops
    )
    steps = output_len - 1
    attended = steps * prompt_len + steps * (steps + 1) // 2
    decode = steps * (per_token + shape.lm_head_flops) + shape.attention_flops(attended)
    return prefill, decode
