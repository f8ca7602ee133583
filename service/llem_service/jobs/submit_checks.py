"""What a config must satisfy to be queued, as far as the config itself tells: checked at
submit, so that a config that cannot run is refused with a 422 naming its fields instead of
failing after it waited its turn. (Whether an executor can run it now is
`llem_service.api.admission`'s question.)

Three kinds of check, all reported together:

- sizes against the server's limits (each refusal names the setting that raises it);
- the model (`llem_service.models.catalog`): there, well formed, reachable;
- a prompt plus its output against the model's context, where both are known at submit
  (synthetic prompts or ``max_input_tokens``, and a config.json on the server). Otherwise the
  experiment checks it once the prompts are tokenized and fails early with a config error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from llem_client import ExperimentConfig, FieldError, JsonlPrompts, SyntheticPrompts

from llem_service.backends.base import BackendError
from llem_service.backends.sources import resolve_local
from llem_service.errors import ConfigRefused
from llem_service.models.catalog import ModelCatalog, ModelCheck, ModelRefused
from llem_service.models.context import context_limit
from llem_service.settings import Settings


def _refusal(loc: list[str | int], msg: str) -> FieldError:
    return FieldError(loc=loc, msg=msg, type="refused")


def size_errors(config: ExperimentConfig, settings: Settings) -> list[FieldError]:
    """Each size over its limit, the message naming the ``LLEM_`` setting that raises it."""
    checks: list[tuple[list[str | int], int | None, int, str]] = [
        (["n_prompts"], config.n_prompts, settings.max_n_prompts, "LLEM_MAX_N_PROMPTS"),
        (
            ["max_output_tokens"],
            config.max_output_tokens,
            settings.max_output_tokens,
            "LLEM_MAX_OUTPUT_TOKENS",
        ),
        (["batch_size"], config.batch_size, settings.max_batch_size, "LLEM_MAX_BATCH_SIZE"),
        (
            ["max_input_tokens"],
            config.max_input_tokens,
            settings.max_input_tokens,
            "LLEM_MAX_INPUT_TOKENS",
        ),
    ]
    if isinstance(config.prompts, SyntheticPrompts):
        checks.append(
            (
                ["prompts", "input_len"],
                config.prompts.input_len,
                settings.max_input_tokens,
                "LLEM_MAX_INPUT_TOKENS",
            )
        )
    return [
        _refusal(loc, f"{value:,} is over this server's limit of {limit:,} ({setting} raises it)")
        for loc, value, limit, setting in checks
        if value is not None and value > limit
    ]


def prompt_file_errors(config: ExperimentConfig, settings: Settings) -> list[FieldError]:
    """A JSONL prompt file that is outside the roots, missing, not a file or over the limit."""
    if not isinstance(config.prompts, JsonlPrompts):
        return []
    try:
        path = resolve_local(config.prompts.path, settings.model_root_paths, "prompt file")
    except BackendError as exc:
        return [_refusal(["prompts", "path"], str(exc))]
    if not path.is_file():
        return [_refusal(["prompts", "path"], f"{config.prompts.path!r} is not a regular file")]
    size = path.stat().st_size
    if size > settings.max_dataset_bytes:
        return [
            _refusal(
                ["prompts", "path"],
                f"{config.prompts.path!r} is {size:,} bytes, over this server's limit of "
                f"{settings.max_dataset_bytes:,} (LLEM_MAX_DATASET_BYTES raises it)",
            )
        ]
    return []


def context_errors(
    config: ExperimentConfig, model_config: Mapping[str, Any] | None
) -> list[FieldError]:
    """A prompt plus its output longer than the model's context, when both are known."""
    limit = context_limit(model_config) if model_config is not None else None
    if limit is None:
        return []
    loc: list[str | int]
    if isinstance(config.prompts, SyntheticPrompts):
        # Exactly input_len tokens each (the config already refuses input_len above
        # max_input_tokens).
        prompt_tokens, loc, what = (
            config.prompts.input_len,
            ["prompts", "input_len"],
            "prompts.input_len",
        )
    elif config.max_input_tokens is not None:
        prompt_tokens, loc, what = config.max_input_tokens, ["max_input_tokens"], "max_input_tokens"
    else:
        return []  # the prompts' length is known only once tokenized: checked when it runs
    context, key = limit
    needed = prompt_tokens + config.max_output_tokens
    if needed <= context:
        return []
    return [
        _refusal(
            loc,
            f"{what} ({prompt_tokens:,}) + max_output_tokens ({config.max_output_tokens:,}) "
            f"= {needed:,} tokens, longer than the model's context of {context:,} "
            f"({key} in its config.json)",
        )
    ]


def config_errors(
    config: ExperimentConfig,
    settings: Settings,
    check_model: Callable[[str, str | None], ModelCheck],
) -> list[FieldError]:
    """Every refusal of ``config`` (sizes, prompt file, model, context); empty to accept it.

    Args:
        check_model: `ModelCatalog.check`, or a cache of it (`ConfigChecker`).
    """
    errors = size_errors(config, settings)
    errors += prompt_file_errors(config, settings)
    try:
        checked = check_model(config.model, config.revision)
    except ModelRefused as exc:
        errors.append(_refusal(["model"], str(exc)))
    else:
        errors += context_errors(config, checked.config)
    return errors


def check_config(config: ExperimentConfig, settings: Settings, catalog: ModelCatalog) -> None:
    """Accept ``config`` for the queue, or refuse it naming every offending field.

    Raises:
        ConfigRefused: At least one check failed (a 422 listing each).
    """
    errors = config_errors(config, settings, catalog.check)
    if errors:
        raise ConfigRefused(errors)


class ConfigChecker:
    """`config_errors` for many configs at once (a study's points): each model and revision
    is looked up once, however many points name it (a lookup may ask the hub)."""

    def __init__(self, settings: Settings, catalog: ModelCatalog) -> None:
        self.settings = settings
        self.catalog = catalog
        self._models: dict[tuple[str, str | None], ModelCheck | ModelRefused] = {}

    def __call__(self, config: ExperimentConfig) -> list[FieldError]:
        return config_errors(config, self.settings, self._check_model)

    def _check_model(self, model: str, revision: str | None) -> ModelCheck:
        key = (model, revision)
        if key not in self._models:
            try:
                self._models[key] = self.catalog.check(model, revision)
            except ModelRefused as exc:
                self._models[key] = exc
        found = self._models[key]
        if isinstance(found, ModelRefused):
            raise found
        return found
