"""The workload's prompts, as token ids under the model's own tokenizer.

Synthetic prompts are drawn as token ids directly (seeded), so each has exactly
``input_len`` tokens: decoding random text and re-encoding it would not round-trip.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llem_client import ExperimentConfig, InlinePrompts, JsonlPrompts, SyntheticPrompts

from llem_service.backends.base import BackendError
from llem_service.backends.sources import resolve_local

MAX_JSONL_BYTES = 256 * 2**20


def synthetic_ids(tokenizer: Any, input_len: int, n: int, seed: int) -> list[list[int]]:
    """``n`` prompts of exactly ``input_len`` ordinary (non-special) token ids."""
    special = set(tokenizer.all_special_ids)
    vocab = [i for i in range(len(tokenizer)) if i not in special]
    if not vocab:
        raise BackendError("the tokenizer has no ordinary tokens to build synthetic prompts")
    rng = random.Random(seed)
    return [[rng.choice(vocab) for _ in range(input_len)] for _ in range(n)]


def read_jsonl(path: Path, field: str) -> list[str]:
    """The ``field`` of each non-empty line; errors name the line."""
    if path.stat().st_size > MAX_JSONL_BYTES:
        raise BackendError(f"{path} is larger than {MAX_JSONL_BYTES // 2**20} MiB")
    prompts = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BackendError(f"{path}:{number}: not JSON ({exc.msg})") from exc
            text = record.get(field) if isinstance(record, dict) else None
            if not isinstance(text, str) or not text:
                raise BackendError(f"{path}:{number}: no non-empty string field {field!r}")
            prompts.append(text)
    if not prompts:
        raise BackendError(f"{path} holds no prompts")
    return prompts


def _cycle(items: Sequence[Any], n: int) -> list[Any]:
    return [items[i % len(items)] for i in range(n)]


def prompt_ids(config: ExperimentConfig, tokenizer: Any, roots: Sequence[Path]) -> list[list[int]]:
    """The ``n_prompts`` prompts of the workload, tokenized and truncated, unpadded."""
    source = config.prompts
    if isinstance(source, SyntheticPrompts):
        return synthetic_ids(tokenizer, source.input_len, config.n_prompts, source.seed)
    if isinstance(source, JsonlPrompts):
        texts = read_jsonl(resolve_local(source.path, roots, "prompt file"), source.field)
    else:
        assert isinstance(source, InlinePrompts)
        texts = list(source.prompts)
    encoded = tokenizer(
        _cycle(texts, config.n_prompts),
        truncation=config.max_input_tokens is not None,
        max_length=config.max_input_tokens,
    )
    ids: list[list[int]] = encoded["input_ids"]
    if any(len(row) == 0 for row in ids):
        raise BackendError("a prompt encodes to zero tokens")
    return ids
