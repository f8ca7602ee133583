"""The CLI's config handling, offline: files, overrides, local validation, ``config validate``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from llem_client import measurement_config_hash
from llem_client._cli_config import (
    apply_overrides,
    load_config_file,
    parse_set,
    validate_config,
)
from llem_client._cli_errors import CliError, format_field_errors
from llem_client.cli import main

from tests.conftest import make_config

INVALID_LINE = (
    "llem-client: invalid config: n_prompts: Input should be greater than 0; "
    "pytorch: pytorch.load_in_4bit and pytorch.load_in_8bit are mutually exclusive\n"
)


def no_client(server: str | None, token: str | None, timeout: float | None) -> Any:
    raise AssertionError("this command must not build a client")


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def small_config_data() -> dict[str, Any]:
    return make_config().model_dump(mode="json", exclude_unset=True)


# --- config validate --------------------------------------------------------------------------


def test_config_validate_prints_the_measurement_hash(tmp_path, capsys):
    path = write_yaml(tmp_path / "exp.yaml", small_config_data())

    assert main(["config", "validate", str(path)], client_factory=no_client) == 0

    out, err = capsys.readouterr()
    assert out == f"valid: {measurement_config_hash(make_config())}\n"
    assert err == ""


def test_config_validate_reads_json_by_content_without_a_json_name(tmp_path, capsys):
    # PyYAML reads 1e3 as a string; JSON content must be read as JSON to mean 1000.
    path = tmp_path / "exp.conf"
    path.write_text(json.dumps({"model": "gpt2", "n_prompts": 1e3}), encoding="utf-8")

    assert main(["config", "validate", str(path)], client_factory=no_client) == 0

    expected = validate_config({"model": "gpt2", "n_prompts": 1000})
    assert capsys.readouterr().out == f"valid: {measurement_config_hash(expected)}\n"


def test_config_validate_rejects_an_invalid_config_with_one_line(tmp_path, capsys):
    data = {
        "model": "gpt2",
        "n_prompts": 0,
        "pytorch": {"load_in_4bit": True, "load_in_8bit": True},
    }
    path = write_yaml(tmp_path / "bad.yaml", data)

    assert main(["config", "validate", str(path)], client_factory=no_client) == 2

    out, err = capsys.readouterr()
    assert out == ""
    assert err == INVALID_LINE


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("broken.yaml", "model: [gpt2\n", "is not valid YAML: expected ',' or ']'"),
        ("broken.json", '{"model": "gpt2",}', "is not valid JSON: Expecting property name"),
        ("list.yaml", "- model: gpt2\n", "must be a mapping of fields, but it is a list"),
        ("empty.yaml", "", "must be a mapping of fields, but it is empty"),
    ],
)
def test_config_validate_rejects_unreadable_files_with_exit_2(
    tmp_path, capsys, name, text, message
):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")

    assert main(["config", "validate", str(path)], client_factory=no_client) == 2

    err = capsys.readouterr().err
    assert err.startswith(f"llem-client: config {path} ")
    assert message in err
    assert err.count("\n") == 1


def test_config_validate_reports_a_missing_file(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"

    assert main(["config", "validate", str(missing)], client_factory=no_client) == 2

    assert capsys.readouterr().err == (
        f"llem-client: cannot read config {missing}: No such file or directory\n"
    )


# --- run: local checks before anything is sent ------------------------------------------------


def test_run_rejects_an_invalid_config_before_building_a_client(tmp_path, capsys):
    data = {"model": "gpt2", "pytorch": {"load_in_4bit": True, "load_in_8bit": True}}
    path = write_yaml(tmp_path / "bad.yaml", data)

    assert main(["run", str(path), "-n", "0"], client_factory=no_client) == 2

    assert capsys.readouterr().err == INVALID_LINE


def test_run_without_config_or_model_is_a_usage_error(capsys):
    assert main(["run", "-n", "4"], client_factory=no_client) == 2

    assert capsys.readouterr().err == "llem-client: run needs a CONFIG file or --model MODEL\n"


def test_run_checks_the_out_directory_before_submitting(tmp_path, capsys):
    out = tmp_path / "missing" / "result.json"

    assert main(["run", "--model", "gpt2", "--out", str(out)], client_factory=no_client) == 2

    err = capsys.readouterr().err
    assert err == f"llem-client: --out {out}: the directory {out.parent} does not exist\n"


def test_run_refuses_out_with_no_wait(tmp_path, capsys):
    argv = ["run", "--model", "gpt2", "--no-wait", "--out", str(tmp_path / "r.json")]

    assert main(argv, client_factory=no_client) == 2

    assert "cannot be used with --no-wait" in capsys.readouterr().err


def test_bad_set_expression_is_a_usage_error(capsys):
    assert main(["run", "--model", "gpt2", "--set", "decoding.mode"], client_factory=no_client) == 2

    assert capsys.readouterr().err == (
        "llem-client: --set expects dotted.key=VALUE, got 'decoding.mode'\n"
    )


@pytest.mark.parametrize(
    "argv",
    [[], ["frobnicate"], ["config"], ["list", "--limit", "0"], ["run", "--batch-size", "x"]],
)
def test_argparse_usage_errors_exit_2(capsys, argv):
    assert main(argv, client_factory=no_client) == 2

    assert "usage: llem-client" in capsys.readouterr().err


# --- overrides --------------------------------------------------------------------------------


def test_named_flags_override_the_file_and_win_over_set():
    data = {"model": "a", "n_prompts": 8, "batch_size": 2}

    merged = apply_overrides(
        data,
        flags={"model": "b", "n_prompts": 4, "batch_size": None},
        input_len=None,
        sets=["n_prompts=16", "decoding.mode=sample", "decoding.temperature=0.7"],
    )

    assert merged == {
        "model": "b",
        "n_prompts": 4,
        "batch_size": 2,
        "decoding": {"mode": "sample", "temperature": 0.7},
    }
    assert data == {"model": "a", "n_prompts": 8, "batch_size": 2}, "the input is not modified"


def test_input_len_makes_synthetic_prompts_when_the_file_has_none():
    merged = apply_overrides({"model": "a"}, flags={}, input_len=64, sets=[])

    assert merged["prompts"] == {"source": "synthetic", "input_len": 64}
    assert validate_config(merged).prompts.input_len == 64  # type: ignore[union-attr]


def test_input_len_refuses_non_synthetic_prompts():
    data = {"model": "a", "prompts": {"source": "inline", "prompts": ["hi"]}}

    with pytest.raises(CliError, match=r"synthetic prompts only; .* is 'inline'"):
        apply_overrides(data, flags={}, input_len=64, sets=[])


@pytest.mark.parametrize(
    ("expression", "keys", "value"),
    [
        ("decoding.temperature=0.7", ["decoding", "temperature"], 0.7),
        ("n_prompts=8", ["n_prompts"], 8),
        ("baseline.enabled=false", ["baseline", "enabled"], False),
        ("revision=", ["revision"], None),
        ("energy.devices=[0, 1]", ["energy", "devices"], [0, 1]),
        ("tags.team=a=b", ["tags", "team"], "a=b"),
        (" name = my run", ["name"], "my run"),
    ],
)
def test_parse_set_reads_the_value_as_yaml(expression, keys, value):
    assert parse_set(expression) == (keys, value)


@pytest.mark.parametrize("expression", ["no-equals", "=1", "a..b=1", "a.=1"])
def test_parse_set_rejects_malformed_keys(expression):
    with pytest.raises(CliError, match=r"--set expects dotted\.key=VALUE"):
        parse_set(expression)


def test_set_through_a_scalar_is_refused():
    with pytest.raises(CliError, match=r"cannot set model\.x: model is not a mapping"):
        apply_overrides({"model": "a"}, flags={}, input_len=None, sets=["model.x=1"])


def test_field_errors_drop_pydantics_value_error_prefix():
    line = format_field_errors(
        [(["pytorch"], "Value error, nope"), ([], "Value error, whole"), (["a", 0], "bad")]
    )

    assert line == "pytorch: nope; whole; a.0: bad"


def test_load_config_file_reads_yaml(tmp_path):
    path = tmp_path / "exp.yml"
    path.write_text("model: gpt2\ndecoding: {mode: sample, temperature: 0.5}\n", encoding="utf-8")

    assert load_config_file(str(path)) == {
        "model": "gpt2",
        "decoding": {"mode": "sample", "temperature": 0.5},
    }


def test_load_config_file_reads_a_yaml_flow_mapping(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("{model: gpt2}\n", encoding="utf-8")  # starts like JSON, is not JSON

    assert load_config_file(str(path)) == {"model": "gpt2"}
