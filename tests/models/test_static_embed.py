"""The model2vec backend: a static model distilled from the packaged MiniLM, cached by source fingerprint.

The first run on a machine distils once (minutes on a CPU) into ``~/.cache/curate/model2vec``
(or $CURATE_MODEL_CACHE); later runs load the cached folder in well under a second.
"""

from __future__ import annotations

import shutil

import numpy as np
import polars as pl
import pytest

from curate.models import sentence
from curate.models.sentence import Embedder, EmbedSpec, l2_normalize, load_static_model, static_model_dir
from tests.conftest import shared_file

pytest.importorskip("model2vec")


def _mrpc_pairs(n: int) -> tuple[list[str], list[str]]:
    a, b = [], []
    with open(shared_file("paraphrase/msr_paraphrase_train.txt"), encoding="utf-8-sig") as f:
        next(f)
        for line in f:
            _, _, _, s1, s2 = line.rstrip("\n").split("\t")
            a.append(s1)
            b.append(s2)
            if len(a) >= n:
                break
    return a, b


@pytest.fixture(scope="module")
def static_encoder():
    return EmbedSpec(backend="model2vec").load("cpu")


def test_static_vectors_shape_and_dtype(static_encoder):
    a, _ = _mrpc_pairs(20)
    x = static_encoder.encode(a, batch_size=64)
    assert x.shape == (20, 256) and x.dtype == np.float32
    assert np.isfinite(x).all() and (np.linalg.norm(x, axis=1) > 0).all()


def test_semdedup_pair_decisions_agree_with_minilm(static_encoder):
    """SemDeDup's pair rule (cosine > 1 - eps) at eps 0.05 on 150 real MRPC pairs: most decisions match
    the transformer's (0.91 on 1500 pairs in benchmarks/RESULTS.md), and both flag the same kind of pairs."""
    a, b = _mrpc_pairs(150)
    mini = EmbedSpec().load("cpu")

    def cos(enc) -> np.ndarray:
        x = l2_normalize(np.asarray(enc.encode(a + b, batch_size=64), np.float32))
        return np.einsum("ij,ij->i", x[:150], x[150:])

    ct, cm = cos(mini), cos(static_encoder)
    eps = 0.05
    agree = ((ct > 1 - eps) == (cm > 1 - eps)).mean()
    assert agree >= 0.8, agree
    assert np.corrcoef(ct, cm)[0, 1] > 0.6  # the static similarities track MiniLM's


def test_cache_is_reused_not_distilled_again(tmp_path, monkeypatch, static_encoder):
    """A cached distillation is loaded from its folder; distill is never called when it exists."""
    src = static_model_dir(None)
    root = tmp_path / "cache"
    shutil.copytree(src, static_model_dir(None, root=root))
    import model2vec.distill

    def no_distill(*a, **k):
        raise AssertionError("distilled again although the cache holds the model")

    monkeypatch.setattr(model2vec.distill, "distill", no_distill)
    monkeypatch.setattr(sentence, "_STATIC", {})
    m = load_static_model(None, root=root)
    x = np.asarray(m.encode(["the cat sat on the mat"]), np.float32)
    y = static_encoder.encode(["the cat sat on the mat"])
    np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-3)
    # a different PCA size is a different cache entry (would distill: here, the sentinel fires)
    with pytest.raises(AssertionError, match="distilled again"):
        load_static_model(None, root=root, pca_dims=64)


def test_embedding_cache_keys_differ_by_backend(tmp_path, static_encoder):
    """Static vectors never collide with the transformer's in the on-disk embedding cache."""
    assert EmbedSpec(backend="model2vec").key() != EmbedSpec().key()
    emb = Embedder(EmbedSpec(backend="model2vec"), "cpu", tmp_path)
    batch = pl.DataFrame({"id": ["1", "2"], "text": ["a short text", "another one"]})
    x = emb.embed(batch)
    assert x.shape == (2, 256)
    again = Embedder(EmbedSpec(backend="model2vec"), "cpu", tmp_path)
    np.testing.assert_array_equal(again.embed(batch), x)
    assert again.encoded == 0  # all from the cache
