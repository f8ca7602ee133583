"""The measurement config hash: equal measurements hash equal, whatever the key order."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llem_client._config import ExperimentConfig


def canonical_config_json(config: ExperimentConfig) -> str:
    """The effective config as canonical JSON (sorted keys, no spaces), bookkeeping removed.

    Defaults are filled in, so ``{"model": "gpt2"}`` and the same config with every default
    spelled out give the same text.
    """
    from llem_client._config import BOOKKEEPING_FIELDS

    data = config.model_dump(mode="json", exclude=set(BOOKKEEPING_FIELDS))
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def measurement_config_hash(config: ExperimentConfig) -> str:
    """First 16 hex digits of SHA-256 over `canonical_config_json`."""
    digest = hashlib.sha256(canonical_config_json(config).encode("utf-8")).hexdigest()
    return digest[:16]
