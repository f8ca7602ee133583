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

from llem_client import ExperimentConfig, HfPrompts, InlinePrompts, JsonlPrompts, SyntheticPrompts

from llem_service.backends.base import BackendError, ConfigError
from llem_service.backends.datasets import read_hf_prompts
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


def read_jsonl(path: Path, field: str, max_bytes: int = MAX_JSONL_BYTES) -> list[str]:
    """The ``field`` of each non-empty line; errors name the line.

    Only a regular file of at most ``max_bytes`` is read, and never more than that many bytes
    (a file that grows while it is read is refused too): a FIFO or a device would block or
    never end.
    """
    if not path.is_file():
        raise ConfigError(f"prompt file {path} is not a regular file")
    if path.stat().st_size > max_bytes:
        raise ConfigError(
            f"prompt file {path} is larger than the server's limit of {max_bytes} bytes "
            "(LLEM_MAX_DATASET_BYTES)"
        )
    with path.open("rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ConfigError(f"prompt file {path} grew past {max_bytes} bytes while being read")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"prompt file {path} is not UTF-8 (byte {exc.start})") from exc
    prompts = []
    # Split on "\n" only: str.splitlines would also split on U+2028, legal inside JSON strings.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{number}: not JSON ({exc.msg})") from exc
        value = record.get(field) if isinstance(record, dict) else None
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{path}:{number}: no non-empty string field {field!r}")
        prompts.append(value)
    if not prompts:
        raise ConfigError(f"{path} holds no prompts")
    return prompts


def _cycle(items: Sequence[Any], n: int) -> list[Any]:
    return [items[i % len(items)] for i in range(n)]


def prompt_ids(
    config: ExperimentConfig,
    tokenizer: Any,
    roots: Sequence[Path],
    max_dataset_bytes: int = MAX_JSONL_BYTES,
) -> list[list[int]]:
    """The ``n_prompts`` prompts of the workload, tokenized and truncated, unpadded."""
    source = config.prompts
    if isinstance(source, SyntheticPrompts):
        return synthetic_ids(tokenizer, source.input_len, config.n_prompts, source.seed)
    if isinstance(source, JsonlPrompts):
        path = resolve_local(source.path, roots, "prompt file")
        texts = read_jsonl(path, source.field, max_dataset_bytes)
    elif isinstance(source, HfPrompts):
        texts = read_hf_prompts(source, roots, config.n_prompts)
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
        raise ConfigError("a prompt encodes to zero tokens")
    return ids
