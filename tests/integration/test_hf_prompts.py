"""Prompts from Hugging Face datasets, through the same loading code as a hub dataset: small
datasets built with ``datasets`` and written with ``save_to_disk`` under a model root."""

from __future__ import annotations

from pathlib import Path

import pytest
from llem_client import HfPrompts
from llem_service.backends.base import BackendError
from llem_service.backends.prompts import prompt_ids

from tests.conftest import make_config
from tests.integration.conftest import WORDS

datasets = pytest.importorskip("datasets", reason="prompts.source 'hf' needs datasets")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("datasets")
    plain = datasets.Dataset.from_dict({"text": [" ".join(WORDS[:5]), " ".join(WORDS[5:8])]})
    datasets.DatasetDict({"test": plain}).save_to_disk(str(root / "plain"))
    chats = datasets.Dataset.from_dict(
        {
            "conversations": [
                [{"from": "system", "value": "w9"}, {"from": "human", "value": "w1 w2 w3"}],
                [{"from": "human", "value": "w4"}, {"from": "gpt", "value": "w5 w6"}],
            ],
            "messages": [
                [{"role": "user", "content": "w7 w8"}],
                [{"role": "assistant", "content": "w1"}],
            ],
        }
    )
    chats.save_to_disk(str(root / "chats"))
    return root


@pytest.fixture(scope="module")
def tokenizer(models_root: Path) -> object:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(models_root / "tiny-gpt2")


def _ids(tokenizer: object, roots: list[Path], n: int = 3, **source: object) -> list[list[int]]:
    config = make_config(prompts={"source": "hf", **source}, n_prompts=n, batch_size=1)
    assert isinstance(config.prompts, HfPrompts)
    return prompt_ids(config, tokenizer, roots)


def test_a_saved_dataset_under_a_root_is_read_by_name(data_root: Path, tokenizer: object) -> None:
    ids = _ids(tokenizer, [data_root], dataset="plain", split="test")

    assert [len(row) for row in ids] == [5, 3, 5]  # two rows, cycled to n_prompts


def test_the_first_user_turn_of_a_chat_is_the_prompt(data_root: Path, tokenizer: object) -> None:
    sharegpt = _ids(tokenizer, [data_root], n=2, dataset="chats", field="conversations")
    with pytest.raises(BackendError, match="row 1: no user turn"):
        _ids(tokenizer, [data_root], n=2, dataset="chats", field="messages")

    assert [len(row) for row in sharegpt] == [3, 1]


def test_local_datasets_are_confined_to_the_roots(
    data_root: Path, tokenizer: object, tmp_path: Path
) -> None:
    with pytest.raises(BackendError, match="outside the allowed roots"):
        _ids(tokenizer, [tmp_path], dataset=str(data_root / "plain"), split="test")
    with pytest.raises(BackendError, match="this server allows none"):
        _ids(tokenizer, [], dataset=str(data_root / "plain"), split="test")
    with pytest.raises(BackendError, match=r"'\.\.' is not allowed"):
        _ids(tokenizer, [data_root], dataset="plain/../chats")


def test_a_wrong_split_or_column_is_named(data_root: Path, tokenizer: object) -> None:
    with pytest.raises(BackendError, match="no split 'train' \\(test\\)"):
        _ids(tokenizer, [data_root], dataset="plain")
    with pytest.raises(BackendError, match="no column 'prompt' \\(it has text\\)"):
        _ids(tokenizer, [data_root], dataset="plain", split="test", field="prompt")
