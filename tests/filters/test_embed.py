"""The embed operator equals raw sentence-transformers encode, and its disk cache is reused, not recomputed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from curate import Pipeline, read, read_output, write
from curate.filters.embed import Embed
from curate.models.sentence import embeddings_to_numpy, load_sentence_model


@pytest.fixture(scope="module")
def texts(shared_data: Path) -> list[str]:
    rows = [json.loads(line) for line in
            (shared_data / "instructions/databricks-dolly-15k.en.jsonl").read_text().splitlines()[:40]]
    return [r["instruction"] + " " + r["response"][:300] for r in rows]


def _write(path: Path, texts: list[str]) -> str:
    path.write_text("".join(json.dumps({"id": f"t{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    return str(path)


def _run(src: str, out: Path, work: Path, **kw) -> pl.DataFrame:
    Pipeline(read(src), Embed(**kw), write(str(out), format="parquet")).run(work_dir=str(work), workers=1,
                                                                           progress=False)
    return read_output(str(out)).sort("id", descending=False)


def test_embed_equals_raw_encode_and_cache_is_reused(texts, tmp_path):
    src = _write(tmp_path / "in.jsonl", texts)
    cache = tmp_path / "cache"
    out = _run(src, tmp_path / "o1", tmp_path / "w1", cache_dir=str(cache), batch_size=16)
    assert out.schema["embedding"] == pl.Array(pl.Float32, 384)
    x = embeddings_to_numpy(out["embedding"])
    order = [int(i[1:]) for i in out["id"].to_list()]
    raw = load_sentence_model(None, "cpu").encode([texts[i] for i in order], batch_size=16,
                                                  normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(x, raw, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)

    parts = sorted(cache.rglob("part-*.parquet"))
    assert parts and sum(pl.read_parquet(p).height for p in parts) == len(texts)
    # a second run (new work dir, same cache): nothing encoded, same vectors
    again = _run(src, tmp_path / "o2", tmp_path / "w2", cache_dir=str(cache), batch_size=16)
    assert sorted(cache.rglob("part-*.parquet")) == parts
    np.testing.assert_array_equal(embeddings_to_numpy(again["embedding"]), x)

    # editing one text re-encodes exactly that document (the key is id + text hash)
    edited = list(texts)
    edited[3] = "A completely different sentence about cooking pasta."
    third = _run(_write(tmp_path / "in2.jsonl", edited), tmp_path / "o3", tmp_path / "w3", cache_dir=str(cache))
    new_parts = sorted(set(cache.rglob("part-*.parquet")) - set(parts))
    assert len(new_parts) == 1 and pl.read_parquet(new_parts[0])["id"].to_list() == ["t3"]
    y = embeddings_to_numpy(third["embedding"])
    row3 = third["id"].to_list().index("t3")
    expect = load_sentence_model(None, "cpu").encode([edited[3]], normalize_embeddings=True)[0]
    np.testing.assert_allclose(y[row3], expect, atol=1e-5)
    others = [i for i in range(len(texts)) if i != row3]
    np.testing.assert_array_equal(y[others], x[others])


def test_unnormalised_and_default_cache_under_work_dir(texts, tmp_path):
    src = _write(tmp_path / "in.jsonl", texts[:8])
    out = _run(src, tmp_path / "o", tmp_path / "w", normalize=False)
    x = embeddings_to_numpy(out["embedding"])
    raw = load_sentence_model(None, "cpu").encode([texts[int(i[1:])] for i in out["id"].to_list()])
    np.testing.assert_allclose(x, raw, atol=1e-5)
    assert list((tmp_path / "w/cache/embeddings").rglob("part-*.parquet"))


@pytest.mark.gpu
def test_cuda_fp16_matches_cpu(texts):
    from curate.models.sentence import Embedder, EmbedSpec, l2_normalize

    batch = pl.DataFrame({"id": [f"t{i}" for i in range(len(texts))], "text": texts})
    gpu = l2_normalize(Embedder(EmbedSpec(), "cuda", None).embed(batch))
    cpu = l2_normalize(Embedder(EmbedSpec(), "cpu", None).embed(batch))
    assert np.min(np.sum(gpu * cpu, axis=1)) > 0.999
