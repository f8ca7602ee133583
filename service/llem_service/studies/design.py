"""A study document expanded into its points, validated, ordered and hashed.

Points are ``variants`` x the ``sweep`` grid, variant-major, the grid in the order its fields
are given with the last field varying fastest. Each point's config is the base, then its
variant merged in (nested mappings merge key by key; a variant that changes ``prompts.source``
replaces the base's prompts, whose other keys belong to the old source), then its grid values
set by their dotted paths. Every point is validated as an `ExperimentConfig`; invalid ones are
skipped with their reasons (or fail the submission with ``on_invalid: fail``).

The design hash identifies what the study measures: every point's values and measurement
config (labels excluded), the skipped points, the cycles, the order and its seed, the cooldown
and the isolation; not the study's name.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import secrets
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

from llem_client import (
    CooldownConfig,
    ExperimentConfig,
    FieldError,
    SkippedPoint,
    StudyDocument,
    StudyPoint,
    canonical_config_json,
    measurement_config_hash,
)
from pydantic import BaseModel, ConfigDict, ValidationError

from llem_service.errors import StudyInvalid
from llem_service.studies.order import planned_order

#: The column naming a point's variant, when the study has variants.
VARIANT = "variant"


class StudyDesign(BaseModel):
    """The expanded design, as the store keeps it (everything about a study that never
    changes after submission)."""

    model_config = ConfigDict(extra="forbid")

    cycles: int
    order: Literal["sequential", "interleaved", "shuffled"]
    seed: int | None
    isolation: Literal["reuse", "process"]
    on_invalid: Literal["skip", "fail"]
    cooldown: CooldownConfig
    swept_fields: list[str]
    points: list[StudyPoint]
    skipped: list[SkippedPoint]
    #: (point index, cycle) in planned order.
    plan: list[tuple[int, int]]
    notes: list[str] = []


@dataclass(frozen=True)
class ExpandedStudy:
    """A design and the config of each valid point, by point index."""

    design: StudyDesign
    configs: dict[int, ExperimentConfig]
    design_hash: str


#: What the server refuses of a valid config, field by field (`llem_service.jobs.submit_checks`:
#: its size limits, its models, the model's context); an empty list accepts it.
ConfigCheck = Callable[[ExperimentConfig], Sequence[FieldError]]


def expand(
    document: StudyDocument,
    *,
    max_points: int,
    max_runs: int | None = None,
    check: ConfigCheck | None = None,
) -> ExpandedStudy:
    """Expand, validate and order ``document``.

    Args:
        max_points: The most points the study may have.
        max_runs: The most runs (valid points x cycles) it may queue; None for no limit.
        check: This server's checks of a point's config, as a single experiment gets them at
            submit; a point it refuses is invalid like one that fails validation.

    Raises:
        StudyInvalid: An unknown or conflicting field, more points than ``max_points``, more
            runs than ``max_runs``, no valid point, or (with ``on_invalid: fail``) any invalid
            point; the invalid points' fields are in its ``errors``
            (``points.<index>.<field>``).
    """
    sweep, variants, variant_fields = _fields(document)
    n_points = max(len(variants), 1) * math.prod(len(values) for values in sweep.values())
    if n_points > max_points:
        raise StudyInvalid(
            f"the study has {n_points:,} points, more than this server's limit of "
            f"{max_points:,} (LLEM_MAX_STUDY_POINTS)",
            loc=("sweep",),
        )

    points: list[StudyPoint] = []
    skipped: list[SkippedPoint] = []
    configs: dict[int, ExperimentConfig] = {}
    for index, (variant_index, values) in enumerate(_grid(len(variants), sweep)):
        data = copy.deepcopy(document.base)
        shown: dict[str, Any] = {}
        if variants:
            variant = variants[variant_index]
            data = _merge(data, variant)
            shown[VARIANT] = variant_index
            leaves = dict(_leaf_values(variant, ExperimentConfig))
            shown.update({path: leaves.get(path) for path in variant_fields})
        for path, value in values.items():
            _set_path(data, path, value)
        shown.update(values)
        if not data.get("name"):
            data["name"] = f"{document.name} p{index}"[:200]
        config, errors = _point_config(data, check)
        if config is None:
            reason = "; ".join(f"{_where(e.loc)}: {e.msg}" if e.loc else e.msg for e in errors)
            skipped.append(SkippedPoint(index=index, values=shown, reason=reason, errors=errors))
            continue
        configs[index] = config
        points.append(
            StudyPoint(index=index, values=shown, config_hash=measurement_config_hash(config))
        )

    if skipped and document.on_invalid == "fail":
        raise StudyInvalid(
            f"{len(skipped)} of {n_points} points are invalid and on_invalid is 'fail': "
            + _first_reasons(skipped),
            loc=("on_invalid",),
            errors=_point_errors(skipped),
        )
    if not points:
        raise StudyInvalid(
            f"no valid point among {n_points}: " + _first_reasons(skipped),
            loc=("base",),
            errors=_point_errors(skipped),
        )

    n_runs = len(points) * document.cycles
    if max_runs is not None and n_runs > max_runs:
        # Each run is a job row, inserted with the study in one transaction and listed by the
        # study's reads: the bound keeps a submission (and the store lock) short.
        raise StudyInvalid(
            f"the study has {n_runs:,} runs ({len(points):,} valid points x {document.cycles} "
            f"cycles), more than this server's limit of {max_runs:,} (LLEM_MAX_STUDY_RUNS)",
            loc=("cycles",),
        )

    notes = []
    seed = document.seed if document.order == "shuffled" else None
    if document.order == "shuffled" and seed is None:
        seed = secrets.randbelow(2**31)
        notes.append(f"order 'shuffled' without a seed: the server chose seed {seed}")
    if document.seed is not None and document.order != "shuffled":
        notes.append(f"seed {document.seed} is ignored: order is {document.order!r}")
    plan = planned_order([p.index for p in points], document.cycles, document.order, seed)
    design = StudyDesign(
        cycles=document.cycles,
        order=document.order,
        seed=seed,
        isolation=document.isolation,
        on_invalid=document.on_invalid,
        cooldown=document.cooldown,
        swept_fields=([VARIANT, *variant_fields] if variants else []) + list(sweep),
        points=points,
        skipped=skipped,
        plan=plan,
        notes=notes,
    )
    return ExpandedStudy(design, configs, design_hash(design, configs))


def _fields(
    document: StudyDocument,
) -> tuple[dict[str, list[Any]], list[dict[str, Any]], list[str]]:
    """The sweep, the variants (nested) and the fields the variants set, each checked to be
    a field of the config, and none both swept and set by a variant."""
    sweep = dict(document.sweep)
    for path in sweep:
        _check_path(path, ("sweep", path))
    variants = [_nest(variant, ("variants", i)) for i, variant in enumerate(document.variants)]
    variant_fields: list[str] = []
    for i, variant in enumerate(variants):
        for path in _leaves(variant, ExperimentConfig, ("variants", i)):
            if path not in variant_fields:
                variant_fields.append(path)
    for path in sweep:
        for other in variant_fields:
            if path == other or path.startswith(f"{other}.") or other.startswith(f"{path}."):
                raise StudyInvalid(
                    f"{path} is both swept and set by a variant ({other}); set it in one place",
                    loc=("sweep", path),
                )
    return sweep, variants, variant_fields


def _point_config(
    data: dict[str, Any], check: ConfigCheck | None
) -> tuple[ExperimentConfig | None, list[FieldError]]:
    """A point's config, or None with what is wrong with it (invalid, or refused by
    ``check``)."""
    try:
        config = ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        return None, [
            FieldError(loc=list(e["loc"]), msg=_message(e["msg"]), type=e["type"])
            for e in exc.errors(include_url=False)
        ]
    errors = list(check(config)) if check is not None else []
    return (None if errors else config), errors


def design_hash(design: StudyDesign, configs: Mapping[int, ExperimentConfig]) -> str:
    """16 hex digits of SHA-256 over the design's canonical JSON (see the module docstring)."""
    identity = {
        "points": [
            [point.values, json.loads(canonical_config_json(configs[point.index]))]
            for point in design.points
        ],
        "skipped": [[s.values, s.reason] for s in design.skipped],
        "cycles": design.cycles,
        "order": design.order,
        "seed": design.seed,
        "cooldown": design.cooldown.model_dump(mode="json"),
        "isolation": design.isolation,
    }
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _grid(
    n_variants: int, sweep: Mapping[str, Sequence[Any]]
) -> Iterator[tuple[int, dict[str, Any]]]:
    names = list(sweep)
    for variant in range(max(n_variants, 1)):
        for combination in itertools.product(*(sweep[name] for name in names)):
            yield variant, dict(zip(names, combination, strict=True))


def _first_reasons(skipped: Sequence[SkippedPoint], n: int = 3) -> str:
    shown = "; ".join(f"point {s.index} ({s.reason})" for s in skipped[:n])
    more = f"; and {len(skipped) - n} more" if len(skipped) > n else ""
    return shown + more


def _point_errors(skipped: Sequence[SkippedPoint], n: int = 100) -> list[FieldError]:
    """The first ``n`` field errors of the invalid points, under ``body.points.<index>``."""
    errors = [
        FieldError(loc=["body", "points", s.index, *e.loc], msg=e.msg, type=e.type)
        for s in skipped
        for e in s.errors
    ]
    return errors[:n]


def _message(msg: str) -> str:
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    return msg


def _where(loc: Sequence[str | int]) -> str:
    return ".".join(str(part) for part in loc)


# -- fields ------------------------------------------------------------------------------------


def _section_types(annotation: Any) -> tuple[list[type[BaseModel]], bool]:
    """The config sections an annotation can hold, and whether it can hold a mapping."""
    models: list[type[BaseModel]] = []
    mapping = False
    stack = [annotation]
    while stack:
        item = stack.pop()
        origin = get_origin(item)
        if isinstance(item, type) and issubclass(item, BaseModel):
            models.append(item)
        elif origin is dict or item is dict:
            mapping = True
        elif origin in (Union, types.UnionType) or (origin is not None and get_args(item)):
            stack.extend(get_args(item))
    return models, mapping


def _check_path(path: str, loc: tuple[str | int, ...]) -> None:
    """Raise `StudyInvalid` unless ``path`` names a field of `ExperimentConfig` (anything
    below a free mapping, such as ``tags.x``, is allowed)."""
    parts = path.split(".")
    if not all(parts):
        raise StudyInvalid(f"{path!r} is not a dotted field path", loc=loc)
    models: list[type[BaseModel]] = [ExperimentConfig]
    for depth, part in enumerate(parts):
        fields = [m.model_fields[part] for m in models if part in m.model_fields]
        if not fields:
            where = ".".join(parts[:depth]) or "the config"
            raise StudyInvalid(f"unknown field {path!r}: {where} has no field {part!r}", loc=loc)
        if depth == len(parts) - 1:
            return
        models, mapping = [], False
        for field in fields:
            sections, can_map = _section_types(field.annotation)
            models.extend(sections)
            mapping = mapping or can_map
        if mapping:
            return
        if not models:
            prefix = ".".join(parts[: depth + 1])
            raise StudyInvalid(f"unknown field {path!r}: {prefix} has no fields", loc=loc)


def _nest(variant: Mapping[str, Any], loc: tuple[str | int, ...]) -> dict[str, Any]:
    """A variant with dotted keys (``pytorch.attn_implementation``) turned into nested ones."""
    nested: dict[str, Any] = {}
    for key, value in variant.items():
        _check_path(key, (*loc, key))
        _set_path(nested, key, copy.deepcopy(value))
    return nested


def _leaf_values(
    data: Mapping[str, Any], model: type[BaseModel], prefix: str = ""
) -> Iterator[tuple[str, Any]]:
    """(dotted path, value) of each value a partial config sets, descending into sections
    (not into free mappings such as ``tags`` or ``pytorch.device_map``)."""
    for key, value in data.items():
        path = f"{prefix}{key}"
        field = model.model_fields.get(key)
        sections, mapping = _section_types(field.annotation) if field else ([], False)
        if isinstance(value, Mapping) and sections and not mapping:
            for section in sections:  # a union of sections: the first that knows every key
                if all(k in section.model_fields for k in value):
                    yield from _leaf_values(value, section, f"{path}.")
                    break
            else:
                yield path, value
        else:
            yield path, value


def _leaves(
    data: Mapping[str, Any], model: type[BaseModel], loc: tuple[str | int, ...]
) -> list[str]:
    paths = [path for path, _ in _leaf_values(data, model)]
    for path in paths:
        _check_path(path, (*loc, path))
    return paths


def _set_path(data: dict[str, Any], path: str, value: Any) -> None:
    node = data
    parts = path.split(".")
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            raise StudyInvalid(f"cannot set {path}: {where} is not a mapping in the base config")
        node = child
    node[parts[-1]] = value


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` merged into ``base`` key by key (see the module docstring)."""
    merged = dict(base)
    for key, value in override.items():
        old = merged.get(key)
        if isinstance(old, dict) and isinstance(value, Mapping) and not _new_source(old, value):
            merged[key] = _merge(old, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _new_source(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """A prompts section that changes its source replaces the old one whole."""
    return "source" in new and new["source"] != old.get("source", "synthetic")
