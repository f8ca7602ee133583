"""Schemathesis hooks for the fuzz tier (loaded through ``SCHEMATHESIS_HOOKS``).

The OpenAPI document states every field of an `ExperimentConfig`, but some of what the server
checks cannot be stated in JSON Schema: rules that relate two fields, and the models a server
has. A request that breaks only those is schema-valid yet rightly refused (422), which the
``positive_data_acceptance`` check would count as a failure. So each *positive* submission is
brought within those rules before it is sent, and only within them; negative cases go as
generated. The rules, as the server applies them:

- ``batch_size`` <= ``n_prompts``;
- synthetic ``prompts.input_len`` <= ``max_input_tokens``;
- with ``warmup.mode = cv``, ``warmup.window`` <= ``warmup.max_batches``;
- CUDA device indices below ``gpus`` (CUDA counts the granted GPUs only);
- ``repeats.min`` <= ``repeats.max``; ``baseline.when = before_and_after`` needs
  ``baseline.enabled``;
- sampling knobs (``decoding.temperature``, ``top_k``, ``top_p``) only with ``mode = sample``;
- ``pytorch``: not both 4- and 8-bit; ``bnb_4bit_quant_type`` needs 4-bit; ``compile_mode``
  needs ``torch_compile``; ``device_map`` only with ``device = auto``;
- an ``Idempotency-Key`` names one request body: a key the generator repeats with another
  body is made unique;
- a list ``cursor`` is one the server issued (an opaque cursor cannot be guessed);
- a study's base names a model (a study needs one valid point; the base or each variant may
  name it, which JSON Schema cannot require);
- ``model`` names a model the server has: here a well-formed hub id (the fuzz server's fake
  hub has every one), not a path, which would have to exist under ``LLEM_MODEL_ROOTS``; and
  a JSONL prompt file would have to exist there too, so a JSONL source becomes inline.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

import schemathesis
from llem_service.models.catalog import hub_id_problem

FAKE_MODEL = "tiny-test-model"


@schemathesis.hook
def filter_failure(context: Any, failure: Any, case: Any, response: Any) -> bool:
    """Keep every failure but one false report: "schema-valid request rejected" for a
    submission whose ``prompts`` join fields of two sources without a ``source``.

    Such a value matches none of the prompt sources (each forbids the others' fields), so it
    is not schema-valid; schemathesis's coverage phase builds it from two oneOf members and
    checks it as positive. The server's 422 is right, and the unit tests cover it. And the
    same report for a study whose points are no valid config (`_study_points_invalid`).
    """
    if getattr(failure, "code", None) != "ST202" or not isinstance(case.body, dict):
        return True
    if _study_points_invalid(case, response):
        return False
    prompts = case.body.get("prompts")
    if not isinstance(prompts, dict) or "source" in prompts:
        return True
    from llem_client._config import infer_prompt_source

    try:
        infer_prompt_source(prompts)
    except ValueError:
        return False
    return True


def _study_points_invalid(case: Any, response: Any) -> bool:
    """A study document whose shape is valid but whose sweep or variants make no valid
    config: its ``sweep`` names config fields by dotted path with values of their own types,
    and the server expands it into configs and validates each (``study-invalid`` lists the
    points and why). JSON Schema states the document's shape, not which paths and values give
    valid configs; the unit tests of studies cover those refusals."""
    if case.operation.method.upper() != "POST" or case.operation.path != "/v1/studies":
        return False
    try:
        problem = response.json()
    except ValueError:
        return False
    return isinstance(problem, dict) and problem.get("type") == "urn:llem:problem:study-invalid"


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    operation = context.operation
    positive = case.meta is not None and case.meta.generation.mode.is_positive
    if not positive or operation is None:
        return case
    route = (operation.method.upper(), operation.path)
    query = case.query or {}
    if route == ("GET", "/v1/experiments") and not _issued_form(query.get("cursor")):
        query.pop("cursor", None)
    if route == ("GET", "/v1/studies") and not _issued_study_cursor(query.get("cursor")):
        query.pop("cursor", None)
    if route == ("POST", "/v1/studies") and isinstance(case.body, dict):
        within_study_rules(case.body)
        _unique_idempotency_key(case)
    if route == ("POST", "/v1/experiments") and isinstance(case.body, dict):
        within_cross_field_rules(case.body)
        _unique_idempotency_key(case)
    return case


def _unique_idempotency_key(case: Any) -> None:
    key = (case.headers or {}).get("Idempotency-Key")
    if isinstance(key, str):
        case.headers["Idempotency-Key"] = f"{key[:200]}-{uuid.uuid4().hex}"


def _issued_form(cursor: Any) -> bool:
    """A cursor is opaque: only the server's own (``seq:N``, base64url) are accepted, and no
    cursor at all."""
    import base64

    if cursor is None:
        return True
    try:
        padded = str(cursor) + "=" * (-len(str(cursor)) % 4)
        kind, _, value = base64.urlsafe_b64decode(padded).decode().partition(":")
        return kind == "seq" and value.isdigit()
    except ValueError:
        return False


def _within_granted_gpus(config: dict[str, Any]) -> None:
    """CUDA device indices the config names (pytorch.device, pytorch.device_map,
    energy.devices) must be below its ``gpus``: inside an experiment CUDA counts only the
    granted GPUs."""
    gpus = config.get("gpus", 1)
    if not isinstance(gpus, int):
        return
    energy = config.get("energy")
    if isinstance(energy, dict) and any(
        isinstance(d, int) and d >= gpus for d in energy.get("devices") or []
    ):
        energy["devices"] = None
    pytorch = config.get("pytorch")
    if not isinstance(pytorch, dict):
        return
    device = pytorch.get("device")
    if isinstance(device, str) and device.startswith("cuda:"):
        index = device.partition(":")[2]
        if index.isdigit() and int(index) >= gpus:
            pytorch["device"] = "cuda"
    if isinstance(pytorch.get("device_map"), dict):
        pytorch["device_map"] = None


def _issued_study_cursor(cursor: Any) -> bool:
    """Studies' cursors are the server's own ``study:N``, or none."""
    if cursor is None or cursor == "":
        return True
    kind, _, value = str(cursor).partition(":")
    return kind == "study" and value.isdigit()


def within_study_rules(study: dict[str, Any]) -> None:
    """A study needs at least one point that is a valid config: the base (or a variant) must
    name a model, which JSON Schema cannot require of "the base or every variant"."""
    base = study.setdefault("base", {})
    if isinstance(base, dict):
        model = base.get("model")
        if not isinstance(model, str) or hub_id_problem(model) is not None:
            base["model"] = FAKE_MODEL


def within_cross_field_rules(config: dict[str, Any]) -> None:
    """Change ``config`` in place as little as needed to meet the rules above."""
    model = config.get("model")
    if isinstance(model, str) and hub_id_problem(model) is not None:
        config["model"] = FAKE_MODEL
    n_prompts, batch_size = config.get("n_prompts", 32), config.get("batch_size", 1)
    if batch_size > n_prompts:
        config["batch_size"] = n_prompts
    from llem_client._config import infer_prompt_source

    prompts = config.get("prompts")
    if isinstance(prompts, dict) and prompts.get("source", "") == "":
        with contextlib.suppress(ValueError):  # sent as generated: see filter_failure
            prompts = config["prompts"] = {**prompts, "source": infer_prompt_source(prompts)}
    if isinstance(prompts, dict) and prompts.get("source") == "jsonl":
        prompts = config["prompts"] = {"source": "inline", "prompts": ["hello"]}
    limit = config.get("max_input_tokens")
    if limit is not None and prompts is None:
        prompts = config["prompts"] = {}
    if (
        isinstance(prompts, dict)
        and prompts.get("source", "synthetic") == "synthetic"
        and limit is not None
        and prompts.get("input_len", 128) > limit
    ):
        prompts["input_len"] = limit
    warmup = config.get("warmup")
    if (
        isinstance(warmup, dict)
        and warmup.get("mode") == "cv"
        and warmup.get("window", 3) > warmup.get("max_batches", 20)
    ):
        warmup["window"] = warmup.get("max_batches", 20)
        if warmup["window"] < 2:
            warmup["window"] = warmup["max_batches"] = 2
    baseline = config.get("baseline")
    if isinstance(baseline, dict) and baseline.get("when") == "before_and_after":
        baseline["enabled"] = True
    repeats = config.get("repeats")
    if isinstance(repeats, dict):  # defaults: min 3, max 10
        repeats["min"] = min(repeats.get("min", 3), repeats.get("max", 10))
    decoding = config.get("decoding")
    if isinstance(decoding, dict) and decoding.get("mode", "greedy") == "greedy":
        for knob in ("temperature", "top_k", "top_p"):
            decoding.pop(knob, None)
    _within_granted_gpus(config)
    pytorch = config.get("pytorch")
    if isinstance(pytorch, dict):
        if pytorch.get("load_in_4bit") and pytorch.get("load_in_8bit"):
            pytorch["load_in_8bit"] = False
        if pytorch.get("bnb_4bit_quant_type") is not None and not pytorch.get("load_in_4bit"):
            pytorch["bnb_4bit_quant_type"] = None
        if pytorch.get("compile_mode") is not None and not pytorch.get("torch_compile"):
            pytorch["compile_mode"] = None
        if pytorch.get("device_map") is not None and pytorch.get("device", "auto") != "auto":
            pytorch["device"] = "auto"
