"""Fixtures for the teacher-backend tests: SmolLM2's real tokenizer, a tiny random Llama saved beside it, and real
HTTP servers started on 127.0.0.1 (the repo's test server in ``openai_server.py``, and ``transformers serve``)."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from teacher_servers import API_KEY, Server, _env, free_port, make_server


@pytest.fixture(scope="session")
def tiny_dir(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide random Llama with SmolLM2's tokenizer (and chat template), saved to a temp folder."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny_llama")
    tok = AutoTokenizer.from_pretrained(str(smollm2_dir))
    torch.manual_seed(0)
    # initializer_range 0.6 (not 0.02): peaked next-token distributions (top-1 ~0.16, top-8 ~0.36 on random
    # tokens), so top-k holds real mass and sampling still varies
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True,
                      initializer_range=0.6)
    LlamaForCausalLM(cfg).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def server(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The test server on the tiny model, demanding ``API_KEY`` (shared by the tests of a module)."""
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    s = make_server(tiny_dir, tmp_path_factory.mktemp("server") / "server.log", api_key=API_KEY).start()
    yield s
    s.kill()


@pytest.fixture(scope="module")
def transformers_serve(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``transformers serve`` (transformers' own OpenAI-compatible server) on the tiny model."""
    pytest.importorskip("fastapi")
    exe = shutil.which("transformers", path=str(Path(sys.executable).parent)) or shutil.which("transformers")
    if exe is None:
        pytest.skip("the `transformers` CLI is not installed")
    port = free_port()
    cmd = [exe, "serve", str(tiny_dir), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    s = Server(cmd, port, _env(), tmp_path_factory.mktemp("tserve") / "serve.log").start()
    yield s
    s.kill()
