"""A model's context length, read from its ``config.json`` without loading the model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Keys that different architectures use for the number of positions they were built for,
#: most common first (Llama/Mistral/Qwen, GPT-2, MPT/ChatGLM, GPT-J-style ``n_ctx``).
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "n_ctx")


def context_limit(config: Mapping[str, Any]) -> tuple[int, str] | None:
    """The model's context in tokens and the key that says so, or None when no key does.

    Multimodal configs keep the language model's settings in ``text_config``; it is looked at
    when the top level says nothing.
    """
    for key in CONTEXT_KEYS:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, key
    text = config.get("text_config")
    if isinstance(text, Mapping):
        found = context_limit(text)
        if found is not None:
            return found[0], f"text_config.{found[1]}"
    return None
