"""Tiny models built by the tests themselves (no hub), saved with ``save_pretrained`` and
loaded back through the backend's real loading code."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytest.importorskip("torch", reason="the integration tier needs torch (pip install llem[pytorch])")
pytest.importorskip("transformers", reason="the integration tier needs transformers")

WORDS = [f"w{i}" for i in range(60)]


def save_tokenizer(directory: Path) -> None:
    """A word-level tokenizer: 60 words plus <unk>, <pad>, <eos>; ids 0, 1, 2 are special."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<pad>": 1, "<eos>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>"
    )
    tokenizer.save_pretrained(directory)


def build_gpt2(
    directory: Path,
    *,
    n_embd: int = 32,
    n_layer: int = 2,
    n_head: int = 4,
    vocab_size: int = len(WORDS) + 3,
    n_positions: int = 256,
) -> Path:
    """A GPT-2-shaped model with random weights, saved with the word-level tokenizer.

    ``build_gpt2(d, n_embd=768, n_layer=12, n_head=12, vocab_size=50257, n_positions=1024)``
    is GPT-2 small's shape; ids past the tokenizer's 63 words are generated but never decoded.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        bos_token_id=2,
        eos_token_id=2,
        pad_token_id=1,
    )
    GPT2LMHeadModel(config).save_pretrained(directory)
    save_tokenizer(directory)
    return directory


def build_llama(directory: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(WORDS) + 3,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=2,
        eos_token_id=2,
        pad_token_id=1,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    save_tokenizer(directory)
    return directory


@pytest.fixture(scope="session")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    build_gpt2(root / "tiny-gpt2")
    build_llama(root / "tiny-llama")
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def service(models_root: Path, tmp_path: Path) -> Iterator[str]:
    """``llem-service`` as a real process on the tiny models; its URL."""
    port = _free_port()
    env = {
        **os.environ,
        "LLEM_PORT": str(port),
        "LLEM_DATA_DIR": str(tmp_path / "data"),
        "LLEM_MODEL_ROOTS": str(models_root),
        # No hub here: a hub id is refused at submit at once, without a probe to time out.
        "HF_HUB_OFFLINE": "1",
    }
    log = (tmp_path / "service.log").open("w")
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "llem-service")],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError((tmp_path / "service.log").read_text())
        time.sleep(0.1)
    yield url
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)
    log.close()
