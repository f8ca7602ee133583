"""Building an `ExperimentConfig` from a file and command-line overrides, checked locally.

A config is validated before anything is sent, so a typo costs no round trip and no queue
slot. Overrides are applied to the raw mapping, not to a validated model, so that a file which
is only valid after its overrides (``n_prompts: 0`` fixed by ``-n 4``) is accepted.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llem_client._cli_errors import CliError, format_field_errors, one_line

if TYPE_CHECKING:
    from llem_client._config import ExperimentConfig

#: Named ``run`` flags and the config key each sets; ``--input-len`` is handled on its own.
FLAG_KEYS: dict[str, str] = {
    "model": "model",
    "backend": "backend",
    "precision": "precision",
    "batch_size": "batch_size",
    "n_prompts": "n_prompts",
    "max_output_tokens": "max_output_tokens",
    "max_input_tokens": "max_input_tokens",
    "repeats": "repeats",
    "name": "name",
}


def load_config_file(path: str) -> dict[str, Any]:
    """The mapping in a YAML or JSON file.

    JSON is read with `json` when the file is named ``*.json`` or looks like a JSON object,
    because YAML 1.1 reads some valid JSON differently (``1e3`` is a string to PyYAML).

    Raises:
        CliError: The file is missing or unreadable, does not parse, or is not a mapping.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CliError(f"cannot read config {path}: {reason}") from exc

    data: Any
    if path.endswith(".json"):
        data = _parse_json(text, path)
    elif text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            data = _parse_yaml(text, path)  # a YAML flow mapping such as {model: gpt2}
    else:
        data = _parse_yaml(text, path)

    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise CliError(f"config {path} must be a mapping of fields, but it is {kind}")
    return data


def _parse_json(text: str, path: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(
            f"config {path} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from exc


def _parse_yaml(text: str, path: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise CliError(f"config {path} is not valid YAML: {one_line(problem)}{where}") from exc


def parse_set(expression: str) -> tuple[list[str], Any]:
    """Split ``--set dotted.key=VALUE`` into its key path and its value.

    VALUE is read as YAML, so ``7``, ``0.7``, ``true`` and ``null`` get their types, ``[0, 1]``
    is a list, and anything else is a string. An empty VALUE is ``null``.

    Raises:
        CliError: There is no ``=``, a key part is empty, or VALUE is not valid YAML.
    """
    import yaml

    key, sep, raw = expression.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(part.strip() for part in parts):
        raise CliError(f"--set expects dotted.key=VALUE, got {expression!r}")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise CliError(f"--set {key}: the value {raw!r} is not valid YAML") from exc
    return [part.strip() for part in parts], value


def set_path(data: dict[str, Any], keys: Sequence[str], value: Any) -> None:
    """Set ``data[k1][k2]...[kn] = value``, creating the mappings on the way.

    Raises:
        CliError: Something on the way exists but is not a mapping.
    """
    node = data
    for depth, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            where = ".".join(keys[: depth + 1])
            raise CliError(f"cannot set {'.'.join(keys)}: {where} is not a mapping")
        node = child
    node[keys[-1]] = value


def apply_overrides(
    data: dict[str, Any],
    *,
    flags: dict[str, Any],
    input_len: int | None,
    sets: Sequence[str],
) -> dict[str, Any]:
    """``data`` with ``--set`` expressions applied in order, then the named flags.

    Named flags win over ``--set`` because they are the more specific spelling. ``flags`` maps
    `FLAG_KEYS` names to values; ``None`` means the flag was not given.
    """
    merged = copy.deepcopy(data)
    for expression in sets:
        keys, value = parse_set(expression)
        set_path(merged, keys, value)
    for flag, key in FLAG_KEYS.items():
        if flags.get(flag) is not None:
            merged[key] = flags[flag]
    if input_len is not None:
        prompts = merged.setdefault("prompts", {})
        if not isinstance(prompts, dict):
            raise CliError("--input-len needs prompts to be a mapping")
        source = prompts.setdefault("source", "synthetic")
        if source != "synthetic":
            raise CliError(
                f"--input-len applies to synthetic prompts only; this config's prompts.source "
                f"is {source!r}"
            )
        prompts["input_len"] = input_len
    return merged


def validate_config(data: dict[str, Any]) -> ExperimentConfig:
    """``data`` as an `ExperimentConfig`.

    Raises:
        CliError: The config is invalid; the message lists each offending field.
    """
    from pydantic import ValidationError

    from llem_client._config import ExperimentConfig, unknown_field_hint

    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        fields = format_field_errors(
            (
                error["loc"],
                unknown_field_hint(list(error["loc"]))
                if error["type"] == "extra_forbidden"
                else error["msg"],
            )
            for error in exc.errors(include_url=False)
        )
        raise CliError(f"invalid config: {one_line(fields)}") from exc
