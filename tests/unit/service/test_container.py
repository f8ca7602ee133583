"""`image_identity`: what a result's ``environment.container_image`` says."""

from __future__ import annotations

import json
from pathlib import Path

from llem_service.container import image_identity


def write_info(tmp_path: Path, **fields: object) -> Path:
    path = tmp_path / "image.json"
    path.write_text(json.dumps(fields))
    return path


def test_outside_a_container_there_is_no_image(tmp_path: Path) -> None:
    assert image_identity({}, tmp_path / "missing.json") is None


def test_the_build_info_names_version_build_and_revision(tmp_path: Path) -> None:
    info = write_info(tmp_path, name="llem", version="0.1.0", build_id="b42", revision="abc123")

    assert image_identity({}, info) == "llem (version 0.1.0, build b42, revision abc123)"


def test_the_deployment_reference_replaces_the_built_name(tmp_path: Path) -> None:
    info = write_info(tmp_path, name="llem", version="0.1.0", build_id="b42")

    identity = image_identity({"LLEM_IMAGE": "ghcr.io/acme/llem:0.1.0"}, info)

    assert identity == "ghcr.io/acme/llem:0.1.0 (version 0.1.0, build b42)"


def test_a_reference_alone_is_kept_as_is(tmp_path: Path) -> None:
    assert image_identity({"LLEM_IMAGE": "llem:dev"}, tmp_path / "missing.json") == "llem:dev"


def test_empty_and_unreadable_fields_are_left_out(tmp_path: Path) -> None:
    info = write_info(tmp_path, name="llem", version="", build_id="b1", revision=None)

    assert image_identity({}, info) == "llem (build b1)"


def test_a_corrupt_info_file_is_ignored(tmp_path: Path) -> None:
    info = tmp_path / "image.json"
    info.write_text("{not json")

    assert image_identity({"LLEM_IMAGE": "llem:x"}, info) == "llem:x"


def test_the_info_path_can_come_from_the_environment(tmp_path: Path) -> None:
    info = write_info(tmp_path, build_id="b7")

    assert image_identity({"LLEM_IMAGE_INFO": str(info)}) == "unnamed image (build b7)"
